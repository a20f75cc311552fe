"""ELMo: shapes, direction isolation, shared/separate parameters, softmax, save/load, training
with the real loop on a little real text (gensim's Lee news corpus), and a 2-process DDP run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from gensim.test.utils import datapath

from pipelines.data.encoding import TOKENS_SCHEMA
from pipelines.data.lm_data import LMDataError
from pipelines.data.sentences import split_sentences
from pipelines.data.tokenizer_training import save_tokenizer, train_tokenizer
from pipelines.models.elmo import (
    ELMo,
    ELMoConfig,
    ELMoError,
    config_from_spec,
    elmo_layer_states,
    load_elmo,
    save_elmo,
)
from pipelines.models.elmo_data import ELMoObjective
from pipelines.training.loop import checkpoint_path, load_checkpoint, train
from pretrainlab.config import ELMoSpec, LoopSpec, WordLevelSpec

REPO = Path(__file__).resolve().parents[2]
PAD, UNK, BOS, EOS = 0, 1, 2, 3  # the word-level tokenizer's reserved ids


@pytest.fixture(autouse=True)
def _seed_and_one_thread() -> Iterator[None]:
    """Seeded, and one thread: on a shared 2-core machine two threads spin-wait each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def tiny_config(vocab_size: int = 50, **overrides: object) -> ELMoConfig:
    fields = {
        "embedding_dim": 8,
        "hidden_dim": 16,
        "dropout": 0.0,
        "cutoffs": (10, 30),
        "div_value": 2.0,
    }
    fields.update(overrides)
    return ELMoConfig(vocab_size=vocab_size, **fields)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Word-level token shards of the Lee corpus: every 10th document is `valid`."""
    root = tmp_path_factory.mktemp("elmo_corpus")
    text = Path(datapath("lee_background.cor")).read_text(encoding="utf-8")
    docs = [line.strip() for line in text.splitlines() if line.strip()]
    tok = train_tokenizer(WordLevelSpec(vocab_size=3000, min_count=2), docs)
    rows: dict[str, list] = {"doc_id": [], "sent_idx": [], "split": [], "ids": []}
    for d, doc in enumerate(docs):
        for s, sentence in enumerate(split_sentences(doc)):
            rows["doc_id"].append(f"doc{d:04d}")
            rows["sent_idx"].append(s)
            rows["split"].append("valid" if d % 10 == 0 else "train")
            rows["ids"].append(tok.encode(sentence).ids)
    schema = TOKENS_SCHEMA  # the shard schema the encoding stage writes
    tokens = root / "tokens"
    tokens.mkdir()
    table = pa.table(rows, schema=schema)
    half = table.num_rows // 2
    pq.write_table(table.slice(0, half), tokens / "part-00000.parquet")
    pq.write_table(table.slice(half), tokens / "part-00001.parquet")
    save_tokenizer(tok, root / "tokenizer")
    return {"tokens": tokens, "vocab_size": tok.get_vocab_size(), "rows": rows, "root": root}


# ----------------------------------------------------------------------------- shapes


def test_three_layers_of_twice_the_embedding_width() -> None:
    model = ELMo(tiny_config()).eval()
    ids = torch.randint(4, 50, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 5:] = False
    ids[1, 5:] = PAD
    with torch.no_grad():
        layers = elmo_layer_states(model, ids, mask)
    assert len(layers) == 3
    assert all(layer.shape == (3, 7, 16) for layer in layers)
    emb = model.embed(ids)
    torch.testing.assert_close(layers[0][0], torch.cat([emb[0], emb[0]], dim=-1))
    assert all(float(layer[1, 5:].abs().sum()) == 0.0 for layer in layers)  # padding zeroed
    _, fwd, bwd = model.directional_states(ids, mask)
    torch.testing.assert_close(layers[2][..., :8], fwd[1] * mask.unsqueeze(-1))
    torch.testing.assert_close(layers[1][..., 8:], bwd[0] * mask.unsqueeze(-1))


def test_bad_shapes_and_left_padding_are_refused() -> None:
    model = ELMo(tiny_config())
    with pytest.raises(ELMoError, match="right-padded"):
        model(torch.randint(4, 50, (1, 5)), torch.tensor([[0, 0, 1, 1, 1]]))
    with pytest.raises(ELMoError, match="batch, time"):
        model.layer_states(torch.randint(4, 50, (5,)))
    with pytest.raises(ELMoError, match="hidden_dim"):
        tiny_config(hidden_dim=8)
    with pytest.raises(ELMoError, match="0-wide"):
        tiny_config(div_value=4.0)


# ----------------------------------------------------------------------------- isolation


def test_forward_lm_never_sees_later_tokens_and_backward_never_earlier() -> None:
    model = ELMo(tiny_config()).eval()
    ids = torch.randint(4, 50, (2, 10))
    changed = ids.clone()
    t = 6
    changed[:, t] = (changed[:, t] - 4 + 1) % 46 + 4  # a different real token at position t
    with torch.no_grad():
        _, fwd_a, bwd_a = model.directional_states(ids)
        _, fwd_b, bwd_b = model.directional_states(changed)
    for layer in range(2):
        torch.testing.assert_close(fwd_a[layer][:, :t], fwd_b[layer][:, :t], rtol=0, atol=0)
        torch.testing.assert_close(
            bwd_a[layer][:, t + 1 :], bwd_b[layer][:, t + 1 :], rtol=0, atol=0
        )
        assert not torch.allclose(fwd_a[layer][:, t:], fwd_b[layer][:, t:])  # it does see t..
        assert not torch.allclose(bwd_a[layer][:, : t + 1], bwd_b[layer][:, : t + 1])


def test_backward_lm_starts_at_the_last_real_token_not_at_padding() -> None:
    model = ELMo(tiny_config()).eval()
    ids = torch.randint(4, 50, (1, 9))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    other_padding = ids.clone()
    other_padding[0, 6:] = torch.tensor([7, 8, 9])
    with torch.no_grad():
        a = elmo_layer_states(model, ids, mask)
        b = elmo_layer_states(model, other_padding, mask)
        alone = elmo_layer_states(model, ids[:, :6])  # the same sentence without padding
    for la, lb, lalone in zip(a, b, alone, strict=True):
        torch.testing.assert_close(la, lb, rtol=0, atol=0)
        torch.testing.assert_close(la[:, :6], lalone, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- parameters


def test_directions_have_separate_lstms_but_share_embedding_and_softmax() -> None:
    model = ELMo(tiny_config())
    fwd_ids = {id(p) for p in model.fwd.parameters()}
    bwd_ids = {id(p) for p in model.bwd.parameters()}
    assert fwd_ids and bwd_ids and not fwd_ids & bwd_ids
    outside = {name.split(".")[0] for name, _ in model.named_parameters()} - {"fwd", "bwd"}
    assert outside == {"embed", "softmax"}  # the only parameters both directions use
    assert [k for k in model.state_dict() if "embed" in k] == ["embed.weight"]

    ids = torch.randint(4, 50, (2, 8))
    for loss_name, used, unused in (
        ("fwd_nll", model.fwd, model.bwd),
        ("bwd_nll", model.bwd, model.fwd),
    ):
        model.zero_grad(set_to_none=True)
        model(ids)[loss_name].backward()
        assert all(p.grad is None for p in unused.parameters()), loss_name
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in used.parameters())
        assert model.embed.weight.grad.abs().sum() > 0
        assert model.softmax.head.weight.grad.abs().sum() > 0


def test_lstm_layers_project_to_the_embedding_size_with_a_residual() -> None:
    model = ELMo(tiny_config())
    lstm = model.fwd.layers[0]
    assert (lstm.hidden_size, lstm.proj_size) == (16, 8)
    x = torch.randn(2, 5, 8)
    outputs = model.fwd(x)
    first, _ = model.fwd.layers[0](x)
    second, _ = model.fwd.layers[1](first)
    torch.testing.assert_close(outputs[1], second + first)


# ----------------------------------------------------------------------------- softmax


@pytest.mark.parametrize("softmax", ["adaptive", "full"])
def test_softmax_is_normalised_and_the_loss_is_its_nll(softmax: str) -> None:
    model = ELMo(tiny_config(softmax=softmax)).eval()
    ids = torch.randint(4, 50, (2, 6))
    with torch.no_grad():
        out = model(ids)
        _, fwd, bwd = model.directional_states(ids)
        log_p = model.log_probs(fwd[-1][:, :-1].reshape(-1, 8))  # (N, V)
        torch.testing.assert_close(log_p.exp().sum(-1), torch.ones(len(log_p)))
        nll = -log_p.gather(1, ids[:, 1:].reshape(-1, 1)).mean()
        torch.testing.assert_close(out["fwd_nll"], nll, rtol=1e-5, atol=1e-5)
        log_p = model.log_probs(bwd[-1][:, 1:].reshape(-1, 8))
        nll = -log_p.gather(1, ids[:, :-1].reshape(-1, 1)).mean()
        torch.testing.assert_close(out["bwd_nll"], nll, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out["loss"], (out["fwd_nll"] + out["bwd_nll"]) / 2)


@pytest.mark.parametrize("softmax", ["adaptive", "full"])
def test_loss_stays_float32_under_bf16_autocast(softmax: str) -> None:
    model = ELMo(tiny_config(softmax=softmax))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randint(4, 50, (2, 6)))
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert model.embed.weight.grad is not None


def test_padding_positions_are_not_predicted() -> None:
    model = ELMo(tiny_config()).eval()
    ids = torch.randint(4, 50, (1, 8))
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        padded, alone = model(ids, mask), model(ids[:, :5])
    torch.testing.assert_close(padded["loss"], alone["loss"], rtol=1e-6, atol=1e-6)


def test_spec_cutoffs_are_clipped_to_the_vocabulary() -> None:
    spec = ELMoSpec(embedding_dim=8, hidden_dim=16, adaptive_cutoffs=[20, 2000])
    config = config_from_spec(spec, vocab_size=100, pad_id=PAD)
    assert (config.softmax, config.cutoffs) == ("adaptive", (20,))
    assert config_from_spec(spec, vocab_size=15, pad_id=PAD).softmax == "full"
    tiny = config_from_spec(ELMoSpec(embedding_dim=4, hidden_dim=8), 20_000, PAD)
    assert tiny.embedding_dim // tiny.div_value ** len(tiny.cutoffs) >= 1  # no 0-wide cluster
    ELMo(tiny)  # builds


# ----------------------------------------------------------------------------- save / load


def test_save_load_round_trip_gives_equal_outputs(tmp_path: Path) -> None:
    model = ELMo(tiny_config(special_ids={"bos": BOS, "eos": EOS})).eval()
    save_elmo(model, tmp_path / "m")
    loaded = load_elmo(tmp_path / "m").eval()
    assert loaded.config == model.config
    ids = torch.randint(4, 50, (2, 7))
    with torch.no_grad():
        for a, b in zip(elmo_layer_states(model, ids), elmo_layer_states(loaded, ids), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(model(ids)["loss"], loaded(ids)["loss"], rtol=0, atol=0)
    assert (
        json.loads((tmp_path / "m" / "elmo_config.json").read_text())["format"]
        == "pretrainlab-elmo"
    )


def test_corrupt_or_foreign_directories_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ELMoError, match="not an ELMo model directory"):
        load_elmo(tmp_path)
    save_elmo(ELMo(tiny_config()), tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ELMoError, match="corrupt"):
        load_elmo(tmp_path / "m")
    save_elmo(ELMo(tiny_config(vocab_size=60)), tmp_path / "n")
    config = json.loads((tmp_path / "n" / "elmo_config.json").read_text())
    config["vocab_size"] = 50
    (tmp_path / "n" / "elmo_config.json").write_text(json.dumps(config))
    with pytest.raises(ELMoError, match="do not fit"):
        load_elmo(tmp_path / "n")


# ----------------------------------------------------------------------------- data + training


def tiny_spec(**loop: object) -> ELMoSpec:
    fields = {
        "max_steps": 40,
        "batch_size": 8,
        "lr": 3e-3,
        "warmup_steps": 4,
        "log_every": 5,
        "eval_every": 20,
        "eval_batches": 2,
        "checkpoint_every": 20,
        "device": "cpu",
    }
    fields.update(loop)
    return ELMoSpec(
        embedding_dim=32,
        hidden_dim=64,
        seq_len=16,
        dropout=0.0,
        adaptive_cutoffs=[200, 1000],
        loop=LoopSpec(**fields),
    )


def make_objective(corpus: dict, spec: ELMoSpec, cache: Path) -> ELMoObjective:
    return ELMoObjective(
        corpus["tokens"], spec, pad_id=PAD, bos_id=BOS, eos_id=EOS, seed=0, cache_dir=cache
    )


def test_stream_wraps_every_sentence_and_batches_split_across_ranks(
    corpus: dict, tmp_path: Path
) -> None:
    spec = tiny_spec()
    objective = make_objective(corpus, spec, tmp_path)
    rows = corpus["rows"]
    train_ids = [
        ids for ids, split in zip(rows["ids"], rows["split"], strict=True) if split == "train"
    ]
    expected = np.concatenate([[BOS, *ids, EOS] for ids in train_ids])
    np.testing.assert_array_equal(objective.blocks.stream, expected)
    single = objective.train_batch(3, 0, 1, 0, 1)["ids"]
    assert single.shape == (8, 16) and single.dtype == torch.int64
    halves = [objective.train_batch(3, 0, 1, rank, 2)["ids"] for rank in range(2)]
    torch.testing.assert_close(torch.cat(halves), single)
    assert not torch.equal(objective.train_batch(4, 0, 1, 0, 1)["ids"], single)
    valid = list(objective.valid_batches(2))
    assert len(valid) == 2 and torch.equal(
        valid[0]["ids"], next(iter(objective.valid_batches(2)))["ids"]
    )
    # the adaptive softmax wants frequent words at low ids: the tokenizer sorts by frequency
    # (the tokenizer was trained on every document, so count them all)
    all_ids = np.concatenate([np.asarray(ids, dtype=np.int64) for ids in rows["ids"]])
    counts = np.bincount(all_ids, minlength=corpus["vocab_size"])[4:]
    assert (np.diff(counts) <= 0).all()
    assert 0 < objective.unigram_entropy() < np.log(corpus["vocab_size"])


def test_model_smaller_than_the_tokenizer_is_refused(corpus: dict, tmp_path: Path) -> None:
    objective = make_objective(corpus, tiny_spec(), tmp_path)
    model = ELMo(tiny_config(vocab_size=100))
    with pytest.raises(LMDataError, match="vocab_size 100"):
        objective.loss(model, objective.train_batch(1, 0, 1, 0, 1))


def test_loss_decreases_on_real_text_with_the_shared_loop(corpus: dict, tmp_path: Path) -> None:
    spec = tiny_spec()
    objective = make_objective(corpus, spec, tmp_path / "cache")
    model = ELMo(config_from_spec(spec, corpus["vocab_size"], PAD, {"bos": BOS, "eos": EOS}))
    logged: list[tuple[int, dict[str, float]]] = []
    before = float(
        np.mean([float(objective.loss(model.eval(), b)[0]) for b in objective.valid_batches(2)])
    )
    result = train(
        model, objective, spec.loop, tmp_path / "ckpt", lambda m, s: logged.append((s, m))
    )
    assert result.step == 40 and result.tokens_seen == 40 * 8 * 16
    train_losses = [m["loss"] for _, m in logged if "loss" in m]
    assert train_losses[-1] < train_losses[0] - 0.5
    assert result.last_valid_loss < before - 0.5
    last_valid = [m for _, m in logged if "valid_loss" in m][-1]
    for key in ("valid_fwd_loss", "valid_bwd_loss", "valid_fwd_ppl", "valid_bwd_ppl"):
        assert np.isfinite(last_valid[key])
    assert result.flops == pytest.approx(model.flops_per_token() * result.tokens_seen)


@pytest.mark.slow
def test_two_process_ddp_run_finishes_and_checkpoints(corpus: dict, tmp_path: Path) -> None:
    script = tmp_path / "ddp_elmo.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import json, sys
            import torch, torch.distributed as dist
            from pipelines.models.elmo import ELMo, config_from_spec
            from pipelines.models.elmo_data import ELMoObjective
            from pipelines.training.loop import checkpoint_path, load_checkpoint, train
            from pretrainlab.config import ELMoSpec, LoopSpec

            dist.init_process_group("gloo")
            torch.set_num_threads(1)
            torch.manual_seed(0)
            loop = LoopSpec(max_steps=4, batch_size=4, grad_accum=1, lr=1e-3, warmup_steps=1,
                            log_every=2, eval_every=4, eval_batches=1, checkpoint_every=2,
                            device="cpu")
            spec = ELMoSpec(embedding_dim=16, hidden_dim=32, seq_len=12, dropout=0.1,
                            adaptive_cutoffs=[200], loop=loop)
            objective = ELMoObjective({str(corpus["tokens"])!r}, spec, pad_id=0, bos_id=2,
                                      eos_id=3, seed=0, cache_dir=sys.argv[1] + "/cache")
            model = ELMo(config_from_spec(spec, {corpus["vocab_size"]}, 0))
            logged = []
            result = train(model, objective, loop, sys.argv[1] + "/ckpt",
                           lambda m, s: logged.append(s))
            with open(sys.argv[1] + f"/rank{{dist.get_rank()}}.json", "w") as f:
                json.dump({{"step": result.step, "tokens": result.tokens_seen, "logs": logged}}, f)
            dist.barrier()  # no rank tears gloo down while the other still talks to it
            dist.destroy_process_group()
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    # the cache is built once up front: two ranks racing to build it is not what is tested
    make_objective(corpus, tiny_spec(), tmp_path / "cache")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(script),
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["step"] for r in ranks] == [4, 4]
    assert ranks[0]["tokens"] == 4 * 4 * 12  # the global batch, counted over both ranks
    assert ranks[0]["logs"] and not ranks[1]["logs"]  # only rank 0 logs
    state = torch.load(tmp_path / "ckpt" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 4
    assert "fwd.layers.0.weight_ih_l0" in state["model"]


def test_killed_and_resumed_run_reaches_identical_weights(corpus: dict, tmp_path: Path) -> None:
    spec = tiny_spec(max_steps=6, checkpoint_every=100, eval_every=100)
    spec = spec.model_copy(update={"dropout": 0.2})  # dropout masks must be reproduced too
    objective = make_objective(corpus, spec, tmp_path / "cache")

    def fresh() -> ELMo:
        torch.manual_seed(0)
        return ELMo(config_from_spec(spec, corpus["vocab_size"], PAD))

    whole = fresh()
    train(whole, objective, spec.loop, tmp_path / "whole", lambda m, s: None)
    killed = fresh()
    first = train(killed, objective, spec.loop, tmp_path / "resumed", lambda m, s: None,
                  stop_at_step=3)  # fmt: skip
    resumed = fresh()
    second = train(resumed, objective, spec.loop, tmp_path / "resumed", lambda m, s: None)
    assert (first.step, second.resumed_from, second.step) == (3, 3, 6)
    for key, value in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0)


# ----------------------------------------------------------------------------- reproducibility

# One production pretraining of a tiny ELMo (pipelines.training.pretraining.pretrain, as the
# pretrain stage calls it) in a fresh interpreter: torch seeds its default generator differently
# in every process, so anything left unseeded shows up as a different weight file.
PRETRAIN_SCRIPT = """
import json, sys, time
from pathlib import Path
import torch
from pipelines.training.pretraining import PretrainJob, pretrain
from pretrainlab.config import spec_from_dict

