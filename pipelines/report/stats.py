"""Paired statistics for report cells and claims (issue 15): one rule, written once in `RULE`.

A *cell* compares two arms (e.g. frozen vs scratch on POS at 50 labels) that ran with the same
seeds; a seed fixes the labelled subset and the head initialisation, so the arms are compared
pair by pair. `paired_t` is the test that decides a verdict; `paired_bootstrap` (over test
examples × seeds, from per-example scores) is a second reading shown beside it. `cell_verdict`
turns a comparison into *better* / *worse* / *no detectable difference* with the smallest
difference the design could detect; `claim_verdict` applies Holm's correction over a claim's
cells. `seeds_needed` sizes a run from a pilot. Pure functions on numbers: no I/O.

References: Holm (1979) for the step-down correction; Owen (2007), "The pigeonhole bootstrap",
for resampling both axes of a seeds × examples table; Dror et al. (2018) on significance
testing in NLP.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from pretrainlab.config import PretrainlabError

ALPHA = 0.05  # two-sided significance level of every test
POWER = 0.80  # power at which the minimum detectable effect and seed counts are computed
CONFIDENCE = 0.95  # level of every interval
MIN_SEEDS = 2  # a paired comparison over fewer seeds gets no verdict
SIGN_TEST_SEEDS = next(n for n in range(2, 64) if 2.0 ** (1 - n) < ALPHA)  # 6 at 0.05
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0

K = TypeVar("K")  # a cell's key: a label the report prints, or a pretraining point

RULE = f"""\
**How verdicts are reached.** Each cell compares two arms run with the same seeds (a seed \
fixes the labelled subset and the head initialisation), on the task's headline metric, so the \
comparison is paired by seed: the per-seed differences (first arm minus second) give a mean \
difference, its {CONFIDENCE:.0%} t interval and a two-sided paired t-test p-value. When every \
seed gives the same difference (zero variance, e.g. step counts read at evaluation resolution) \
the t statistic is undefined, and the p-value is the exact sign test's, 2^(1-n) for n seeds: \
no seed count below {SIGN_TEST_SEEDS} can make it significant. A cell with fewer than \
{MIN_SEEDS} seeds gets no verdict. A paired bootstrap over test examples × \
seeds ({BOOTSTRAP_RESAMPLES:,} resamples, seeded) is shown beside it: it also counts test-set \
sampling noise, but with few seeds it underestimates seed-to-seed variance, so it never \
decides a verdict.

*Cell*: **better** (or **worse**) when the p-value, after Holm's correction over the cells of \
its claim, is below {ALPHA} and the mean difference is positive (or negative); otherwise \
**no detectable difference**. Beside it, the *minimum detectable effect*: the difference a \
two-sided paired t-test at α = {ALPHA} would detect with {POWER:.0%} power, given the cell's \
number of seeds and the observed sd of its paired differences. It is not a claim of \
equivalence: a true difference smaller than it may well exist.

