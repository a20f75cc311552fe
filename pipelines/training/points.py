"""Pretraining points: snapshots a training run keeps on its way, for break-even curves.

A point is a share of the family's steps (`pretrain.points`). The loop calls `PointPlan.save`
with the model as it stands at the point (under WSD: after the point's cooldown branch, see
`pipelines.training.schedule`); the family's runner writes it, in the family's own format, to
`<points_dir>/<label>/model` with `point.json` beside it (step, tokens seen, FLOPs, how it was
made). `branch` is how the cooldown leaves the main run untouched: weights, optimizer and RNG
come back exactly as they were.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from storage.atomic import atomic_dir, write_json

POINT_FILE = "point.json"


@dataclass(frozen=True)
class PointInfo:
    """What a snapshot is: its label, the optimizer steps (epochs for word2vec) and tokens it
    trained on (its cooldown included), their FLOPs, and how it was annealed."""

    point: str
    pretrain_step: int
    tokens_seen: int
    flops: float
    cooldown_steps: int
    schedule: str  # wsd | cosine | word2vec-linear


@dataclass(frozen=True)
class PointPlan:
    """The points a run keeps: {step: label}, and how the family saves its model."""

    steps: dict[int, str]
    save: Callable[[Any, PointInfo], None]


@contextmanager
def branch(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Train freely inside; afterwards the model, the optimizer and the CPU RNG are as before."""
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state = copy.deepcopy(optimizer.state_dict())
    rng = torch.get_rng_state()
    try:
        yield
    finally:
        model.load_state_dict(weights)
        optimizer.load_state_dict(state)
        torch.set_rng_state(rng)


def write_point(
    points_dir: Path, info: PointInfo, save_model: Callable[[Path], None]
) -> Path:
    """`<points_dir>/<label>/model` written atomically by `save_model(tmp)`, then point.json."""
    where = Path(points_dir) / info.point
    with atomic_dir(where / "model") as tmp:
        save_model(tmp)
    write_json(where / POINT_FILE, asdict(info))
    return where


def read_points(points_dir: Path) -> list[tuple[PointInfo, Path]]:
    """Every complete snapshot under `points_dir` (its info, its model directory), in step
    order; a directory without point.json is an interrupted write and is skipped."""
    found = []
    for record in sorted(Path(points_dir).glob(f"*/{POINT_FILE}")):
        info = PointInfo(**json.loads(record.read_text()))
        if (record.parent / "model").is_dir():
            found.append((info, record.parent / "model"))
    return sorted(found, key=lambda item: item[0].pretrain_step)
