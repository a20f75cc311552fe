"""The shared loop: schedule, accumulation, exact resume, kill/SIGTERM, NaN, bad checkpoints."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipelines.data.batches import micro_examples, seeded_generator
from pipelines.training.loop import (
    ResumeCheckpointError,
    TrainingError,
    checkpoint_path,
    load_checkpoint,
    lr_at,
    train,
)
from pretrainlab.config import LoopSpec

TINY_LM = Path(__file__).with_name("tiny_lm.py")
spec_ = importlib.util.spec_from_file_location("tiny_lm_training", TINY_LM)
tiny_lm = importlib.util.module_from_spec(spec_)
spec_.loader.exec_module(tiny_lm)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return tiny_lm.build_corpus(tmp_path_factory.mktemp("loop-corpus"))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _run(corpus, tmp_path, ckpt: str, loop: dict, model: dict | None = None, **kwargs):
    spec = tiny_lm.tiny_gpt_spec(loop, **(model or {}))
    net, objective = tiny_lm.build_model_and_objective(corpus, spec, tmp_path / "cache")
    logged: list[tuple[int, dict]] = []
    result = train(
        net, objective, spec.loop, tmp_path / ckpt, lambda m, s: logged.append((s, m)), **kwargs
    )
    return net, result, logged


# ----------------------------------------------------------------------------- pure pieces


def test_lr_schedule_warmup_then_cosine_to_the_floor():
    loop = LoopSpec(max_steps=110, warmup_steps=10, lr=1e-3, min_lr_ratio=0.1)
    assert lr_at(1, loop) == pytest.approx(1e-4)  # warmup starts above zero
    assert lr_at(5, loop) == pytest.approx(5e-4)
    assert lr_at(10, loop) == pytest.approx(1e-3)  # peak at the end of warmup
    assert lr_at(60, loop) == pytest.approx(1e-4 + 0.5 * 9e-4)  # cosine midpoint
    assert lr_at(110, loop) == pytest.approx(1e-4)  # floor at max_steps ...
    assert lr_at(500, loop) == pytest.approx(1e-4)  # ... and beyond (budgets, resumes)
    decay = [lr_at(s, loop) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(decay))


def test_lr_schedule_without_warmup_starts_at_peak():
    loop = LoopSpec(max_steps=10, warmup_steps=0, lr=2e-3, min_lr_ratio=0.0)
    assert lr_at(1, loop) < 2e-3 and lr_at(1, loop) > 1.9e-3
    assert lr_at(10, loop) == 0.0


def test_micro_batches_of_all_ranks_partition_the_global_batch():
    for n_micro, world in [(1, 1), (2, 1), (1, 2), (2, 2), (4, 2)]:
        seen = [
            i
            for m in range(n_micro)
            for r in range(world)
            for i in micro_examples(16, m, n_micro, r, world)
        ]
        assert sorted(seen) == list(range(16)), (n_micro, world)


def test_seeded_generator_is_a_pure_function_of_its_keys():
    a = torch.rand(4, generator=seeded_generator(0, 3, 7))
    assert torch.equal(a, torch.rand(4, generator=seeded_generator(0, 3, 7)))
    assert not torch.equal(a, torch.rand(4, generator=seeded_generator(0, 3, 8)))


# ----------------------------------------------------------------------------- the loop


def test_logs_metrics_every_n_steps_and_valid_every_m(corpus, tmp_path):
    loop = {"max_steps": 10, "log_every": 5, "eval_every": 4, "checkpoint_every": 100}
    _, result, logged = _run(corpus, tmp_path, "ckpt", loop)
    train_steps = [s for s, m in logged if "loss" in m]
    valid_steps = [s for s, m in logged if "valid_loss" in m]
    assert train_steps == [5, 10]
    assert valid_steps == [4, 8, 10]  # every 4 steps and at the end
    first = dict(logged)[5]
    assert {"loss", "lr", "tokens_per_s", "step_time_s", "grad_norm", "tokens_seen"} <= set(first)
    assert first["tokens_seen"] == 5 * 8 * 16
    last_valid = [m for _, m in logged if "valid_loss" in m][-1]
    assert last_valid["valid_ppl"] == pytest.approx(math.exp(last_valid["valid_loss"]))
    assert result.tokens_seen == 10 * 8 * 16 and result.step == 10
    assert checkpoint_path(tmp_path / "ckpt").is_file()  # the final checkpoint


def test_grad_accumulation_gives_the_same_step(corpus, tmp_path):
    loop = {"max_steps": 3, "checkpoint_every": 100, "eval_every": 100}
    whole, _, _ = _run(corpus, tmp_path, "a", loop, {"dropout": 0.0})
    accum, _, _ = _run(corpus, tmp_path, "b", {**loop, "grad_accum": 4}, {"dropout": 0.0})
    for name, value in whole.state_dict().items():
        # fp summation order differs; Adam's first steps amplify it for ~zero gradients
        assert torch.allclose(value, accum.state_dict()[name], atol=1e-5, rtol=0), name


class AutocastWatch:
    """An objective that notes whether each of its forward passes ran under CPU autocast."""

    def __init__(self, inner):
        self.inner, self.seen = inner, set()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def loss(self, model, batch):
        self.seen.add(torch.is_autocast_enabled("cpu"))
        return self.inner.loss(model, batch)


# The stated tolerance of CPU bf16 autocast: after 20 steps the train and valid losses are
# within 1% of fp32's from the same seed (measured here: ~1e-5 relative, GPT and BERT; the
# weights, optimizer and loss stay fp32, only matmul inputs are rounded to bf16).
BF16_LOSS_RTOL = 0.01


def test_cpu_bf16_autocast_ends_within_tolerance_of_fp32(corpus, tmp_path):
    spec = tiny_lm.tiny_gpt_spec(
        {"max_steps": 20, "log_every": 5, "eval_every": 20, "checkpoint_every": 100},
        dropout=0.0,
    )
    final = {}
    for bf16 in (False, True):
        net, objective = tiny_lm.build_model_and_objective(corpus, spec, tmp_path / "cache")
        watch, logged = AutocastWatch(objective), []
        train(
            net,
            watch,
            spec.loop,
            tmp_path / f"ckpt-{bf16}",
            lambda m, s, logged=logged: logged.append(m),
            cpu_autocast=bf16,
        )
        assert watch.seen == {bf16}  # every forward (train and valid) ran as asked
        final[bf16] = ([m["loss"] for m in logged if "loss" in m][-1], logged[-1]["valid_loss"])
    (train32, valid32), (train16, valid16) = final[False], final[True]
    assert train16 == pytest.approx(train32, rel=BF16_LOSS_RTOL)
    assert valid16 == pytest.approx(valid32, rel=BF16_LOSS_RTOL)
    assert (train16, valid16) != (train32, valid32)  # bf16 did change the arithmetic


def test_resume_after_stop_is_bit_identical_with_dropout_on(corpus, tmp_path):
    loop = {"max_steps": 12, "checkpoint_every": 4, "eval_every": 5}
    model = {"dropout": 0.2}
    straight, full, _ = _run(corpus, tmp_path, "straight", loop, model)

    _, first, _ = _run(corpus, tmp_path, "resumed", loop, model, stop_at_step=7)
    assert (first.step, first.stopped_reason) == (7, "stop_at_step")
    assert load_checkpoint(checkpoint_path(tmp_path / "resumed"))["step"] == 7
    resumed, second, _ = _run(corpus, tmp_path, "resumed", loop, model)
    assert (second.resumed_from, second.step, second.stopped_reason) == (7, 12, "max_steps")
    assert second.tokens_seen == full.tokens_seen
    for name, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    assert second.last_valid_loss == full.last_valid_loss

    again, third, _ = _run(corpus, tmp_path, "resumed", loop, model)  # finished: nothing to do
    assert (third.step, third.resumed_from) == (12, 12)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in straight.state_dict().items())


def test_budget_in_tokens_and_minutes_stop_the_run(corpus, tmp_path):
    per_step = 8 * 16
    _, by_tokens, logged = _run(
        corpus, tmp_path, "t", {"max_steps": 50}, budget_tokens=3 * per_step
    )
    assert (by_tokens.step, by_tokens.stopped_reason) == (3, "budget_tokens")
    assert by_tokens.tokens_seen == 3 * per_step
    assert any("valid_loss" in m for _, m in logged)  # a final valid pass
    _, by_time, _ = _run(corpus, tmp_path, "m", {"max_steps": 50}, budget_minutes=1e-9)
    assert (by_time.step, by_time.stopped_reason) == (1, "budget_minutes")
    assert by_time.wall_s > 0


class _PoisonedObjective:
    """The real GPT objective whose loss turns NaN from step `at` (a diverged run)."""

    def __init__(self, objective, at: int):
        self.inner, self.at = objective, at

    def train_batch(self, step, micro, n_micro, rank, world):
        batch = self.inner.train_batch(step, micro, n_micro, rank, world)
        return {**batch, "poison": torch.tensor(float("nan") if step >= self.at else 0.0)}

    def valid_batches(self, n):
        return self.inner.valid_batches(n)

    def loss(self, model, batch):
        loss, extras = self.inner.loss(model, batch)
        return (loss + batch["poison"] if "poison" in batch else loss), extras

    def tokens(self, batch):
        return self.inner.tokens(batch)

    def flops_per_token(self, model):
        return self.inner.flops_per_token(model)


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(corpus, tmp_path):
    spec = tiny_lm.tiny_gpt_spec({"max_steps": 20, "checkpoint_every": 5})
    model, objective = tiny_lm.build_model_and_objective(corpus, spec, tmp_path / "cache")
    with pytest.raises(TrainingError, match=r"at step 8: training diverged.*step 5.*lower loop.lr"):
        train(model, _PoisonedObjective(objective, at=8), spec.loop, tmp_path / "c", lambda m, s: 0)
    saved = load_checkpoint(checkpoint_path(tmp_path / "c"))
    assert saved["step"] == 5
    assert all(torch.isfinite(v).all() for v in saved["model"].values())
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())  # never stepped


def test_corrupt_foreign_and_mismatched_checkpoints_are_refused(corpus, tmp_path):
    spec = tiny_lm.tiny_gpt_spec({"max_steps": 2})
    path = checkpoint_path(tmp_path / "c")
    path.parent.mkdir()

    def attempt():
        model, objective = tiny_lm.build_model_and_objective(corpus, spec, tmp_path / "cache")
        train(model, objective, spec.loop, tmp_path / "c", lambda m, s: None)

    path.write_bytes(b"\x00garbage, not a checkpoint")
    with pytest.raises(ResumeCheckpointError, match=r"cannot read this checkpoint.*delete it"):
        attempt()
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)  # someone else's torch file
    with pytest.raises(ResumeCheckpointError, match="not a pretrainlab checkpoint"):
        attempt()
    torch.save({"format": "pretrainlab-checkpoint-v1", "model": torch.nn.Linear(2, 2)}, path)
    # Pickled code: weights_only loading refuses it.
    with pytest.raises(ResumeCheckpointError, match="cannot read"):
        attempt()
    _run(corpus, tmp_path, "wide", {"max_steps": 1}, {"n_embd": 64})
    good = checkpoint_path(tmp_path / "wide").read_bytes()
    path.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(ResumeCheckpointError, match="cannot read this checkpoint"):
        attempt()
    path.write_bytes(good)  # complete, but another model's shapes
    with pytest.raises(ResumeCheckpointError, match="does not fit this model"):
        attempt()


# ----------------------------------------------------------------------------- real processes


def _start(corpus, tmp_path, loop: dict, sleep: float) -> subprocess.Popen:
    run = {
        "corpus": {k: v for k, v in corpus.items() if k != "rows"},
        "loop": loop,
        "cache_dir": str(tmp_path / "cache"),
        "checkpoint_dir": str(tmp_path / "ckpt"),
        "sleep_per_log": sleep,
        "weights_out": str(tmp_path / "weights.safetensors"),
    }
    run_file = tmp_path / "run.json"
    run_file.write_text(json.dumps(run))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, str(TINY_LM), str(run_file)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_checkpoint(path: Path, at_least: int, process: subprocess.Popen) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        if path.exists():
            step = load_checkpoint(path)["step"]
            if step >= at_least:
                return step
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint at step >= {at_least} within 60 s")


def _result(output: str) -> dict:
    line = next(x for x in output.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


@pytest.mark.slow
def test_sigkill_then_restart_resumes_and_finishes(corpus, tmp_path):
    loop = {"max_steps": 40, "log_every": 1, "checkpoint_every": 5, "eval_every": 20}
    first = _start(corpus, tmp_path, loop, sleep=0.05)
    killed_after = _wait_for_checkpoint(checkpoint_path(tmp_path / "ckpt"), 10, first)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    assert first.returncode == -signal.SIGKILL
    assert load_checkpoint(checkpoint_path(tmp_path / "ckpt"))["step"] < 40

    second = _start(corpus, tmp_path, loop, sleep=0.0)
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    result = _result(out)
    assert result["step"] == 40 and result["stopped_reason"] == "max_steps"
    assert killed_after <= result["resumed_from"] < 40

    straight, _, _ = _run(corpus, tmp_path, "straight", loop)  # same run, never killed
    from safetensors.torch import load_file

    resumed = load_file(tmp_path / "weights.safetensors")
    for name, value in resumed.items():
        assert torch.equal(value, straight.state_dict()[name]), name


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_cleanly(corpus, tmp_path):
    loop = {"max_steps": 1000, "log_every": 1, "checkpoint_every": 5, "eval_every": 500}
    process = _start(corpus, tmp_path, loop, sleep=0.05)
    _wait_for_checkpoint(checkpoint_path(tmp_path / "ckpt"), 5, process)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    result = _result(out)
    assert result["stopped_reason"] == "sigterm" and 5 <= result["step"] < 1000
    assert load_checkpoint(checkpoint_path(tmp_path / "ckpt"))["step"] == result["step"]
