"""The training loop shared by the torch families (ELMo, GPT, BERT).

A family plugs in through an `Objective`: it makes batches as a pure function of
(seed, step, micro, rank) and computes the loss. The loop owns everything else: AdamW, the
schedule (`schedule.lr_at`: warmup + cosine or warmup-stable-decay), pretraining points
(snapshots, each annealed on a cooldown branch under WSD: `points`), gradient clipping and
accumulation, device and bf16 autocast, optional `torch.compile`, metrics every `log_every`
steps, a valid pass every `eval_every` steps, atomic checkpoints (every `checkpoint_every`
steps, on SIGTERM and Ctrl-C) and exact resume, budgets in tokens or minutes, and DDP when
torch.distributed is initialised.

Why resume is exact and cheap: batches are a function of the step (no data position to
replay) and dropout is reseeded from (seed, step, rank) at every step, so a resumed run draws
the same masks an uninterrupted one would; the checkpoint also holds the RNG states.

References: nanoGPT's train.py (one explicit loop, `get_lr`), torchtune recipes.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from pipelines.data.batches import Batch
from pipelines.training.points import PointInfo, PointPlan, branch
from pipelines.training.precision import autocast
from pipelines.training.schedule import cooldown_lrs, lr_at
from pipelines.training.stop_signals import StopSignals
from pretrainlab.config import LoopSpec, PretrainlabError
from storage.atomic import atomic_path

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "pretrainlab-checkpoint-v1"

LogFn = Callable[[dict[str, float], int], None]


class TrainingError(PretrainlabError, RuntimeError):
    """Training cannot go on (NaN loss, out of memory, bad checkpoint); the message says why."""


class ResumeCheckpointError(TrainingError):
    """A training checkpoint (to resume from) that is corrupt, foreign, or belongs to another
    model. Not `hf_import.CheckpointError`, which is about a user's own pretrained model."""


class Objective(Protocol):
    """What a model family gives the loop. Batches are pure functions of their arguments."""

    def train_batch(self, step: int, micro: int, n_micro: int, rank: int, world: int) -> Batch:
        """Micro-batch `micro` of `n_micro` for this rank; all ranks' micro-batches = the step."""
        ...

    def valid_batches(self, n: int) -> Iterable[Batch]:
        """The same `n` valid batches every time."""
        ...

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss (mean over the micro-batch) and extra metrics."""
        ...

    def tokens(self, batch: Batch) -> int:
        """Tokens this batch trains on (for tokens/s and token budgets)."""
        ...

    def flops_per_token(self, model: torch.nn.Module) -> float:
        """Training FLOPs per token, ~6 * parameters (+ attention)."""
        ...


@dataclass(frozen=True)
class TrainResult:
    step: int  # optimizer steps completed
    tokens_seen: int
    wall_s: float  # training wall time, summed over resumes
    flops: float  # estimated training FLOPs = flops_per_token * tokens_seen
    best_valid_loss: float | None
    last_valid_loss: float | None
    stopped_reason: str  # max_steps|budget_tokens|budget_minutes|sigterm|sigint|stop_at_step
    resumed_from: int  # step of the checkpoint this call started from (0 = fresh)


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA) and numpy, e.g. before building a model."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def pick_device(loop: LoopSpec) -> torch.device:
    if loop.device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("loop.device is 'cuda' but no CUDA device is visible; use 'auto'")
    if loop.device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    if dist.is_initialized():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cuda")


def init_distributed() -> tuple[int, int]:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR/PORT env vars).

    gloo on CPU, nccl on CUDA (one GPU per LOCAL_RANK). Returns (rank, world); (0, 1) when the
    environment names no group, so the same entry point runs with or without torchrun.
    """
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices (dim >= 2: linear and embedding weights), not biases or norm gains."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def make_optimizer(model: torch.nn.Module, loop: LoopSpec) -> torch.optim.AdamW:
    fused = next(model.parameters()).device.type == "cuda"
    return torch.optim.AdamW(
        param_groups(model, loop.weight_decay), lr=lr_at(1, loop), betas=(0.9, 0.95), fused=fused
    )


# ----------------------------------------------------------------------------- checkpoints


