"""Readings built on the paired statistics: convergence (issue 15), label-equivalents and
break-even (issue 16). Each rule is a module constant the report prints verbatim.

Pure functions on numbers: dev curves as [(step, score)], scores keyed by seed, budgets and
pretraining points as numbers (the report maps a budget of "all" to its label count).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from pipelines.report.stats import (
    ALPHA,
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    CONFIDENCE,
    CellVerdict,
    Comparison,
    Insufficient,
    MeanInterval,
    Verdict,
    holm,
    t_interval,
)
from pipelines.transfer.protocol import GAIN_SHARE, still_improving, tail_improvement
from pretrainlab.config import PretrainlabError

CONVERGENCE_RULE = """\
**Convergence.** A run's dev curve is its evaluations in step order (higher is better). Its \
*gain* is its best dev score minus its first evaluation's. *Steps to 95% of the gain* is the \
step of the first evaluation scoring at least first + 0.95 × gain (read at evaluation \
resolution, not interpolated); the cell shows its mean over seeds with a 95% t interval. A run \
is *converged* when early stopping ended it (no new best in `patience` evaluations); otherwise \
it is *not converged* when it was still improving in its last fifth: some evaluation among the \
last ⌈k/5⌉ of its k evaluations beats every earlier evaluation by more than 5% of the gain and \
by more than one dev item's worth of score (1 / dev items: a single flipped item is not \
learning). Each run stores this flag when it trains (`protocol.still_improving`, the one \
implementation); curves without a stored flag are read the same way, without the one-item \
floor. A run with fewer than 2 evaluations is not converged. A cell with any run not converged \
is marked, and its steps are a lower bound.
"""

LABEL_EQUIVALENT_RULE = f"""\
**Label-equivalents.** For a pretrained cell at N labels: the scratch score curve (mean over \
seeds at each budget of the numeric grid) is interpolated linearly in log(labels) to the \
pretrained cell's mean score, at the first budget where scratch reaches it. A cell below scratch \
at the smallest budget reads "< smallest budget"; a cell above scratch at every budget reads \
"> largest budget" (censored, never extrapolated). The 95% interval resamples seeds (the same \
seeds for both curves, {BOOTSTRAP_RESAMPLES:,} resamples, seeded); with few seeds it is coarse.
"""

BREAK_EVEN_RULE = """\
**Break-even.** For a family, task and label budget: each pretraining point is a cell paired \
against scratch (the same seeds). Holm's correction runs over the points; the break-even point \
is the least pretraining (tokens or FLOPs) whose cell is *better* than scratch after it, and \
"not reached" when none is.
"""


# ---------------------------------------------------------------------------- convergence


@dataclass(frozen=True)
class Convergence:
    """One run's dev curve read by `CONVERGENCE_RULE`.

    `tail_improvement` is the best score of the last fifth minus the best before it (<= 0 when
    the last fifth sets no new best).
    """

    converged: bool
    steps_to_gain: int  # step of the first evaluation reaching first + 95% of the gain
    first: float
    best: float
    best_step: int
    evaluations: int
    tail_improvement: float

    @property
    def gain(self) -> float:
        return self.best - self.first


@dataclass(frozen=True)
class ConvergenceSummary:
    """A cell's runs: steps to 95% of the gain over seeds, and how many runs converged."""

    steps: MeanInterval
    n_converged: int

    @property
    def all_converged(self) -> bool:
        return self.n_converged == self.steps.n


def convergence(curve: Sequence[tuple[int, float]], *, min_delta: float = 0.0) -> Convergence:
    """Read one run's dev curve [(step, score)] by `CONVERGENCE_RULE`.

    `min_delta` is an absolute tolerance in score units (pass 1 / dev size, so one flipped dev
    example never counts as improvement).
    """
    if not curve:
        raise ValueError("convergence needs at least one dev evaluation")
    points = sorted(curve)
    steps = [int(s) for s, _ in points]
    scores = np.array([float(v) for _, v in points])
    first, best_i = float(scores[0]), int(np.argmax(scores))  # argmax: earliest of equal bests
    best = float(scores[best_i])
    threshold = first + GAIN_SHARE * (best - first)
    reached = int(np.argmax(scores >= threshold - 1e-12))
    values = scores.tolist()
    return Convergence(not still_improving(values, min_delta), steps[reached], first, best,
                       steps[best_i], len(values), tail_improvement(values))


def summarise_convergence(runs: Sequence[Convergence]) -> ConvergenceSummary:
    """Steps to 95% of the gain over a cell's runs (one per seed), with a 95% t interval."""
    if not runs:
        raise ValueError("summarise_convergence needs at least one run")
    steps = t_interval([r.steps_to_gain for r in runs])
    return ConvergenceSummary(steps, sum(r.converged for r in runs))


# ------------------------------------------------------------------------ label-equivalents


@dataclass(frozen=True)
class Bound:
    """A number of scratch labels: `value` itself, or below/above the grid (`side` < or >)."""

    value: float
    side: Literal["=", "<", ">"]

    def text(self) -> str:
        number = f"{self.value:,.0f}"
        return number if self.side == "=" else f"{self.side} {number}"


