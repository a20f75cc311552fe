"""Paired statistics and readings on constructed data with known answers (issues 15 and 16)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sp
from statsmodels.stats.power import TTestPower

from pipelines.report.readings import (
    Bound,
    break_even,
    convergence,
    label_equivalent,
    summarise_convergence,
)
from pipelines.report.stats import (
    RULE,
    Comparison,
    Insufficient,
    Method,
    Outcome,
    Verdict,
    cell_verdict,
    claim_verdict,
    holm,
    minimum_detectable_effect,
    paired_bootstrap,
    paired_power,
    paired_t,
    seeds_needed,
    t_interval,
)
from pretrainlab.config import PretrainlabError

SEEDS = range(5)


def _arms(shift: float, noise: float = 0.01, seed: int = 0) -> tuple[dict, dict]:
    """Two arms over 5 seeds sharing a per-seed base score (the shared labelled subset)."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.4, 0.7, size=5)  # seed-to-seed spread far above the paired noise
    a = {s: float(base[s] + shift + rng.normal(0, noise)) for s in SEEDS}
    b = {s: float(base[s] + rng.normal(0, noise)) for s in SEEDS}
    return a, b


def _cmp(diff: float, p: float, sd: float = 0.05, n: int = 5) -> Comparison:
    """A comparison with a chosen p-value, for testing the decision rules alone."""
    return Comparison(Method.PAIRED_T, tuple(range(n)), diff, diff - 0.1, diff + 0.1, p, sd)


# --------------------------------------------------------------------------- paired t


def test_paired_t_matches_the_textbook_numbers() -> None:
    a, b = {0: 0.5, 1: 0.6, 2: 0.7}, {0: 0.4, 1: 0.5, 2: 0.55}
    c = paired_t(a, b)
    d = np.array([0.1, 0.1, 0.15])
    t = d.mean() / (d.std(ddof=1) / math.sqrt(3))
    half = sp.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
    assert isinstance(c, Comparison) and c.method == Method.PAIRED_T
    assert c.diff == pytest.approx(d.mean())
    assert c.p == pytest.approx(2 * sp.t.sf(t, 2))
    assert (c.low, c.high) == pytest.approx((d.mean() - half, d.mean() + half))
    assert c.sd == pytest.approx(d.std(ddof=1))


def test_known_difference_is_better_and_reversed_is_worse() -> None:
    a, b = _arms(shift=0.05)
    assert cell_verdict(paired_t(a, b)).verdict == Verdict.BETTER
    assert cell_verdict(paired_t(b, a)).verdict == Verdict.WORSE


def test_identical_arms_with_noise_show_no_detectable_difference() -> None:
    a, b = _arms(shift=0.0, noise=0.02, seed=3)
    v = cell_verdict(paired_t(a, b))
    assert v.verdict == Verdict.NO_DIFFERENCE
    assert v.comparison.low < 0 < v.comparison.high
    # the smallest detectable difference, at 80% power for 5 seeds and the observed sd
    d_std = TTestPower().solve_power(effect_size=None, nobs=5, alpha=0.05, power=0.8)
    assert v.mde == pytest.approx(d_std * v.comparison.sd)
    assert v.mde > abs(v.comparison.diff)


def test_pairing_is_what_finds_a_small_difference() -> None:
    """Seed spread (0.4 to 0.7) swamps a 0.05 shift unpaired; the paired test sees it."""
    a, b = _arms(shift=0.05)
    unpaired = sp.ttest_ind(list(a.values()), list(b.values()))
    assert unpaired.pvalue > 0.05
    assert paired_t(a, b).p < 0.001


def test_fewer_than_two_seeds_gives_no_verdict() -> None:
    c = paired_t({0: 0.5, 1: 0.6}, {0: 0.4, 7: 0.3})  # seed 1 and 7 have no partner
    assert isinstance(c, Insufficient) and c.seeds == (0,)
    v = cell_verdict(c)
    assert v.verdict == Verdict.INSUFFICIENT and v.mde is None and v.p_adjusted is None