def checkpoint_path(checkpoint_dir: str | Path) -> Path:
    return Path(checkpoint_dir) / CHECKPOINT


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save to a temporary sibling, then rename: a kill never leaves half a file."""
    with atomic_path(path) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load with weights_only=True (no arbitrary pickle); reject foreign or corrupt files."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ResumeCheckpointError(
            f"{path}: cannot read this checkpoint: it is corrupt, or holds pickled objects that "
            "weights_only loading refuses (only tensors and plain values are trusted); delete it "
            "to start this model from scratch"
        ) from None
    except Exception as error:  # torch raises many kinds on a damaged zip
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ResumeCheckpointError(
            f"{path}: cannot read this checkpoint ({first}); it is corrupt or not a torch file: "
            "delete it to start this model from scratch"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ResumeCheckpointError(
            f"{path}: not a pretrainlab checkpoint (no format tag {CHECKPOINT_FORMAT!r}); "
            "point checkpoint_dir at this model's own directory or delete the file"
        )
    return state


def _restore(
    state: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer, path: Path
) -> None:
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise ResumeCheckpointError(
            f"{path}: checkpoint does not fit this model/optimizer ({first}). It was written by a "
            "different model configuration; use a fresh checkpoint_dir or delete the file."
        ) from None
    torch.set_rng_state(state["rng_cpu"])
    if torch.cuda.is_available() and state.get("rng_cuda"):
        torch.cuda.set_rng_state_all(state["rng_cuda"])


# ----------------------------------------------------------------------------- the loop


class _LossModule(torch.nn.Module):
    """Model + objective as one module, so DDP sees the objective's whole forward pass
    (objectives may call sub-modules, e.g. BERT's MLM head only at masked positions)."""

    def __init__(self, model: torch.nn.Module, objective: Objective):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return self.objective.loss(self.model, batch)


@dataclass
class _State:
    step: int = 0
    tokens_seen: int = 0
    wall_s: float = 0.0
    best_valid_loss: float | None = None
    last_valid_loss: float | None = None
    saved_step: int | None = None  # step of the last checkpoint written (the last good one)


def _to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _step_seed(seed: int, step: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1, np.uint64)[0] >> 1)