run = json.loads(Path(sys.argv[1]).read_text())
torch.set_num_threads(1)
spec = spec_from_dict({"corpus": {"sources": [{"path": "unused.txt"}]},
                       "pretrain": {"families": ["elmo"], "elmo": run["elmo"]}})
job = PretrainJob("elmo", Path(run["tokens"]), Path(run["tokenizer"]), Path(run["work"]),
                  Path(run["out"]))

def log(metrics, step):
    time.sleep(run["sleep_per_log"])  # slow enough for the test to kill it after a checkpoint

print(json.dumps(pretrain(spec, job, log)), flush=True)
"""


def _pretrain_elmo(corpus: dict, tmp_path: Path, name: str, sleep: float) -> subprocess.Popen:
    elmo = {
        "embedding_dim": 16,
        "hidden_dim": 32,
        "seq_len": 12,
        "dropout": 0.2,  # dropout masks must be reproduced too
        "adaptive_cutoffs": [200, 1000],
        "loop": {"max_steps": 12, "batch_size": 4, "warmup_steps": 2, "lr": 3e-3,
                 "log_every": 1, "eval_every": 6, "eval_batches": 1, "checkpoint_every": 4,
                 "device": "cpu"},
    }  # fmt: skip
    run = {
        "elmo": elmo,
        "tokens": str(corpus["tokens"]),
        "tokenizer": str(corpus["root"] / "tokenizer"),
        "work": str(tmp_path / name / "work"),
        "out": str(tmp_path / name / "model"),
        "sleep_per_log": sleep,
    }
    (tmp_path / name).mkdir(exist_ok=True)
    (tmp_path / name / "run.json").write_text(json.dumps(run))
    (tmp_path / "pretrain_elmo.py").write_text(PRETRAIN_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, str(tmp_path / "pretrain_elmo.py"), str(tmp_path / name / "run.json")],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=180)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def _weights(tmp_path: Path, name: str) -> bytes:
    return (tmp_path / name / "model" / "model.safetensors").read_bytes()


@pytest.mark.slow
def test_two_pretraining_runs_and_a_killed_resumed_one_write_identical_weights(
    corpus: dict, tmp_path: Path
) -> None:
    runs = [_pretrain_elmo(corpus, tmp_path, name, 0.0) for name in ("a", "b")]
    runs.append(_pretrain_elmo(corpus, tmp_path, "killed", 0.5))
    try:
        _identical_runs_and_resume(corpus, tmp_path, *runs)
    finally:
        for process in runs:  # a failed assertion leaves no training process behind
            if process.poll() is None:
                process.kill()
                process.communicate()


def _identical_runs_and_resume(
    corpus: dict, tmp_path: Path, first: subprocess.Popen, second: subprocess.Popen,
    killed: subprocess.Popen,
) -> None:  # fmt: skip
    ckpt = checkpoint_path(tmp_path / "killed" / "work" / "checkpoints")
    deadline = time.monotonic() + 120
    while not (ckpt.exists() and load_checkpoint(ckpt)["step"] >= 4):
        assert killed.poll() is None, killed.communicate()
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "model" / "model.safetensors").exists()
    summaries = [_finish(first), _finish(second)]
    assert summaries[0]["steps"] == 12 and summaries[0]["valid_loss"] == summaries[1]["valid_loss"]
    assert _weights(tmp_path, "a") == _weights(tmp_path, "b")
    resumed = _finish(_pretrain_elmo(corpus, tmp_path, "killed", 0.0))
    assert 4 <= resumed["resumed_from"] < 12 and resumed["steps"] == 12
    assert _weights(tmp_path, "killed") == _weights(tmp_path, "a")