def test_a_constant_difference_is_judged_by_the_sign_test_and_no_difference_is_not() -> None:
    """Zero variance leaves t undefined: 2 or 3 identical differences (the demo's GPT steps,
    both seeds one evaluation apart) are not evidence; 6 are (p = 2^-5)."""
    a = {0: 0.6, 1: 0.7, 2: 0.8}
    c = paired_t(a, {s: v - 0.1 for s, v in a.items()})
    assert isinstance(c, Comparison)
    assert (c.p, c.sd) == (0.25, 0.0) and c.low == pytest.approx(0.1) == c.high
    assert cell_verdict(c).verdict == Verdict.NO_DIFFERENCE
    six = {s: 0.5 + s / 100 for s in range(6)}
    c6 = paired_t(six, {s: v - 0.1 for s, v in six.items()})
    assert isinstance(c6, Comparison) and c6.p == pytest.approx(2**-5)
    assert cell_verdict(c6).verdict == Verdict.BETTER
    same = paired_t(a, dict(a))
    assert same.p == 1.0 and cell_verdict(same).verdict == Verdict.NO_DIFFERENCE


# ---------------------------------------------------------------------------- bootstrap


def _examples(p_correct: float, seed: int, n: int = 400) -> np.ndarray:
    return (np.random.default_rng(seed).random(n) < p_correct).astype(float)


def test_bootstrap_over_examples_and_seeds_finds_a_known_difference() -> None:
    a = {s: _examples(0.8, s) for s in range(3)}
    b = {s: _examples(0.6, 100 + s) for s in range(3)}
    c = paired_bootstrap(a, b)
    assert isinstance(c, Comparison) and c.method == Method.BOOTSTRAP
    assert c.n_examples == 400 and c.seeds == (0, 1, 2)
    assert c.low < 0.2 < c.high and c.low > 0.1
    assert c.p == pytest.approx(1 / 2001)  # no resample as far from 0.2 as 0.2 is from 0
    assert cell_verdict(c).verdict == Verdict.BETTER
    assert paired_bootstrap(a, b) == c  # seeded: the same record every time
    assert paired_bootstrap(a, b, seed=1) != c


def test_bootstrap_of_identical_arms_is_no_difference() -> None:
    a = {s: _examples(0.7, s) for s in range(3)}
    c = paired_bootstrap(a, {s: v.copy() for s, v in a.items()})
    assert c.diff == 0.0 and c.p == 1.0
    assert cell_verdict(c).verdict == Verdict.NO_DIFFERENCE


def test_bootstrap_interval_widens_with_seed_to_seed_variance() -> None:
    """Resampling seeds too: arms whose gap swings between seeds get a wider interval."""
    b = {s: _examples(0.6, 100 + s) for s in range(4)}
    steady = {s: _examples(0.7, s) for s in range(4)}
    swinging = {s: _examples(p, s) for s, p in enumerate([0.6, 0.8, 0.6, 0.8])}
    w_steady = paired_bootstrap(steady, b)
    w_swing = paired_bootstrap(swinging, b)
    assert (w_swing.high - w_swing.low) > 1.5 * (w_steady.high - w_steady.low)


def test_bootstrap_refuses_arms_scored_on_different_examples() -> None:
    with pytest.raises(PretrainlabError, match="same test examples"):
        paired_bootstrap({0: np.ones(5), 1: np.ones(5)}, {0: np.ones(4), 1: np.ones(5)})
    with pytest.raises(PretrainlabError, match="same test"):
        paired_bootstrap({0: np.ones(5), 1: np.ones(6)}, {0: np.ones(5), 1: np.ones(6)})
    assert isinstance(paired_bootstrap({0: np.ones(3)}, {0: np.zeros(3)}), Insufficient)


# ------------------------------------------------------------------------ claims and Holm


