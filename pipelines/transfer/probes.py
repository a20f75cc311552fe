"""Per-layer linear probes a reviewer believes: each probe beside a control.

A probe's accuracy alone says little: a linear head on a wide layer can memorise word identity.
Hewitt & Liang (2019, "Designing and Interpreting Probes with Control Tasks") train the same
probe on a *control task* where every word type gets a fixed label drawn from the real task's
tag distribution; only memorisation of types solves it. *Selectivity* = accuracy − control
accuracy, both on test tokens whose types were seen in training (an unseen type's control label
cannot be learned, so counting it would flatter selectivity).

Per-type control is undefined for classification, pair and word-in-context tasks (no word
types carry the label): their probes report a *floor* instead, the better of the majority class
and a probe trained on shuffled train labels (same features, same protocol), and `above_floor`.

Every layer gets `relative_depth` = layer / top layer (0 = embeddings, 1 = top), so families of
different depth share an axis. The encoder runs once for all layers, probes and controls.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipelines.transfer.features import frozen_features
from pipelines.transfer.protocol import TransferConfig, cell_scope, check_config
from pipelines.transfer.runs import TransferResult, _run_frozen
from storage.hashing import sha256_bytes

if TYPE_CHECKING:
    from pipelines.data.task_data import Example, TaskData

CONTROL_SEED = 2019  # fixed: a type's control label never changes between runs or probe seeds


def tag_distribution(task: TaskData) -> np.ndarray:
    """P(tag) over the train tokens, in `task.labels` order: what control labels are drawn from."""
    counts = Counter(tag for ex in task.train for tag in ex.tags)
    total = sum(counts.values())
    return np.asarray([counts[label] / total for label in task.labels])


def control_label(word: str, labels: Sequence[str], cdf: np.ndarray) -> str:
    """The fixed control label of a word type: a draw from the tag distribution keyed by a hash
    of (CONTROL_SEED, type), so it depends on nothing else (not on the order types are met)."""
    u = int(sha256_bytes(f"{CONTROL_SEED}:{word}".encode())[:13], 16) / 16**13
    return labels[min(int(np.searchsorted(cdf, u, side="right")), len(labels) - 1)]


def control_task(task: TaskData) -> TaskData:
    """The tag task with every token's tag replaced by its type's control label."""
    cdf = np.cumsum(tag_distribution(task))
    memo: dict[str, str] = {}

    def relabel(ex: Example) -> Example:
        tags = tuple(memo.setdefault(w, control_label(w, task.labels, cdf)) for w in ex.words)
        return dataclasses.replace(ex, tags=tags)

    splits = {s: tuple(relabel(ex) for ex in getattr(task, s)) for s in ("train", "dev", "test")}
    return dataclasses.replace(task, **splits, fingerprint=f"{task.fingerprint}:control",
                               unseen=(), unseen_labels={})  # fmt: skip


def shuffled_task(task: TaskData) -> TaskData:
    """The task with its train labels permuted (fixed seed): dev and test keep the real ones."""
    order = np.random.default_rng(CONTROL_SEED).permutation(len(task.train))
    labels = [task.train[i].label for i in order]
    pairs = zip(task.train, labels, strict=True)
    train = tuple(dataclasses.replace(ex, label=y) for ex, y in pairs)
    return dataclasses.replace(task, train=train, fingerprint=f"{task.fingerprint}:shuffled")


def seen_mask(task: TaskData) -> np.ndarray:
    """Per test token: was its type seen in the train split?"""
    seen = {w for ex in task.train for w in ex.words}
    return np.asarray([w in seen for ex in task.test for w in ex.words], dtype=bool)


def _accuracy(result: TransferResult, mask: np.ndarray | None = None) -> float:
    gold = np.asarray(result.test_predictions.gold)
    pred = np.asarray(result.test_predictions.pred)
    right = gold == pred
    if mask is not None:
        right = right[mask]
    return float(right.mean()) if len(right) else float("nan")


def majority_accuracy(task: TaskData) -> float:
    """Test accuracy of always answering the most frequent train label."""
    top = Counter(ex.label for ex in task.train).most_common(1)[0][0]
    return float(np.mean([ex.label == top for ex in task.test]))


def _tag_layer(real: TransferResult, control: TransferResult, mask: np.ndarray) -> dict:
    seen, ctrl = _accuracy(real, mask), _accuracy(control, mask)
    return {"seen_accuracy": seen, "control_accuracy": ctrl, "selectivity": seen - ctrl,
            "seen_tokens": float(mask.sum())}  # fmt: skip


def _floor_layer(real: TransferResult, shuffled: TransferResult, majority: float) -> dict:
    floor = max(majority, _accuracy(shuffled))
    return {"majority_accuracy": majority, "shuffled_accuracy": _accuracy(shuffled),
            "floor": floor, "above_floor": _accuracy(real) - floor}  # fmt: skip


def probe_with_control(
    family: str,
    model_dir: Path,
    task: TaskData,
    config: TransferConfig,
    feature_cache: Path | None = None,
) -> dict[int, dict[str, float]]:
    """Per layer (0 = embeddings): the probe's test metrics (at its best dev evaluation), its
    control (tag tasks) or floor (the rest), and `relative_depth`. `config.seed` is the probe
    seed (head init and batch order); the control labels do not depend on it."""
    check_config(config)
    with cell_scope(config.seed, config.threads):  # the determinism contract of protocol.py
        arrays = frozen_features(family, model_dir, task, config.max_len, feature_cache)
        n_layers = arrays["train"].shape[2]
        tagged = task.kind == "tag"
        other = control_task(task) if tagged else shuffled_task(task)
        mask = seen_mask(task) if tagged else None
        majority = None if tagged else majority_accuracy(task)
        found: dict[int, dict[str, float]] = {}
        for layer in range(n_layers):
            real = _probe(task, config, arrays, layer)
            ctrl = _probe(other, config, arrays, layer)
            extra = _tag_layer(real, ctrl, mask) if mask is not None else _floor_layer(
                real, ctrl, float(majority))  # fmt: skip
            depth = layer / (n_layers - 1) if n_layers > 1 else 0.0
            found[layer] = {**real.test, **extra, "relative_depth": depth}
    return found


def _probe(task: TaskData, config: TransferConfig, arrays: dict[str, np.ndarray],
           layer: int) -> TransferResult:
    return _run_frozen(task, task.train, config, arrays, (layer,), None, time.perf_counter())
