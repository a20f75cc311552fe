"""Transfer throughput: frozen feature extraction and fine-tuning, pretrainlab vs a bare torch loop.

Run:  .venv/bin/python -m benchmarks.transfer [--families gpt bert] [--preset tiny|cpu]
      [--repeats 5]

A GPT and a BERT are pretrained for a few steps
(`pipelines.training.pretraining.pretrain`, real text
through the real tokenizer and encoding stages) and saved as model directories. A sentence
classification task is made from real sentences. Then, per family, in one run:
- frozen features: `pipelines.transfer.features.frozen_features` (no cache) vs a bare loop
  that loads
  the same model directory, tokenizes with the same specials and max_len, runs batches of 32
  under no_grad with every hidden state and reads each layer at the family's token ([CLS] for
  BERT, the last token for GPT). Timed end to end (load, tokenize, forward); the two must give
  the same features. Examples/s over train+dev+test.
- fine-tuning: `pipelines.transfer.runs.run_transfer` in `finetune` mode vs a bare loop (the same
  pre-tokenized inputs, a linear head on the top layer's token, AdamW with the encoder at a
  tenth of the head's rate, shuffled batches, a dev pass per epoch). Both stamp the end of
  every epoch (pretrainlab through `on_eval`, set to evaluate once a pass); a run's
  examples/s = (train + dev examples) / its median epoch after the first.
Contenders run interleaved, bare, pretrainlab, bare, ... `--repeats` times; the ratio is the
median of the per-pair ratios pretrainlab / bare with their min-max, and the notes add the
ratio by CPU time (examples per CPU-second), steadier on a shared machine (goal >= 0.9).
Transfer runs on the CPU in pipelines/transfer/runs.py, so both contenders run there.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import (
    Repeats,
    Row,
    interleaved,
    peak_rss_mb,
    print_rows,
    reset_peak_rss,
    write_rows,
)
from benchmarks.pretrain import prepare_tokens
from benchmarks.tokenization import real_documents
from pipelines.data.sentences import split_sentences
from pipelines.data.task_data import Example, TaskData
from pipelines.models.saved import load_pretrained
from pipelines.training.pretraining import PretrainJob, pretrain
from pipelines.transfer.features import frozen_features
from pipelines.transfer.runs import Evaluation, TransferConfig, run_transfer
from pretrainlab.config import Spec, spec_from_dict

GOAL = 0.9
FEATURE_BATCH = 32  # frozen_features' batch size
TOKENIZER_KIND = {"gpt": "bpe", "bert": "wordpiece"}
PRESETS: dict[str, dict] = {  # model sizes, task sizes; cpu = the spec's default model sizes
    "tiny": {
        "gpt": {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32},
        "bert": {"n_layer": 1, "n_head": 2, "hidden_size": 32, "intermediate_size": 64},
        "examples": (96, 32, 32),
        "max_len": 32,
        "epochs": 3,
        "mb": 0.5,
    },
    "cpu": {
        "gpt": {},
        "bert": {},
        "examples": (256, 64, 64),
        "max_len": 64,
        "epochs": 4,
        "mb": 1.0,
    },
}


# ----------------------------------------------------------------------------- set-up


def pretrain_spec(workdir: Path, preset: str) -> Spec:
    """Models of the preset's size, pretrained a few steps: speed does not need good weights."""
    loop = {"max_steps": 3, "batch_size": 8, "warmup_steps": 1, "eval_every": 3}
    loop |= {"eval_batches": 1, "checkpoint_every": 3, "log_every": 1, "device": "cpu"}
    sizes = PRESETS[preset]
    return spec_from_dict(
        {
            "experiment": "bench-transfer",
            "store": str(workdir / "store"),
            "corpus": {"sources": [{"dataset": "lee-news"}]},
            "pretrain": {
                "gpt": {**sizes["gpt"], "loop": loop},
                "bert": {**sizes["bert"], "max_seq_len": sizes["max_len"], "loop": loop},
            },
        }
    )