def test_claim_rule_outcomes() -> None:
    better = paired_t(*_arms(0.05, seed=1))
    worse = paired_t(*reversed(_arms(0.05, seed=2)))
    straddling = [paired_t(*_arms(0.0, noise=0.02, seed=s)) for s in (3, 4, 5)]
    assert claim_verdict({"a": better, "b": better}).outcome == Outcome.SUPPORTED
    inconclusive = claim_verdict({str(i): c for i, c in enumerate(straddling)})
    assert inconclusive.outcome == Outcome.INCONCLUSIVE
    assert all(c.low < 0 < c.high for c in straddling)
    mixed = claim_verdict({"up": better, "down": worse, "flat": straddling[0]})
    assert mixed.outcome == Outcome.MIXED and (mixed.n_for, mixed.n_against) == (1, 1)
    assert claim_verdict({"a": worse, "b": straddling[0]}).outcome == Outcome.CONTRADICTED
    # the claimed direction: "the first arm scores lower"
    assert claim_verdict({"a": worse}, sign=-1).outcome == Outcome.SUPPORTED
    assert claim_verdict({"a": better}, sign=-1).outcome == Outcome.CONTRADICTED


def test_claim_without_two_seeds_anywhere_is_inconclusive() -> None:
    one_seed = paired_t({0: 0.9}, {0: 0.1})
    v = claim_verdict({"a": one_seed, "b": one_seed})
    assert v.outcome == Outcome.INCONCLUSIVE and v.n_tested == 0
    assert v.cells["a"].verdict == Verdict.INSUFFICIENT


def test_holm_turns_a_borderline_cell_inconclusive() -> None:
    cells = {"x": _cmp(0.02, p=0.03), "y": _cmp(0.02, p=0.04)}
    # alone, each cell clears 0.05
    assert all(cell_verdict(c).verdict == Verdict.BETTER for c in cells.values())
    assert claim_verdict({"x": cells["x"]}).outcome == Outcome.SUPPORTED
    # together, Holm's adjusted p-values are 0.06 and 0.06
    v = claim_verdict(cells)
    assert v.outcome == Outcome.INCONCLUSIVE
    assert v.cells["x"].p_adjusted == pytest.approx(0.06)
    assert v.cells["y"].p_adjusted == pytest.approx(0.06)
    assert v.cells["x"].verdict == Verdict.NO_DIFFERENCE


def test_insufficient_cells_do_not_enlarge_holms_family() -> None:
    lone = paired_t({0: 0.9}, {0: 0.1})
    v = holm({"x": _cmp(0.02, p=0.03), "lone": lone})
    assert v["x"].p_adjusted == pytest.approx(0.03) and v["x"].verdict == Verdict.BETTER


def test_rule_is_written_once_with_its_terms() -> None:
    for term in (
        "Holm",
        "supported",
        "contradicted",
        "mixed",
        "inconclusive",
        "not a claim of equivalence",
        "fewer than 2",
    ):
        assert term in RULE


# -------------------------------------------------------------------------------- power


def test_seeds_needed_for_the_textbook_case() -> None:
    """d = 0.5, α = 0.05 two-sided, power 0.8: a paired t-test needs 34 pairs (Cohen 1988)."""
    plan = seeds_needed(0.05, sd=0.1)
    assert plan.seeds == 34 and plan.effect_size == pytest.approx(0.5)
    pilot = [0.0, 0.1, 0.2]  # sd 0.1
    assert seeds_needed(0.05, pilot=pilot).seeds == 34
    assert seeds_needed(0.1, sd=0.1).seeds == 10  # d = 1: 9.94 rounds up
    assert seeds_needed(1.0, sd=0.01).seeds == 2  # huge effects never go below 2
    assert seeds_needed(0.05, sd=0.0).seeds == 2


def test_seeds_needed_just_above_two_seeds_is_a_number() -> None:
    """The demo's case (effect 6.6 sd): statsmodels' root finder returned NaN there."""
    plan = seeds_needed(0.004710362798155926, sd=0.000708665846047897)
    assert plan.seeds == 3  # 2 pairs: t critical 12.7 at 1 df, noncentrality 9.4
    assert TTestPower().power(effect_size=plan.effect_size, nobs=3, alpha=0.05) >= 0.8
    # where statsmodels' power is finite, it is the same function
    for effect, n in [(0.5, 34), (1.0, 10), (plan.effect_size, 3)]:
        assert paired_power(effect, n) == pytest.approx(
            TTestPower().power(effect_size=effect, nobs=n, alpha=0.05))
    assert 10**6 < seeds_needed(1e-5, sd=0.1).seeds < 10**10  # tiny effects: large, finite


