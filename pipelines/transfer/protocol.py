"""The downstream training protocol: how many optimizer steps a run takes, when it evaluates on
dev, its learning-rate schedule, and whether it converged. Pure functions of the config and the
number of training examples, so every mode, family and budget runs under the same rules.

- Steps: `planned = clamp(passes * ceil(n_train / batch_size), min_steps, max_steps)`. The floor
  makes a small budget repeat its examples many times (few-sample fine-tuning needs many passes:
  Mosbach et al. 2021, Zhang et al. 2021); the ceiling bounds a large one.
- Dev evaluation every `eval_every = max(1, min_steps // evals)` steps and at the last step:
  every run has at least `evals` evaluations (`min_steps >= evals` is checked) before early
  stopping may end it, and a longer run keeps the same resolution (more evaluations).
- Early stopping counted in evaluations: `patience` evaluations without a better dev score, and
  only once the run has taken `min_steps` steps. Test metrics come from the best evaluation.
- Schedule (BERT's): linear warmup over the first `warmup` fraction of the planned steps, then
  linear decay to zero at `planned`, for every parameter group of every mode (one schedule, so
  modes differ only in what trains). Loaded encoder weights train at `lr * encoder_lr_scale`.
- Converged: yes when early stopping ended the run (a plateau of `patience` evaluations);
  otherwise no when it was still improving in its last fifth (`still_improving`: some
  evaluation among the last fifth beats every earlier one by more than 5% of the run's dev gain
  and by more than one dev item's worth of score). The report states and applies this rule.
- Determinism (`cell_scope`): a run's numbers depend only on its inputs (model files, examples,
  config with its seed and thread count), never on where it runs or what ran before it in that
  process. Every draw comes from torch's generators seeded by the run's seed inside a forked,
  then restored, RNG state; the batch order from its own `torch.Generator`; the torch thread
  count is the config's `threads` (reductions sum in a thread-count-dependent order).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from pipelines.transfer.heads import TransferError

GAIN_SHARE = 0.95  # "steps to 95% of the gain"; a late rise under 5% of the gain is noise
TAIL_PARTS = 5  # "the last fifth" of a run's evaluations: ceil(k / 5) of k


@dataclass(frozen=True)
class TransferConfig:
    mode: str
    lr: float  # the head's (and re-initialised layers') peak rate
    batch_size: int
    max_len: int
    seed: int
    passes: int  # planned passes over the training examples, before the floor and ceiling
    min_steps: int  # floor: small budgets repeat their examples until here
    max_steps: int  # ceiling
    evals: int  # dev evaluations a run has at least
    patience: int  # evaluations without improvement before stopping (after min_steps)
    warmup: float  # fraction of the planned steps spent warming up
    encoder_lr_scale: float  # loaded encoder weights train at lr * this
    threads: int = 1  # torch threads while the run trains (see cell_scope)


@dataclass(frozen=True)
class Plan:
    steps: int  # planned optimizer steps (the schedule reaches zero here)
    eval_every: int
    warmup_steps: int


def check_config(config: TransferConfig) -> None:
    """Every value a spec can get wrong, named with the field to change."""
    for name in ("passes", "min_steps", "evals", "patience", "batch_size", "max_len"):
        if getattr(config, name) < 1:
            raise TransferError(f"transfer {name} must be at least 1, got {getattr(config, name)}")
    if config.max_steps < config.min_steps:
        raise TransferError(
            f"transfer max_steps ({config.max_steps}) is below min_steps ({config.min_steps}); "
            "raise max_steps or lower min_steps"
        )
    if config.threads < 1:
        raise TransferError(f"compute.cell_threads must be at least 1, got {config.threads}")
    if config.min_steps < config.evals:
        raise TransferError(
            f"transfer min_steps ({config.min_steps}) is below evals ({config.evals}): a run "
            "could not evaluate that often; raise min_steps or lower evals"
        )
    if not 0 <= config.warmup < 1:
        raise TransferError(f"transfer warmup is a fraction in [0, 1), got {config.warmup}")
    if not config.lr > 0 or not config.encoder_lr_scale > 0:
        raise TransferError(
            f"transfer lr ({config.lr}) and encoder_lr_scale ({config.encoder_lr_scale}) "
            "must be positive"
        )


def plan(config: TransferConfig, n_train: int) -> Plan:
    """Planned steps, evaluation interval and warmup steps for `n_train` training examples."""
    per_pass = math.ceil(n_train / config.batch_size)
    steps = min(max(config.passes * per_pass, config.min_steps), config.max_steps)
    return Plan(
        steps=steps,
        eval_every=max(1, config.min_steps // config.evals),
        warmup_steps=round(config.warmup * steps),
    )


def lr_factor(step: int, plan: Plan) -> float:
    """The multiplier of every group's peak rate at optimizer step `step` (1-based)."""
    if step <= plan.warmup_steps:  # linear warmup: 1/w ... 1
        return step / plan.warmup_steps
    # linear decay from 1 (first step after warmup) to 1/(steps - w) at the last planned step
    return (plan.steps - step + 1) / (plan.steps - plan.warmup_steps)


def tail_improvement(scores: Sequence[float]) -> float:
    """The best dev score of a run's last fifth of evaluations minus the best before it (<= 0
    when the last fifth sets no new best); 0 for fewer than 2 evaluations."""
    k = len(scores)
    if k < 2:
        return 0.0
    tail = max(1, -(-k // TAIL_PARTS))  # ceil(k / 5), at least one evaluation
    return float(max(scores[k - tail:]) - max(scores[: k - tail]))


def still_improving(scores: Sequence[float], min_delta: float = 0.0) -> bool:
    """Whether a dev curve (evaluations in step order, higher is better) rose in its last fifth
    by more than 5% of its gain (best minus first) and more than `min_delta` (one dev item's
    worth of score): a rise that small is noise, not learning. Fewer than 2 evaluations: yes."""
    if len(scores) < 2:
        return True
    gain = max(scores) - scores[0]
    return tail_improvement(scores) > max((1 - GAIN_SHARE) * gain, min_delta) + 1e-12


def is_converged(scores: Sequence[float], plateaued: bool, min_delta: float = 0.0) -> bool:
    """A run's converged flag: early stopping ended it, or it was not still improving."""
    return plateaued or not still_improving(scores, min_delta)


# torch's default generators and thread count belong to the process: cells sharing one (thread
# runner, a Dask worker with several threads) take turns, so none sees another's draws.
_CELL_LOCK = threading.RLock()


@contextmanager
def cell_scope(seed: int, threads: int) -> Iterator[None]:
    """Run the body as one cell of the determinism contract: `threads` torch threads and the
    default generators (CPU and the current GPU) seeded by `seed`; both restored afterwards, so
    nothing before or after the cell (in this process) changes its numbers or is changed by it."""
    with _CELL_LOCK:
        before = torch.get_num_threads()
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        torch.set_num_threads(threads)
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                yield
        finally:
            torch.set_num_threads(before)