*Claim*: Holm's correction over the claim's cells that have at least {MIN_SEEDS} seeds. \
**supported** = at least one cell significant in the claimed direction and none against it; \
**contradicted** = at least one cell significant against it and none for it; **mixed** = \
significant cells both ways; **inconclusive** = no significant cell (also when no cell has \
{MIN_SEEDS} seeds).
"""


class Method(StrEnum):
    """Which test produced a comparison; the report prints it beside each verdict."""

    PAIRED_T = "paired t over seeds"
    BOOTSTRAP = "paired bootstrap over examples × seeds"


class Verdict(StrEnum):
    """Outcome of one cell (first arm against second)."""

    BETTER = "better"
    WORSE = "worse"
    NO_DIFFERENCE = "no detectable difference"
    INSUFFICIENT = "no verdict (fewer than 2 seeds)"


class Outcome(StrEnum):
    """Outcome of one claim over its cells."""

    SUPPORTED = "supported"
    CONTRADICTED = "contradicted"
    MIXED = "mixed"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class Comparison:
    """First arm minus second arm of one cell, paired by seed.

    `diff` is the mean paired difference, [`low`, `high`] its 95% interval, `p` the two-sided
    p-value against no difference. `sd` is the sd (ddof 1) over seeds of the per-seed
    differences, which the minimum detectable effect uses. `n_examples` is set by the bootstrap.
    """

    method: Method
    seeds: tuple[int, ...]
    diff: float
    low: float
    high: float
    p: float
    sd: float
    n_examples: int | None = None

    @property
    def n(self) -> int:
        return len(self.seeds)


@dataclass(frozen=True)
class Insufficient:
    """A comparison that cannot be made: fewer than `MIN_SEEDS` seeds common to both arms."""

    method: Method
    seeds: tuple[int, ...]
    reason: str

    @property
    def n(self) -> int:
        return len(self.seeds)


@dataclass(frozen=True)
class CellVerdict:
    """A cell's verdict and what it rests on.

    `p_adjusted` is the Holm-adjusted p-value within a claim (equal to the raw p outside one,
    None when insufficient). `mde` is the minimum detectable effect in metric units (not an
    equivalence margin); None when insufficient.
    """

    verdict: Verdict
    comparison: Comparison | Insufficient
    p_adjusted: float | None
    mde: float | None

    @property
    def method(self) -> Method:
        """The test the verdict rests on, for the report to print beside it."""
        return self.comparison.method


@dataclass(frozen=True)
class ClaimVerdict:
    """A claim's outcome, its cells' Holm-adjusted verdicts (keyed as given) and the counts."""

    outcome: Outcome
    cells: Mapping[str, CellVerdict]
    n_for: int
    n_against: int
    n_tested: int  # cells with at least MIN_SEEDS seeds, the family Holm corrects over


@dataclass(frozen=True)
class SeedPlan:
    """Seeds a paired comparison needs to detect `target` with `power` at `alpha` (two-sided)."""

    seeds: int
    target: float
    sd: float
    effect_size: float  # target / sd (Cohen's d of the paired differences)
    alpha: float
    power: float


@dataclass(frozen=True)
class MeanInterval:
    """A mean over seeds with its 95% t interval (`low`/`high` None with fewer than 2 values)."""

    mean: float
    low: float | None
    high: float | None
    n: int


def t_interval(values: Sequence[float]) -> MeanInterval:
    """Mean of `values` and its 95% t interval (scipy `t.interval`); collapses when all agree."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        raise ValueError("t_interval needs at least one value")
    mean = float(x.mean())
    if len(x) < MIN_SEEDS:
        return MeanInterval(mean, None, None, len(x))
    if _is_constant(x):
        return MeanInterval(mean, mean, mean, len(x))
    low, high = stats.t.interval(CONFIDENCE, df=len(x) - 1, loc=mean, scale=stats.sem(x))
    return MeanInterval(mean, float(low), float(high), len(x))


def _common_seeds(a: Mapping[int, object], b: Mapping[int, object]) -> tuple[int, ...]:
    """Seeds both arms ran: only those pair (a seed run in one arm only has no partner)."""
    return tuple(sorted(set(a) & set(b)))


def _is_constant(values: np.ndarray) -> bool:
    """True when all values are equal up to float noise (scipy's moments lose precision there)."""
    return bool(np.ptp(values) <= 1e-12 * max(1.0, float(np.max(np.abs(values)))))


def paired_t(a: Mapping[int, float], b: Mapping[int, float]) -> Comparison | Insufficient:
    """Paired t-test of arm `a` against arm `b`, each a {seed: score} map (scipy `ttest_rel`).

    Pairs on the seeds both arms ran. When every seed gives the same difference the t statistic
    is undefined: p is the exact two-sided sign test's (scipy `binomtest`: 2^(1-n), so 2 or 3
    identical differences are never significant; 1 if that difference is 0) and the interval
    collapses to it.
    """
    seeds = _common_seeds(a, b)
    if len(seeds) < MIN_SEEDS:
        return Insufficient(Method.PAIRED_T, seeds, f"{len(seeds)} paired seed(s), need 2")
    x = np.array([a[s] for s in seeds], dtype=float)
    y = np.array([b[s] for s in seeds], dtype=float)
    d = x - y
    mean = float(d.mean())
    if _is_constant(d):
        n = len(seeds)
        p = 1.0 if abs(mean) <= 1e-12 else float(stats.binomtest(n, n, 0.5).pvalue)
        return Comparison(Method.PAIRED_T, seeds, mean, mean, mean, p, 0.0)
    res = stats.ttest_rel(x, y)
    ci = res.confidence_interval(CONFIDENCE)
    return Comparison(
        Method.PAIRED_T,
        seeds,
        mean,
        float(ci.low),
        float(ci.high),
        float(res.pvalue),
        float(d.std(ddof=1)),
    )


def _difference_table(
    a: Mapping[int, ArrayLike], b: Mapping[int, ArrayLike], seeds: tuple[int, ...]
) -> np.ndarray:
    """Seeds × examples table of per-example differences; every row must cover the same examples."""
    rows = []
    for s in seeds:
        x, y = np.asarray(a[s], dtype=float), np.asarray(b[s], dtype=float)
        if x.shape != y.shape or x.ndim != 1:
            raise PretrainlabError(
                f"per-example scores for seed {s} have shapes {x.shape} and {y.shape}: both arms "
                "must be scored on the same test examples; re-run transfer for this cell"
            )
        rows.append(x - y)
    if len({len(r) for r in rows}) > 1:
        raise PretrainlabError(
            "per-example scores cover a different number of test examples across seeds "
            f"({sorted({len(r) for r in rows})}): every seed must be tested on the same test "
            "split; re-run transfer so the rows share one task data fingerprint"
        )
    return np.vstack(rows)