def test_minimum_detectable_effect_has_the_stated_power() -> None:
    mde = minimum_detectable_effect(5, 0.1)
    assert TTestPower().power(effect_size=mde / 0.1, nobs=5, alpha=0.05) == pytest.approx(0.8)
    assert minimum_detectable_effect(10, 0.1) < mde


def test_seeds_needed_refuses_what_it_cannot_plan() -> None:
    with pytest.raises(PretrainlabError, match="either"):
        seeds_needed(0.05)
    with pytest.raises(PretrainlabError, match="at least 2 seeds"):
        seeds_needed(0.05, pilot=[0.1])
    with pytest.raises(PretrainlabError, match="non-zero"):
        seeds_needed(0.0, sd=0.1)


def test_t_interval() -> None:
    m = t_interval([40, 60, 50])
    half = sp.t.ppf(0.975, 2) * 10 / math.sqrt(3)
    assert (m.mean, m.low, m.high) == pytest.approx((50, 50 - half, 50 + half))
    assert t_interval([7]).low is None
    assert t_interval([7, 7]).low == 7


# -------------------------------------------------------------------------- convergence


def test_plateau_is_converged_and_steps_read_the_gain_not_the_final_score() -> None:
    scores = [0.5, 0.55, 0.58, 0.595, 0.6] + [0.6] * 10
    run = convergence([(10 * (i + 1), s) for i, s in enumerate(scores)])
    assert run.converged and run.best == pytest.approx(0.6)
    # 95% of the gain (0.5 -> 0.6) is 0.595, first reached at step 40; 95% of the final
    # score (0.57) would have said step 30
    assert run.steps_to_gain == 40


def test_learnable_exponential_curve_converges_at_its_known_step() -> None:
    steps = range(20, 1001, 20)
    run = convergence([(s, 0.9 - 0.6 * math.exp(-s / 100)) for s in steps])
    first, best = 0.9 - 0.6 * math.exp(-0.2), 0.9 - 0.6 * math.exp(-10)
    target = first + 0.95 * (best - first)
    exact = -100 * math.log((0.9 - target) / 0.6)
    assert run.converged
    assert run.steps_to_gain == 20 * math.ceil(exact / 20)


def test_curve_still_rising_at_its_end_is_not_converged() -> None:
    cut = convergence([(s, 0.9 - 0.6 * math.exp(-s / 100)) for s in range(20, 201, 20)])
    assert not cut.converged and cut.best_step == 200
    linear = convergence([(s, 0.01 * s) for s in range(1, 21)])
    assert not linear.converged and linear.tail_improvement == pytest.approx(0.04)


def test_small_late_wobble_is_within_tolerance() -> None:
    """A new best in the last fifth counts only past 5% of the gain and past min_delta."""
    late_nudge = [0.2, 0.6, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.81]  # 0.01 < 5% of 0.61
    assert convergence(list(enumerate(late_nudge))).converged
    flat = [0.5] * 9 + [0.504]  # the whole gain arrives at the end...
    assert not convergence(list(enumerate(flat))).converged
    # ...but it is less than one example of a 200-example dev set
    assert convergence(list(enumerate(flat)), min_delta=1 / 200).converged


def test_last_fifth_is_the_last_ceil_k_over_5_evaluations() -> None:
    """Of 10 evaluations the last 2 are the last fifth; of 11, the last 3."""
    rise_at = lambda i, k: [0.2] * i + [0.8] * (k - i)  # noqa: E731
    assert convergence(list(enumerate(rise_at(7, 10)))).converged
    assert not convergence(list(enumerate(rise_at(8, 10)))).converged
    assert not convergence(list(enumerate(rise_at(8, 11)))).converged
    assert convergence(list(enumerate(rise_at(7, 11)))).converged


def test_single_evaluation_is_not_converged() -> None:
    assert not convergence([(10, 0.5)]).converged