def build_model(family: str, workdir: Path, preset: str) -> Path:
    """A saved, (briefly) pretrained model directory of `family`."""
    tokens_dir, tokenizer_dir = prepare_tokens(
        TOKENIZER_KIND[family], workdir, PRESETS[preset]["mb"]
    )
    base = workdir / f"model-{family}"
    job = PretrainJob(family, tokens_dir, tokenizer_dir, base / "work", base / "model")
    pretrain(pretrain_spec(workdir, preset), job, lambda metrics, step: None)
    return job.out_dir


def make_task(sizes: tuple[int, int, int]) -> TaskData:
    """Sentence classification on real sentences: does the sentence contain ' the '?"""
    wanted = sum(sizes)
    sentences: list[str] = []
    for doc in real_documents():
        sentences += [s for s in split_sentences(doc) if 5 <= len(s.split()) <= 60]
        if len(sentences) >= wanted:
            break
    examples = [Example(text_a=s, label=str(int(" the " in s))) for s in sentences[:wanted]]
    n_train, n_dev, _ = sizes
    return TaskData(
        name="bench-the",
        kind="classify",
        train=tuple(examples[:n_train]),
        dev=tuple(examples[n_train : n_train + n_dev]),
        test=tuple(examples[n_train + n_dev :]),
        labels=("0", "1"),
        fingerprint=hashlib.sha256(repr(examples).encode()).hexdigest()[:16],
    )


# ----------------------------------------------------------------------------- the bare loop


