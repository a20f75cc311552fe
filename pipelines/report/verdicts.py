"""Claims judged by the paired rule (`stats.RULE`): each claim's cells compared seed by seed,
Holm's correction over them (`stats.claim_verdict`), one outcome per claim, a table row per
cell, and a pilot line saying how many seeds would decide the claim (`stats.seeds_needed`).

A cell pairs two arms by seed (`stats.paired_t`, which decides); where the store kept per-item
predictions of both arms and the headline is a mean over items (accuracy), the paired bootstrap
over examples × seeds is shown beside it, never deciding.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pipelines.report.scores import Data, ScoreKey
from pipelines.report.stats import (
    ClaimVerdict,
    Comparison,
    Insufficient,
    Outcome,
    Verdict,
    claim_verdict,
    paired_bootstrap,
    paired_t,
    seeds_needed,
)
from pretrainlab.config import PretrainlabError

CELL_HEADERS = [
    "claim", "cell", "seeds", "diff", "95% t interval", "p (Holm)", "verdict",
    "min. detectable", "bootstrap 95% (not deciding)", "converged",
]  # fmt: skip


Words = Mapping[Verdict, str]  # how a claim names better / worse (e.g. "more steps")


@dataclass(frozen=True)
class Cell:
    """One comparison of a claim: first arm minus second, paired by seed."""

    label: str
    a_mean: float
    b_mean: float
    comparison: Comparison | Insufficient
    bootstrap: Comparison | Insufficient | None = None  # None: no per-item predictions
    unconverged: bool = False  # a run of either arm still improving at its end


def _mean(seeds: Mapping[int, float]) -> float:
    return sum(seeds.values()) / len(seeds) if seeds else math.nan


def seeds_cell(
    label: str, a: Mapping[int, float], b: Mapping[int, float], unconverged: bool = False
) -> Cell:
    """A cell from two {seed: value} maps (a score, steps to converge)."""
    return Cell(label, _mean(a), _mean(b), paired_t(a, b), None, unconverged)


def score_cell(data: Data, label: str, a: ScoreKey, b: ScoreKey) -> Cell:
    """Two headline cells of the score table, paired by seed; the bootstrap beside it."""
    cell = seeds_cell(label, data.seeds(a), data.seeds(b),
                      a in data.unconverged or b in data.unconverged)  # fmt: skip
    items_a, items_b = data.items(a), data.items(b)
    if not (items_a and items_b):
        return cell
    try:
        boot = paired_bootstrap(items_a, items_b)
    except PretrainlabError:  # the arms were scored on different test items: no reading
        return cell
    return Cell(cell.label, cell.a_mean, cell.b_mean, cell.comparison, boot, cell.unconverged)


@dataclass(frozen=True)
class Judged:
    """A claim's cells and its verdict by the rule."""

    cells: list[Cell]
    verdict: ClaimVerdict
    outcome: Outcome


def judge(cells: Sequence[Cell], sign: int = 1) -> Judged:
    """Outcome by `stats.RULE`. `sign` is the claimed direction (+1: first arm higher, -1:
    lower); 0 claims a difference either way (supported when any cell differs)."""
    verdict = claim_verdict({c.label: c.comparison for c in cells}, sign=sign or 1)
    outcome = verdict.outcome
    if sign == 0:
        differs = verdict.n_for + verdict.n_against > 0
        outcome = Outcome.SUPPORTED if differs else Outcome.INCONCLUSIVE
    return Judged(list(cells), verdict, outcome)


def _interval(c: Comparison | Insufficient | None, digits: int) -> str:
    if not isinstance(c, Comparison):
        return "–"
    return f"[{c.low:+.{digits}f}, {c.high:+.{digits}f}]"


def _word(verdict: Verdict, words: Words | None) -> str:
    return (words or {}).get(verdict, verdict.value)


def cell_text(cell: Cell, judged: Judged, digits: int = 3, words: Words | None = None) -> str:
    """`label a vs b, diff [low, high] verdict` for the claim's line."""
    v = judged.verdict.cells[cell.label]
    numbers = f"{cell.label} {cell.a_mean:.{digits}f} vs {cell.b_mean:.{digits}f}"
    if not isinstance(cell.comparison, Comparison):
        return f"{numbers}, {cell.a_mean - cell.b_mean:+.{digits}f}, {_word(v.verdict, words)}"
    flag = ", not converged" if cell.unconverged else ""
    return (
        f"{numbers}, {cell.comparison.diff:+.{digits}f} "
        f"{_interval(cell.comparison, digits)} {_word(v.verdict, words)}{flag}"
    )


def cell_rows(
    claim: str, judged: Judged, digits: int = 3, words: Words | None = None
) -> list[list[str]]:
    """The claim's rows of the paired-cell table (`CELL_HEADERS`)."""
    rows = []
    for cell in judged.cells:
        v = judged.verdict.cells[cell.label]
        c = cell.comparison
        tested = isinstance(c, Comparison)
        boot = cell.bootstrap
        rows.append([
            claim, cell.label, str(c.n),
            f"{c.diff:+.{digits}f}" if tested else f"{cell.a_mean - cell.b_mean:+.{digits}f}",
            _interval(c, digits),
            "–" if v.p_adjusted is None else f"{v.p_adjusted:.3g}",
            _word(v.verdict, words),
            "–" if v.mde is None else f"{v.mde:.{digits}f}",
            _interval(boot, digits) if isinstance(boot, Comparison) else "n/a",
            "no" if cell.unconverged else "yes",
        ])  # fmt: skip
    return rows


def pilot(judged: Judged, unit: str = "") -> str:
    """How many seeds would detect the claim's smallest observed non-zero |diff|, read as a
    pilot, and whether this run's seeds can decide the claim."""
    tested = [c for c in judged.cells if isinstance(c.comparison, Comparison)]
    if not tested:
        return "fewer than 2 paired seeds in every cell: this run's size cannot decide it."
    moved = [c for c in tested if abs(c.comparison.diff) >= 1e-12]
    if not moved:
        return "no cell's arms differ at all: nothing to size a run by."
    smallest = min(moved, key=lambda c: abs(c.comparison.diff))
    comp = smallest.comparison
    assert isinstance(comp, Comparison)
    plan = seeds_needed(abs(comp.diff), sd=comp.sd)
    have = min(c.comparison.n for c in tested)
    decides = "this run's seeds can detect it" if have >= plan.seeds else (
        "this run's size cannot decide it")
    return (
        f"the smallest observed |diff|, {abs(comp.diff):.3g}{unit} ({smallest.label}, sd "
        f"{comp.sd:.3g} over seeds), needs {plan.seeds} seeds to detect at 80% power "
        f"(this run: {have}); {decides}."
    )