def test_steps_interval_over_seeds_counts_converged_runs() -> None:
    plateau = [0.2, 0.5, 0.7, 0.8] + [0.8] * 8
    runs = [convergence([(k * (i + 1), s) for i, s in enumerate(plateau)]) for k in (10, 15, 20)]
    runs.append(convergence([(s, 0.01 * s) for s in range(10, 130, 10)]))
    summary = summarise_convergence(runs)
    assert [r.steps_to_gain for r in runs[:3]] == [40, 60, 80]
    assert summary.n_converged == 3 and not summary.all_converged
    assert summary.steps.mean == pytest.approx((40 + 60 + 80 + 120) / 4)
    assert summary.steps.low < summary.steps.mean < summary.steps.high


# -------------------------------------------------------------------- label-equivalents

BUDGETS = (25, 50, 100, 200, 400)
SCRATCH_OFFSET = {0: -0.01, 1: 0.0, 2: 0.01}


def _scratch() -> dict[int, dict[float, float]]:
    """Scratch rising 0.1 per doubling of labels: 0.4 at 25, ..., 0.8 at 400 (seed mean)."""
    return {
        s: {b: 0.4 + 0.1 * math.log2(b / 25) + off for b in BUDGETS}
        for s, off in SCRATCH_OFFSET.items()
    }


def _pretrained(mean: float, spread: tuple[float, ...] = (0.02, -0.01, -0.01)) -> dict:
    return {s: mean + d for s, d in zip(SCRATCH_OFFSET, spread, strict=True)}


def test_label_equivalent_on_a_log_linear_scratch_curve() -> None:
    eq = label_equivalent(_scratch(), _pretrained(0.65), labels=50)
    expected = 25 * 2**2.5  # 0.65 sits 2.5 doublings above 0.4
    assert eq.estimate.side == "=" and eq.estimate.value == pytest.approx(expected)
    assert eq.ratio == pytest.approx(expected / 50)
    assert eq.low.value < expected < eq.high.value
    assert eq.seeds == (0, 1, 2)
    assert label_equivalent(_scratch(), _pretrained(0.65), labels=50) == eq  # seeded
    on_grid = label_equivalent(_scratch(), _pretrained(0.6), labels=50)
    assert on_grid.estimate.value == pytest.approx(100)


def test_label_equivalent_is_censored_never_extrapolated() -> None:
    above = label_equivalent(_scratch(), _pretrained(0.9), labels=50)
    assert above.estimate == Bound(400, ">") and above.ratio is None
    assert above.text().startswith("> 400")
    below = label_equivalent(_scratch(), _pretrained(0.3), labels=50)
    assert below.estimate == Bound(25, "<") and below.text().startswith("< 25")
    # inside the grid, but some seed resamples pass the largest budget: an open upper bound
    near_top = label_equivalent(_scratch(), _pretrained(0.79, (0.03, -0.03, 0.0)), labels=50)
    assert near_top.estimate.side == "=" and near_top.high == Bound(400, ">")


def test_label_equivalent_with_one_seed_has_no_interval() -> None:
    eq = label_equivalent({0: _scratch()[1]}, {0: 0.65}, labels=50)
    assert eq.estimate.value == pytest.approx(25 * 2**2.5) and eq.low is None
    with pytest.raises(PretrainlabError, match="numeric budget grid"):
        label_equivalent({0: {50: 0.5}}, {0: 0.6}, labels=50)


# --------------------------------------------------------------------------- break-even


def _points(deltas: dict[float, float]) -> dict:
    rng = np.random.default_rng(7)
    scratch = {s: 0.5 + rng.normal(0, 0.05) for s in range(4)}
    return {
        point: paired_t({s: v + d + rng.normal(0, 0.005) for s, v in scratch.items()}, scratch)
        for point, d in deltas.items()
    }


def test_break_even_at_a_known_point() -> None:
    be = break_even(_points({1e8: 0.2, 1e6: 0.0, 1e7: 0.1}), unit="tokens")
    assert be.point == 1e7 and be.text() == "1e+07 tokens"
    assert [p for p, _ in be.verdicts] == [1e6, 1e7, 1e8]
    assert be.verdicts[0][1].verdict == Verdict.NO_DIFFERENCE


def test_break_even_not_reached() -> None:
    be = break_even(_points({1e6: 0.0, 1e7: -0.1}), unit="tokens")
    assert be.point is None and be.text() == "not reached"
    assert be.verdicts[1][1].verdict == Verdict.WORSE