@dataclass
class Bare:
    """The obvious script: the model and tokenizer from the directory, a hand-rolled batch."""

    family: str
    model: torch.nn.Module
    tokenizer: object
    max_len: int

    @classmethod
    def load(cls, family: str, model_dir: Path, max_len: int) -> Bare:
        model, tokenizer = load_pretrained(family, model_dir)
        config = model.config
        limit = config.n_positions if family == "gpt" else config.max_position_embeddings
        return cls(family, model, tokenizer, min(max_len, limit))

    def encode(self, texts: list[str]) -> list[list[int]]:
        """[CLS] text [SEP] (BERT) / <|endoftext|> text <|endoftext|> (GPT), cut to max_len."""
        tok = self.tokenizer
        first, last = (
            (tok.cls_token_id, tok.sep_token_id)
            if self.family == "bert"
            else (tok.eos_token_id, tok.eos_token_id)
        )
        ids = tok(texts, add_special_tokens=False)["input_ids"]
        return [[first, *seq[: self.max_len - 2], last] for seq in ids]

    def batch(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Padded ids, attention mask, and the position each sequence is read at."""
        pad = self.tokenizer.pad_token_id or 0
        length = max(map(len, seqs))
        ids = torch.tensor([s + [pad] * (length - len(s)) for s in seqs])
        mask = torch.tensor([[1] * len(s) + [0] * (length - len(s)) for s in seqs])
        read = (
            torch.zeros(len(seqs), dtype=torch.long)
            if self.family == "bert"
            else torch.tensor([len(s) - 1 for s in seqs])
        )
        return ids, mask, read

    def hidden(
        self, ids: torch.Tensor, mask: torch.Tensor, all_layers: bool
    ) -> tuple[torch.Tensor, ...]:
        body = self.model.transformer if self.family == "gpt" else self.model.bert
        out = body(input_ids=ids, attention_mask=mask, output_hidden_states=all_layers)
        return out.hidden_states if all_layers else (out.last_hidden_state,)


def bare_features(family: str, model_dir: Path, task: TaskData, max_len: int) -> np.ndarray:
    """(examples, layers, dim): every layer read at the family's token, like frozen features."""
    bare = Bare.load(family, model_dir, max_len)
    bare.model.eval()
    chunks = []
    with torch.no_grad():
        for split in (task.train, task.dev, task.test):
            seqs = bare.encode([ex.text_a for ex in split])
            for start in range(0, len(seqs), FEATURE_BATCH):
                ids, mask, read = bare.batch(seqs[start : start + FEATURE_BATCH])
                states = bare.hidden(ids, mask, all_layers=True)
                rows = torch.arange(len(read))
                chunks.append(torch.stack([h[rows, read] for h in states], dim=1).numpy())
    return np.concatenate(chunks)


def bare_finetune(
    family: str, model_dir: Path, task: TaskData, config: TransferConfig, stamp: Callable[[], None]
) -> None:
    """Fine-tune encoder + linear head; `stamp()` after every epoch's dev pass."""
    torch.manual_seed(config.seed)
    bare = Bare.load(family, model_dir, config.max_len)
    index = {label: i for i, label in enumerate(task.labels)}
    data = {
        name: (bare.encode([ex.text_a for ex in split]), [index[ex.label] for ex in split])
        for name, split in (("train", task.train), ("dev", task.dev))
    }
    dim = bare.model.config.hidden_size
    head = torch.nn.Linear(dim, len(task.labels))
    optimizer = torch.optim.AdamW(
        [
            {"params": head.parameters(), "lr": config.lr},
            {"params": bare.model.parameters(), "lr": config.lr * 0.1},
        ]
    )
    generator = torch.Generator().manual_seed(config.seed)
    seqs, labels = data["train"]

    def logits(batch: list[list[int]]) -> torch.Tensor:
        ids, mask, read = bare.batch(batch)
        (top,) = bare.hidden(ids, mask, all_layers=False)
        return head(top[torch.arange(len(read)), read])

    for _ in range(config.passes):
        bare.model.train()
        head.train()
        order = torch.randperm(len(seqs), generator=generator).tolist()
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            loss = F.cross_entropy(
                logits([seqs[i] for i in batch]), torch.tensor([labels[i] for i in batch])
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        bare.model.eval()
        head.eval()
        dev_seqs, dev_labels = data["dev"]
        correct = 0
        with torch.no_grad():
            for start in range(0, len(dev_seqs), config.batch_size):
                pred = logits(dev_seqs[start : start + config.batch_size]).argmax(-1)
                correct += int((pred == torch.tensor(dev_labels[start : start + len(pred)])).sum())
        stamp()


# ----------------------------------------------------------------------------- measuring


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


@dataclass
class Contenders:
    """Per-run examples/s (wall and CPU time) and peak RSS of bare and ours, run interleaved."""

    cpu: dict[str, list[float]] = field(default_factory=lambda: {"bare": [], "ours": []})
    rss: dict[str, float] = field(default_factory=lambda: {"bare": 0.0, "ours": 0.0})

    def run(self, repeats: int, measure: Callable[[str], tuple[float, float]]) -> Repeats:
        """bare, ours, bare, ours, ... `repeats` times; `measure(name)` -> (wall, cpu) rates."""

        def contender(name: str) -> Callable[[], float]:
            def run() -> float:
                reset_peak_rss()
                wall, cpu = measure(name)
                self.rss[name] = max(self.rss[name], peak_rss_mb())
                self.cpu[name].append(cpu)
                return wall

            return run

        return interleaved(contender("bare"), contender("ours"), repeats)

    def row(self, got: Repeats, name: str, what: str, after: str = "") -> Row:
        """A table row of examples/s: medians, the median ratio and its spread."""
        cpu = Repeats(self.cpu["bare"], self.cpu["ours"]).median_ratio
        note = f"{what}; by CPU time {cpu:.2f}{after}"
        row = Row(name, "examples/s", None, None, ">=", GOAL, self.rss["bare"], self.rss["ours"])
        row.note = note
        return got.fill(row)


def feature_rows(family: str, model_dir: Path, task: TaskData, max_len: int, repeats: int) -> Row:
    n = len(task.train) + len(task.dev) + len(task.test)
    outputs: dict[str, np.ndarray] = {}

    def ours() -> np.ndarray:
        arrays = frozen_features(family, model_dir, task, max_len)
        return np.concatenate([arrays[s][:, 0] for s in ("train", "dev", "test")])

    runs = {"bare": lambda: bare_features(family, model_dir, task, max_len), "ours": ours}

    def measure(name: str) -> tuple[float, float]:
        wall, cpu = _clocks()
        outputs[name] = runs[name]()
        wall_end, cpu_end = _clocks()
        return n / (wall_end - wall), n / max(cpu_end - cpu, 1e-9)

    contenders = Contenders()
    got = contenders.run(repeats, measure)
    diff = float(np.abs(outputs["bare"] - outputs["ours"]).max())
    if outputs["bare"].shape != outputs["ours"].shape or diff > 1e-3:
        raise SystemExit(
            f"{family}: bare and pretrainlab features differ (shapes {outputs['bare'].shape} vs "
            f"{outputs['ours'].shape}, max abs difference {diff:.2g})"
        )
    return contenders.row(
        got,
        f"transfer {family}: frozen features",
        f"{n} examples, max_len {max_len}, load+tokenize+forward",
        f"; the same features (max abs difference {diff:.0e})",
    )


def finetune_row(
    family: str, model_dir: Path, task: TaskData, config: TransferConfig, repeats: int
) -> Row:
    per_epoch = len(task.train) + len(task.dev)

    def measure(name: str) -> tuple[float, float]:
        """The run's median epoch after the first (which carries loading and tokenizing)."""
        stamps: list[tuple[float, float]] = []
        if name == "bare":
            bare_finetune(family, model_dir, task, config, lambda: stamps.append(_clocks()))
        else:

            def on_eval(metrics: Evaluation) -> None:
                stamps.append(_clocks())

            run_transfer(family, model_dir, task, task.train, config, on_eval=on_eval)
        pairs = list(itertools.pairwise(stamps))
        wall = statistics.median(per_epoch / (w1 - w0) for (w0, _), (w1, _) in pairs)
        cpu = statistics.median(per_epoch / max(c1 - c0, 1e-9) for (_, c0), (_, c1) in pairs)
        return wall, cpu

    contenders = Contenders()
    return contenders.row(
        contenders.run(repeats, measure),
        f"transfer {family}: fine-tuning",
        f"{len(task.train)} train + {len(task.dev)} dev per epoch, batch {config.batch_size}, "
        f"a run's median epoch after the first",
    )


def rows(families: list[str], preset: str, repeats: int, workdir: Path) -> list[Row]:
    sizes = PRESETS[preset]
    task = make_task(sizes["examples"])
    steps = sizes["epochs"] * -(-sizes["examples"][0] // 16)  # one dev evaluation a pass
    config = TransferConfig(
        mode="finetune",
        lr=1e-3,
        batch_size=16,
        max_len=sizes["max_len"],
        seed=0,
        passes=sizes["epochs"],
        min_steps=steps,
        max_steps=steps,
        evals=sizes["epochs"],
        patience=sizes["epochs"],
        warmup=0.1,
        encoder_lr_scale=0.1,
    )
    out = []
    for family in families:
        started = time.perf_counter()
        model_dir = build_model(family, workdir, preset)
        seconds = time.perf_counter() - started
        print(f"  {family}: model pretrained in {seconds:.0f} s", flush=True)
        out.append(feature_rows(family, model_dir, task, config.max_len, repeats))
        print_rows(out[-1:])
        out.append(finetune_row(family, model_dir, task, config, repeats))
        print_rows(out[-1:])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--families", nargs="+", choices=sorted(TOKENIZER_KIND), default=["gpt", "bert"]
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument(
        "--repeats", type=int, default=5, help="interleaved pairs; the median ratio is kept"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"transfer benchmark: preset {args.preset}, {torch.get_num_threads()} torch threads")
    with tempfile.TemporaryDirectory(prefix="bench-transfer-") as tmp:
        result = rows(args.families, args.preset, args.repeats, Path(tmp))
    if args.json:
        write_rows(result, args.json)


if __name__ == "__main__":
    main()