def _reseed(seed: int, device: torch.device) -> None:
    """Seed the generators dropout draws from; ~100x cheaper than torch.manual_seed."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)


def _evaluate(
    model: torch.nn.Module, objective: Objective, n: int, device: torch.device, cpu_bf16: bool
) -> dict[str, float]:
    """Mean valid loss (+ objective extras, prefixed valid_) over the fixed valid batches."""
    model.eval()
    losses: list[float] = []
    extras: dict[str, list[float]] = {}
    with torch.no_grad(), autocast(device, cpu_bf16):
        for batch in objective.valid_batches(n):
            loss, metrics = objective.loss(model, _to_device(batch, device))
            losses.append(float(loss))
            for key, value in metrics.items():
                extras.setdefault(key, []).append(float(value))
    model.train()
    if not losses:
        raise TrainingError("the objective gave no valid batches; the valid split is empty")
    valid_loss = sum(losses) / len(losses)
    out = {"valid_loss": valid_loss, "valid_ppl": math.exp(min(valid_loss, 50.0))}
    out.update({f"valid_{k}": sum(v) / len(v) for k, v in extras.items()})
    return out


def _oom_error(loop: LoopSpec, error: BaseException) -> TrainingError:
    return TrainingError(
        f"out of memory with batch_size {loop.batch_size} and grad_accum {loop.grad_accum} "
        f"({type(error).__name__}); raise loop.grad_accum (same global batch, smaller "
        "micro-batches) or lower loop.batch_size"
    )


def train(
    model: torch.nn.Module,
    objective: Objective,
    loop: LoopSpec,
    checkpoint_dir: Path,
    log: LogFn,
    budget_tokens: int | None = None,
    budget_minutes: float | None = None,
    stop_at_step: int | None = None,
    points: PointPlan | None = None,
    cpu_autocast: bool = False,
) -> TrainResult:
    """Train `model` on `objective` from the latest checkpoint in `checkpoint_dir` (if any).

    `stop_at_step` is a test hook: checkpoint after that step and return, as if killed.
    `points`: snapshots to keep on the way (those after a resumed step are taken).
    `cpu_autocast`: forward passes in bf16 autocast on the CPU too (see precision.py).
    Under torch.distributed every rank calls this; only rank 0 logs and checkpoints.
    """
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if loop.batch_size % (loop.grad_accum * world):
        raise TrainingError(
            f"loop.batch_size {loop.batch_size} must be divisible by grad_accum "
            f"{loop.grad_accum} x world size {world}; change batch_size or grad_accum"
        )
    device = pick_device(loop)
    model.to(device)
    model.train()
    optimizer = make_optimizer(model, loop)
    path = checkpoint_path(checkpoint_dir)
    state = _State()
    if path.exists():
        saved = load_checkpoint(path)
        _restore(saved, model, optimizer, path)
        state = _State(
            saved["step"],
            saved["tokens_seen"],
            saved["wall_s"],
            saved["best_valid_loss"],
            saved["last_valid_loss"],
            saved_step=saved["step"],
        )
    resumed_from = state.step

    forward_model = torch.compile(model) if loop.compile else model
    wrapped: torch.nn.Module = _LossModule(forward_model, objective)
    if distributed:
        ids = [device.index] if device.type == "cuda" else None
        wrapped = DistributedDataParallel(wrapped, device_ids=ids, find_unused_parameters=True)
    flops_per_token = objective.flops_per_token(model)

    def checkpoint() -> None:
        state.saved_step = state.step
        if rank == 0:
            save_checkpoint(
                path,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "step": state.step,
                    "tokens_seen": state.tokens_seen,
                    "wall_s": state.wall_s,
                    "best_valid_loss": state.best_valid_loss,
                    "last_valid_loss": state.last_valid_loss,
                    "rng_cpu": torch.get_rng_state(),
                    "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                },
            )

    def evaluate() -> dict[str, float]:
        metrics = _evaluate(forward_model, objective, loop.eval_batches, device, cpu_autocast)
        state.last_valid_loss = metrics["valid_loss"]
        if state.best_valid_loss is None or metrics["valid_loss"] < state.best_valid_loss:
            state.best_valid_loss = metrics["valid_loss"]
        return metrics

    def result(reason: str) -> TrainResult:
        return TrainResult(
            state.step,
            state.tokens_seen,
            state.wall_s,
            flops_per_token * state.tokens_seen,
            state.best_valid_loss,
            state.last_valid_loss,
            reason,
            resumed_from,
        )

    def take_point(step: int) -> None:
        """Under WSD anneal a branch for the point's cooldown steps (the batches that follow),
        save it, and come back to the stable phase as it was; under cosine save as is."""
        assert points is not None
        tokens = state.tokens_seen
        lrs = cooldown_lrs(step, loop)
        with branch(model, optimizer):
            for i, lr in enumerate(lrs, 1):
                _, n, _, _ = _train_step(
                    wrapped, objective, optimizer, loop, step + i, (rank, world), device,
                    cpu_autocast, lr=lr,
                )
                tokens += n * world  # every rank trains its share of the global batch
            if rank == 0:
                info = PointInfo(
                    points.steps[step], step, tokens, flops_per_token * tokens, len(lrs),
                    loop.schedule,
                )  # fmt: skip
                points.save(model, info)

    def budget_reason() -> str | None:
        if budget_tokens is not None and state.tokens_seen >= budget_tokens:
            return "budget_tokens"
        if budget_minutes is not None and state.wall_s >= budget_minutes * 60:
            return "budget_minutes"
        if state.step >= loop.max_steps:
            return "max_steps"
        return None

    if (reason := budget_reason()) is not None:
        return result(reason)  # a finished run, restarted: nothing left to do

    window = {"loss": 0.0, "steps": 0, "tokens": 0, "time": 0.0}
    t_last = time.perf_counter()
    with StopSignals() as stop_signal:
        while True:
            step = state.step + 1
            t0 = time.perf_counter()
            try:
                loss, step_tokens, grad_norm, extras = _train_step(
                    wrapped, objective, optimizer, loop, step, (rank, world), device, cpu_autocast
                )
            except torch.OutOfMemoryError as error:
                raise _oom_error(loop, error) from None
            now = time.perf_counter()
            compute_s, wall_s, t_last = now - t0, now - t_last, now
            stop = bool(stop_signal.raised) or (stop_at_step is not None and step >= stop_at_step)
            if distributed:  # one small all-reduce keeps every rank's decisions identical
                shared = torch.tensor(
                    [loss, step_tokens, float(stop), compute_s, wall_s], dtype=torch.float64
                )
                dist.all_reduce(shared)
                loss, step_tokens, stop = float(shared[0]) / world, int(shared[1]), bool(shared[2])
                compute_s, wall_s = float(shared[3]) / world, float(shared[4]) / world
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                kept = (
                    "none written yet" if state.saved_step is None else f"step {state.saved_step}"
                )
                raise TrainingError(
                    f"loss {loss} / grad norm {grad_norm} at step {step}: training diverged. "
                    f"The last good checkpoint is kept ({kept}, {path}); lower loop.lr, raise "
                    "loop.warmup_steps, or lower loop.grad_clip"
                )
            state.step, state.tokens_seen = step, state.tokens_seen + step_tokens
            state.wall_s += wall_s
            window["loss"] += loss
            window["steps"] += 1
            window["tokens"] += step_tokens
            window["time"] += compute_s

            if rank == 0 and step % loop.log_every == 0:
                log(
                    {
                        "loss": window["loss"] / window["steps"],
                        "lr": lr_at(step, loop),
                        "tokens_per_s": window["tokens"] / max(window["time"], 1e-9),
                        "step_time_s": window["time"] / window["steps"],
                        "grad_norm": grad_norm,
                        "tokens_seen": float(state.tokens_seen),
                        **extras,
                    },
                    step,
                )
                window = {"loss": 0.0, "steps": 0, "tokens": 0, "time": 0.0}

            if points is not None and step in points.steps:
                take_point(step)  # before a stop's checkpoint: a resume never skips a point
            if stop:
                checkpoint()
                return result(stop_signal.raised or "stop_at_step")
            reason = budget_reason()
            if rank == 0 and (step % loop.eval_every == 0 or reason is not None):
                log(evaluate(), step)
            if reason is not None or step % loop.checkpoint_every == 0:
                checkpoint()
            if reason is not None:
                return result(reason)


def _train_step(
    wrapped: torch.nn.Module,
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    loop: LoopSpec,
    step: int,
    ranks: tuple[int, int],
    device: torch.device,
    cpu_bf16: bool,
    lr: float | None = None,
) -> tuple[float, int, float, dict[str, float]]:
    """One optimizer step over `grad_accum` micro-batches; returns loss, tokens, grad norm.
    `ranks`: (rank, world size); `lr` overrides the schedule's rate (a point's cooldown)."""
    rank, world = ranks
    _reseed(_step_seed(loop.seed, step, rank), device)  # dropout masks = f(seed, step, rank)
    lr = lr_at(step, loop) if lr is None else lr
    for group in optimizer.param_groups:
        group["lr"] = lr
    n_micro = loop.grad_accum
    total = torch.zeros((), device=device)
    tokens = 0
    extras: dict[str, float] = {}
    for micro in range(n_micro):
        batch = objective.train_batch(step, micro, n_micro, rank, world)
        tokens += objective.tokens(batch)
        batch = _to_device(batch, device)
        last = micro == n_micro - 1
        sync = contextlib.nullcontext() if last or world == 1 else wrapped.no_sync()
        with sync:
            with autocast(device, cpu_bf16):
                loss, metrics = wrapped(batch)
            (loss / n_micro).backward()
        total += loss.detach()
        for key, value in metrics.items():
            extras[key] = extras.get(key, 0.0) + float(value) / n_micro
    grad_norm = torch.nn.utils.clip_grad_norm_(wrapped.parameters(), loop.grad_clip)
    mean_loss, norm = float(total) / n_micro, float(grad_norm)
    if math.isfinite(mean_loss) and math.isfinite(norm):  # never step into NaN weights
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return mean_loss, tokens, norm, extras