def _crossed_resamples(
    d: np.ndarray, resamples: int, rng: np.random.Generator, chunk: int = 500
) -> np.ndarray:
    """Means of `d` with seeds and examples resampled independently (Owen's pigeonhole bootstrap).

    A resample's mean is w_seeds · d · w_examples / (S·E), with w the multinomial counts of
    each index, so no resampled table is materialised.
    """
    n_seeds, n_examples = d.shape
    out = np.empty(resamples)
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        w_seed = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=size)
        w_example = rng.multinomial(n_examples, np.full(n_examples, 1 / n_examples), size=size)
        out[start : start + size] = ((w_seed @ d) * w_example).sum(axis=1)
    return out / (n_seeds * n_examples)


def paired_bootstrap(
    a: Mapping[int, ArrayLike],
    b: Mapping[int, ArrayLike],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> Comparison | Insufficient:
    """Paired bootstrap of `a` against `b` over test examples × seeds, seeded and deterministic.

    `a` and `b` map a seed to that run's per-example scores on the test split (0/1 correctness
    or a per-example score), in the same example order in both arms. Seeds and examples are
    resampled independently (scipy's `bootstrap` resamples one axis only). The interval is the
    percentile interval; the two-sided p-value is the share of resampled differences at least
    as far from the observed one as the observed one is from 0 (the null-shifted bootstrap
    test, with the add-one correction so it is never 0).
    """
    seeds = _common_seeds(a, b)
    if len(seeds) < MIN_SEEDS:
        return Insufficient(Method.BOOTSTRAP, seeds, f"{len(seeds)} paired seed(s), need 2")
    d = _difference_table(a, b, seeds)
    observed = float(d.mean())
    boot = _crossed_resamples(d, resamples, np.random.default_rng(seed))
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(boot, [tail, 1 - tail])
    extreme = int(np.sum(np.abs(boot - observed) >= abs(observed) - 1e-12))
    p = (1 + extreme) / (resamples + 1)
    per_seed = d.mean(axis=1)
    sd = 0.0 if _is_constant(per_seed) else float(per_seed.std(ddof=1))
    return Comparison(
        Method.BOOTSTRAP,
        seeds,
        observed,
        float(low),
        float(high),
        float(min(p, 1.0)),
        sd,
        n_examples=d.shape[1],
    )


def minimum_detectable_effect(
    n: int, sd: float, *, alpha: float = ALPHA, power: float = POWER
) -> float:
    """Smallest true mean difference a two-sided paired t-test on `n` seeds detects with `power`.

    statsmodels `TTestPower` gives it as a standardised effect; times the observed `sd` of the
    paired differences it is in metric units. Not an equivalence bound.
    """
    if n < MIN_SEEDS:
        raise ValueError(f"minimum detectable effect needs at least {MIN_SEEDS} seeds, got {n}")
    d = TTestPower().solve_power(
        effect_size=None, nobs=n, alpha=alpha, power=power, alternative="two-sided"
    )
    return float(d) * sd


def cell_verdict(
    comparison: Comparison | Insufficient, p: float | None = None, *, alpha: float = ALPHA
) -> CellVerdict:
    """*better* / *worse* / *no detectable difference* for one cell, or no verdict.

    `p` overrides the comparison's own p-value (`claim_verdict` passes the Holm-adjusted one).
    The direction is the sign of the mean difference (first arm minus second). The minimum
    detectable effect is the paired-t figure at `alpha` before Holm (a bootstrap comparison
    gets the same figure from the sd of its per-seed differences); within a claim, Holm makes
    the true threshold larger.
    """
    if isinstance(comparison, Insufficient):
        return CellVerdict(Verdict.INSUFFICIENT, comparison, None, None)
    p = comparison.p if p is None else p
    if p < alpha and comparison.diff > 0:
        verdict = Verdict.BETTER
    elif p < alpha and comparison.diff < 0:
        verdict = Verdict.WORSE
    else:
        verdict = Verdict.NO_DIFFERENCE
    mde = minimum_detectable_effect(comparison.n, comparison.sd, alpha=alpha)
    return CellVerdict(verdict, comparison, p, mde)


def holm(
    cells: Mapping[K, Comparison | Insufficient], *, alpha: float = ALPHA
) -> dict[K, CellVerdict]:
    """Cell verdicts with Holm's correction over the cells that have a comparison.

    Insufficient cells keep no verdict and do not enlarge the family. Keys and order are kept.
    """
    tested = {k: c.p for k, c in cells.items() if isinstance(c, Comparison)}
    adjusted: dict[K, float] = {}
    if tested:
        _, p_holm, _, _ = multipletests(list(tested.values()), alpha=alpha, method="holm")
        adjusted = {k: float(p) for k, p in zip(tested, p_holm, strict=True)}
    return {k: cell_verdict(c, adjusted.get(k), alpha=alpha) for k, c in cells.items()}


def claim_verdict(
    cells: Mapping[str, Comparison | Insufficient], *, sign: int = 1, alpha: float = ALPHA
) -> ClaimVerdict:
    """A claim's outcome by `RULE` from its cells (each keyed by a label the report prints).

    `sign` is the claimed direction of every cell's difference: +1 when the claim says the
    first arm scores higher, -1 when it says lower.
    """
    if sign not in (1, -1):
        raise ValueError(f"sign is the claimed direction, +1 or -1, got {sign}")
    verdicts = holm(cells, alpha=alpha)
    claimed = Verdict.BETTER if sign == 1 else Verdict.WORSE
    against = Verdict.WORSE if sign == 1 else Verdict.BETTER
    n_for = sum(v.verdict == claimed for v in verdicts.values())
    n_against = sum(v.verdict == against for v in verdicts.values())
    if n_for and n_against:
        outcome = Outcome.MIXED
    elif n_for:
        outcome = Outcome.SUPPORTED
    elif n_against:
        outcome = Outcome.CONTRADICTED
    else:
        outcome = Outcome.INCONCLUSIVE
    n_tested = sum(isinstance(c, Comparison) for c in cells.values())
    return ClaimVerdict(outcome, verdicts, n_for, n_against, n_tested)


def seeds_needed(
    target: float,
    *,
    sd: float | None = None,
    pilot: Sequence[float] | None = None,
    alpha: float = ALPHA,
    power: float = POWER,
) -> SeedPlan:
    """Seeds a paired comparison needs to detect a true difference of `target` (metric units).

    Give the sd of the paired differences, or `pilot`: the per-seed paired differences of a
    pilot run, whose sd (ddof 1) is used. A pilot of few seeds estimates the sd loosely; the
    answer is a planning figure, rounded up, never below 2 (statsmodels `TTestPower`).
    """
    if (sd is None) == (pilot is None):
        raise PretrainlabError(
            "seeds_needed: give either the sd of the paired differences or "
            "a pilot's per-seed differences, not both or neither"
        )
    if pilot is not None:
        if len(pilot) < MIN_SEEDS:
            raise PretrainlabError(
                f"a pilot needs at least {MIN_SEEDS} seeds to estimate the sd of the paired "
                f"differences, got {len(pilot)}: run the pilot with more seeds"
            )
        sd = float(np.std(np.asarray(pilot, dtype=float), ddof=1))
    assert sd is not None
    if target == 0 or not math.isfinite(target):
        raise PretrainlabError(f"the target difference must be a non-zero number, got {target}")
    if sd <= 0:  # differences that never vary: any non-zero difference shows with 2 seeds
        return SeedPlan(MIN_SEEDS, abs(target), 0.0, math.inf, alpha, power)
    effect = abs(target) / sd
    return SeedPlan(_least_seeds(effect, alpha, power), abs(target), sd, effect, alpha, power)


MAX_SEEDS_SEARCHED = 2**40  # a planning figure past this is "never", not a number to act on


def paired_power(effect: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t-test with `n` pairs at standardised `effect`: scipy's
    noncentral t (what statsmodels' `TTestPower` computes). Far in its tail scipy returns NaN
    (seen: noncentrality 9.4 at 1 degree of freedom); there the normal approximation of the
    noncentral t, with the t critical value, stands in."""
    df, noncentrality = n - 1, effect * math.sqrt(n)
    critical = float(stats.t.ppf(1 - alpha / 2, df))
    value = float(
        stats.nct.sf(critical, df, noncentrality) + stats.nct.cdf(-critical, df, noncentrality)
    )
    if math.isfinite(value):
        return value
    return float(
        stats.norm.sf(critical - noncentrality) + stats.norm.cdf(-critical - noncentrality)
    )


def _least_seeds(effect: float, alpha: float, power: float) -> int:
    """The least number of seeds (>= 2) whose paired t-test reaches `power` at `effect`, by
    searching the power function (monotone in n). statsmodels' `solve_power` root finder
    returned NaN where the answer lies just above 2 seeds (effect 6.6 sd, alpha 0.05)."""

    def enough(n: int) -> bool:
        return paired_power(effect, n, alpha) >= power

    low, high = MIN_SEEDS - 1, MIN_SEEDS  # invariant: low is not enough, high is (once found)
    while not enough(high):
        if high >= MAX_SEEDS_SEARCHED:
            return MAX_SEEDS_SEARCHED
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if enough(middle) else (middle, high)
    return high