@dataclass(frozen=True)
class LabelEquivalent:
    """Scratch labels matching a pretrained cell at `labels`, by `LABEL_EQUIVALENT_RULE`.

    `low`/`high` bound the 95% interval over seeds; None with fewer than 2 seeds.
    """

    labels: float
    estimate: Bound
    low: Bound | None
    high: Bound | None
    seeds: tuple[int, ...]

    @property
    def ratio(self) -> float | None:
        """Scratch labels per pretrained label, when the estimate lies inside the grid."""
        return self.estimate.value / self.labels if self.estimate.side == "=" else None

    def text(self) -> str:
        if self.low is None or self.high is None:
            return self.estimate.text()
        return f"{self.estimate.text()} (95%: {self.low.text()} to {self.high.text()})"


def _read(budgets: np.ndarray, scratch: np.ndarray, target: float) -> float:
    """log(labels) at which the scratch curve first reaches `target`; -inf below, +inf above."""
    log_b = np.log(budgets)
    if target < scratch[0]:
        return -math.inf
    reached = np.nonzero(scratch >= target)[0]
    if len(reached) == 0:
        return math.inf
    j = int(reached[0])
    if j == 0:
        return float(log_b[0])
    share = (target - scratch[j - 1]) / (scratch[j] - scratch[j - 1])
    return float(log_b[j - 1] + share * (log_b[j] - log_b[j - 1]))


def _bound(log_labels: float, budgets: np.ndarray) -> Bound:
    if log_labels == -math.inf:
        return Bound(float(budgets[0]), "<")
    if log_labels == math.inf:
        return Bound(float(budgets[-1]), ">")
    return Bound(float(math.exp(log_labels)), "=")


def _scratch_grid(
    scratch: Mapping[int, Mapping[float, float]], seeds: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Budgets every seed ran (ascending) and the seeds × budgets score table."""
    budgets = sorted(set.intersection(*(set(scratch[s]) for s in seeds)))
    if len(budgets) < 2 or budgets[0] <= 0:
        raise PretrainlabError(
            f"label-equivalents need scratch scores at 2 or more positive label budgets shared "
            f"by every seed, got {budgets}: declare a numeric budget grid (e.g. 25, 50, 100, "
            "200) in the spec's transfer budgets"
        )
    table = np.array([[scratch[s][b] for b in budgets] for s in seeds], dtype=float)
    return np.array(budgets, dtype=float), table


def label_equivalent(
    scratch: Mapping[int, Mapping[float, float]],
    pretrained: Mapping[int, float],
    labels: float,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> LabelEquivalent:
    """How many scratch labels match a pretrained cell scoring `pretrained` at `labels` labels.

    `scratch` maps a seed to {label budget: score}; `pretrained` maps a seed to the cell's
    score. Only seeds present in both are used. Deterministic for a given `seed`.
    """
    seeds = tuple(sorted(set(scratch) & set(pretrained)))
    if not seeds:
        raise PretrainlabError(
            "label-equivalents need scratch and pretrained runs with a seed in common; "
            "run both arms with the same transfer seeds"
        )
    budgets, table = _scratch_grid(scratch, seeds)
    target = np.array([pretrained[s] for s in seeds], dtype=float)
    estimate = _bound(_read(budgets, table.mean(axis=0), float(target.mean())), budgets)
    if len(seeds) < 2:
        return LabelEquivalent(labels, estimate, None, None, seeds)
    rng = np.random.default_rng(seed)
    n = len(seeds)
    weights = rng.multinomial(n, np.full(n, 1 / n), size=resamples) / n  # resamples × seeds
    curves, targets = weights @ table, weights @ target
    readings = np.array([_read(budgets, c, float(t)) for c, t in zip(curves, targets, strict=True)])
    tail = (1 - CONFIDENCE) / 2
    # inverted_cdf picks observed readings, so censored (infinite) ones never get interpolated
    low, high = np.quantile(readings, [tail, 1 - tail], method="inverted_cdf")
    return LabelEquivalent(labels, estimate, _bound(low, budgets), _bound(high, budgets), seeds)


# ------------------------------------------------------------------------------ break-even


@dataclass(frozen=True)
class BreakEven:
    """The least pretraining at which a family beats scratch, by `BREAK_EVEN_RULE`.

    `point` is None when not reached. `verdicts` holds every point's Holm-adjusted verdict
    (pretrained minus scratch), in ascending order of pretraining.
    """

    point: float | None
    unit: str
    verdicts: tuple[tuple[float, CellVerdict], ...]

    def text(self) -> str:
        return "not reached" if self.point is None else f"{self.point:,.3g} {self.unit}"


def break_even(
    points: Mapping[float, Comparison | Insufficient], *, unit: str, alpha: float = ALPHA
) -> BreakEven:
    """Break-even from {pretraining amount: comparison of pretrained minus scratch}.

    Each comparison comes from `paired_t` with the pretrained arm first; `unit` names the
    amount ("tokens", "FLOPs") for the text.
    """
    verdicts = holm(dict(sorted(points.items())), alpha=alpha)
    better = [p for p, v in verdicts.items() if v.verdict == Verdict.BETTER]
    return BreakEven(min(better) if better else None, unit, tuple(verdicts.items()))
