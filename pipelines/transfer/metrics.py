"""How a transfer run is scored: accuracy, macro F1, and span F1 for BIO tag sets (CoNLL's
chunk rules), and which of them is a task's headline metric (the one early stopping, the rate
grid, the report's claims and rankings read)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from sklearn.metrics import f1_score

if TYPE_CHECKING:
    from pipelines.data.task_data import TaskData


def _chunk_end(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    return (
        prev_tag in ("E", "S")
        or (prev_tag in ("B", "I") and tag in ("B", "S", "O"))
        or (prev_tag not in ("O", ".") and prev_type != type_)
    )


def _chunk_start(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    return (
        tag in ("B", "S")
        or (prev_tag in ("E", "S", "O") and tag in ("E", "I"))
        or (tag not in ("O", ".") and prev_type != type_)
    )


def spans(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """(type, first, last) entity spans of a BIO/BIOES sequence, read as seqeval's default
    (conlleval) mode reads it: an I- after O or after another type starts a span."""
    found, prev_tag, prev_type, begin = set(), "O", "", 0
    for i, chunk in enumerate([*tags, "O"]):
        tag = chunk[0] if chunk else "O"
        type_ = chunk[1:].split("-", maxsplit=1)[-1] or "_"
        if _chunk_end(prev_tag, tag, prev_type, type_):
            found.add((prev_type, begin, i - 1))
        if _chunk_start(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return found


def span_f1(true: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> float:
    """Micro span F1 over sentences, as `seqeval.metrics.f1_score` computes it."""
    n_true = n_pred = n_correct = 0
    for t, p in zip(true, pred, strict=True):
        gold, guess = spans(t), spans(p)
        n_true, n_pred, n_correct = (
            n_true + len(gold),
            n_pred + len(guess),
            n_correct + len(gold & guess),
        )
    precision = n_correct / n_pred if n_pred else 0.0
    recall = n_correct / n_true if n_true else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def is_bio(labels: Sequence[str]) -> bool:
    """A tag set of entity spans: every tag O or X-TYPE with X in B/I/E/S, some not O."""
    return any(t != "O" for t in labels) and all(
        t == "O" or (len(t) > 2 and t[0] in "BIES" and t[1] == "-") for t in labels
    )


def score_split(
    task: TaskData, gold: np.ndarray, pred: np.ndarray, item_offsets: np.ndarray
) -> dict[str, float]:
    metrics = {
        "accuracy": float((gold == pred).mean()) if len(gold) else 0.0,
        "macro_f1": float(f1_score(gold, pred, average="macro", zero_division=0)),
    }
    if task.kind == "tag" and is_bio(task.labels):
        names = np.asarray(task.labels + task.unseen)
        cuts = list(itertools.pairwise(item_offsets))
        metrics["span_f1"] = span_f1(
            [list(names[gold[a:b]]) for a, b in cuts], [list(names[pred[a:b]]) for a, b in cuts]
        )
    return metrics


def headline(task: TaskData) -> str:
    """The metric a task is judged by: span F1 for BIO tag sets, else accuracy."""
    return "span_f1" if task.kind == "tag" and is_bio(task.labels) else "accuracy"
