"""A tiny real LM corpus and a tiny GPT run, shared by the training/lm_data/gpt tests.

Also a script: `python tests/pipelines/tiny_lm.py RUN.json` trains the tiny GPT described in
RUN.json and prints the TrainResult as JSON. The kill/SIGTERM tests run it as a subprocess.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # when run as a script
    sys.path.insert(0, str(ROOT))

SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("sent_idx", pa.int32()),
        ("split", pa.string()),
        ("ids", pa.list_(pa.int32())),
    ]
)


def lee_documents(limit: int | None = None) -> list[str]:
    from gensim.test.utils import datapath

    lines = Path(datapath("lee_background.cor")).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip()][:limit]


def build_corpus(root: Path, vocab_size: int = 400, docs: int | None = None) -> dict:
    """Train a byte-level BPE on lee_background and write token shards (2 part files).

    Every 10th document is `valid`. Returns paths and the ids the GPT needs.
    """
    from pipelines.data.tokenizer_training import (
        load_raw_tokenizer,
        save_tokenizer,
        train_tokenizer,
    )
    from pretrainlab.config import BPESpec

    documents = lee_documents(docs)
    tokenizer = train_tokenizer(BPESpec(vocab_size=vocab_size, min_frequency=2), documents)
    tok_dir = root / "tokenizer"
    save_tokenizer(tokenizer, tok_dir)
    tok, _ = load_raw_tokenizer(tok_dir)
    rows: list[dict] = []
    for d, text in enumerate(documents):
        doc_id = hashlib.sha256(text.encode()).hexdigest()[:16]
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", text) if s]
        encoded = tok.encode_batch(sentences, add_special_tokens=False)
        split = "valid" if d % 10 == 9 else "train"
        for i, enc in enumerate(encoded):
            rows.append({"doc_id": doc_id, "sent_idx": i, "split": split, "ids": enc.ids})
    tokens_dir = root / "tokens"
    tokens_dir.mkdir(parents=True)
    half = len(rows) // 2
    while rows[half]["doc_id"] == rows[half - 1]["doc_id"]:
        half += 1  # a document never straddles two files here (lm_data copes if it does)
    for part, chunk in enumerate((rows[:half], rows[half:])):
        pq.write_table(pa.Table.from_pylist(chunk, SCHEMA), tokens_dir / f"part-{part:05d}.parquet")
    return {
        "tokens_dir": str(tokens_dir),
        "tokenizer_dir": str(tok_dir),
        "vocab_size": tok.get_vocab_size(),
        "eos_id": tok.token_to_id("<|endoftext|>"),
        "pad_id": tok.token_to_id("<|pad|>"),
        "rows": rows,
    }


def tiny_gpt_spec(loop: dict | None = None, **model: object):
    from pretrainlab.config import GPTSpec, LoopSpec

    loop_args = {
        "max_steps": 20,
        "batch_size": 8,
        "lr": 3e-3,
        "warmup_steps": 2,
        "log_every": 5,
        "eval_every": 10,
        "eval_batches": 2,
        "checkpoint_every": 5,
        "device": "cpu",
        **(loop or {}),
    }
    model_args = {
        "n_layer": 1,
        "n_head": 2,
        "n_embd": 32,
        "block_size": 16,
        "dropout": 0.1,
        **model,
    }
    return GPTSpec(**model_args, loop=LoopSpec(**loop_args))


def build_model_and_objective(corpus: dict, spec, cache_dir: Path):
    from pipelines.models.gpt import GPTObjective, build_gpt
    from pipelines.training.loop import seed_everything

    seed_everything(spec.loop.seed)
    model = build_gpt(spec, corpus["vocab_size"], corpus["pad_id"], corpus["eos_id"])
    objective = GPTObjective(
        corpus["tokens_dir"],
        spec.block_size,
        spec.loop.seed,
        corpus["eos_id"],
        spec.loop.batch_size,
        cache_dir,
        vocab_size=corpus["vocab_size"],
    )
    return model, objective


def main(run_file: str) -> None:
    """Train per RUN.json: {corpus, loop, model, checkpoint_dir, cache_dir, sleep_per_log}."""
    import torch

    from pipelines.training.loop import train

    run = json.loads(Path(run_file).read_text())
    torch.set_num_threads(1)
    spec = tiny_gpt_spec(run["loop"], **run.get("model", {}))
    model, objective = build_model_and_objective(run["corpus"], spec, Path(run["cache_dir"]))
    delay = float(run.get("sleep_per_log", 0.0))

    def log(metrics: dict[str, float], step: int) -> None:
        print(json.dumps({"step": step, **metrics}), flush=True)
        time.sleep(delay)  # slows the run so a test can kill it mid-way

    result = train(model, objective, spec.loop, Path(run["checkpoint_dir"]), log)
    print("RESULT " + json.dumps(dataclasses.asdict(result)), flush=True)
    if run.get("weights_out"):
        from safetensors.torch import save_file

        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"},
            run["weights_out"],
        )


def ddp_worker(rank: int, world: int, port: int, run: dict) -> None:
    """One rank of a gloo DDP run (torch.multiprocessing.spawn target): train, rank 0 saves."""
    import torch
    import torch.distributed as dist

    from pipelines.training.loop import init_distributed, train

    os.environ.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    torch.set_num_threads(1)
    init_distributed()
    try:
        spec = tiny_gpt_spec(run["loop"], **run.get("model", {}))
        model, objective = build_model_and_objective(run["corpus"], spec, Path(run["cache_dir"]))
        train(model, objective, spec.loop, Path(run["checkpoint_dir"]), lambda m, s: None)
        if rank == 0:
            torch.save(model.state_dict(), run["weights_out"])
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
