"""Learning-rate schedules of the training loop, and the cooldown that anneals a pretraining
point.

- `cosine`: linear warmup, then cosine decay to `min_lr` at `max_steps` (nanoGPT's `get_lr`).
- `wsd` (warmup-stable-decay; Hu et al. 2024, MiniCPM; Hägele et al. 2024): linear warmup, a
  constant rate, then a linear decay over the last `cooldown` share of `max_steps`. The stable
  phase never anneals, so a point taken mid-way is annealed on a branch by its own short linear
  cooldown (`cooldown_lrs`) and is an honest "model trained for this long", where a mid-cosine
  snapshot is not.
"""

from __future__ import annotations

import math

from pretrainlab.config import LoopSpec


def _warmup(step: int, loop: LoopSpec) -> float:
    return loop.lr * step / loop.warmup_steps


def decay_start(loop: LoopSpec) -> int:
    """WSD: the last step of the stable phase (the decay takes the `cooldown` share after it)."""
    return max(loop.warmup_steps, loop.max_steps - max(1, round(loop.cooldown * loop.max_steps)))


def lr_at(step: int, loop: LoopSpec) -> float:
    """Learning rate for optimizer step `step` (1-based) under `loop.schedule`."""
    min_lr = loop.lr * loop.min_lr_ratio
    if step <= loop.warmup_steps:  # 1) warmup: lr/warmup ... lr
        return _warmup(step, loop)
    if step >= loop.max_steps:  # 2) after the schedule: the floor
        return min_lr
    if loop.schedule == "wsd":  # 3a) stable at lr, then linear down to min_lr
        start = decay_start(loop)
        if step <= start:
            return loop.lr
        return loop.lr + (min_lr - loop.lr) * (step - start) / (loop.max_steps - start)
    # 3b) cosine from lr down to min_lr between the end of warmup and max_steps
    progress = (step - loop.warmup_steps) / (loop.max_steps - loop.warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (loop.lr - min_lr)


def cooldown_steps(step: int, loop: LoopSpec) -> int:
    """Steps of the cooldown branch annealing a point at `step`: the `cooldown` share of the
    steps it has trained (at least one); none under cosine, which anneals only at its end."""
    return max(1, round(loop.cooldown * step)) if loop.schedule == "wsd" else 0


def cooldown_lrs(step: int, loop: LoopSpec) -> list[float]:
    """The rates of the cooldown branch from `step`: linear from the rate at `step` to min_lr."""
    n, start, floor = cooldown_steps(step, loop), lr_at(step, loop), loop.lr * loop.min_lr_ratio
    return [start + (floor - start) * i / n for i in range(1, n + 1)]


def point_steps(points: list[float], total: int) -> dict[int, str]:
    """{step: label} of the pretraining points strictly before `total` steps (epochs for
    word2vec); the last point (1.0) is the final model itself. Points that round to the same
    step keep the first label."""
    found: dict[int, str] = {}
    for share in points:
        step = max(1, round(share * total))
        if step < total:
            found.setdefault(step, point_label(share))
    return found


def point_label(share: float) -> str:
    """How a point is named in tags, result rows and directories: `0.1`, `0.3`."""
    return f"{share:g}"
