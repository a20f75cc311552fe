"""The break-even and label-equivalent sections on constructed `point_scores` rows with known
answers: a crossing at a known point, no crossing ("not reached"), a censored cell."""

from __future__ import annotations

from pipelines.report.sections_points import _arms, break_even_rows, label_rows


def _row(family, point, mode, budget, labels, seed, value, tokens):
    return {"task": "t", "family": family, "point": point, "mode": mode, "budget": budget,
            "labels": labels, "seed": seed, "value": value, "tokens_seen": tokens,
            "flops": 6.0 * tokens, "pretrain_step": 0, "schedule": "wsd"}  # fmt: skip


SEEDS = range(4)
NOISE = (0.0, 0.01, -0.01, 0.005)


def _rows(gains: dict[str | None, float], budgets=((10, "10"), (100, "100"))) -> list[dict]:
    """Scratch rises with labels; the pretrained family's frozen cells sit `gain` above
    scratch at each point (tokens: 0.1 -> 100, 0.5 -> 500, final -> 1000)."""
    tokens = {"0.1": 100, "0.5": 500, None: 1000}
    rows = []
    for labels, budget in budgets:
        base = 0.4 if labels == 10 else 0.6
        for s in SEEDS:
            rows.append(_row("gpt", None, "scratch", budget, labels, s, base + NOISE[s], 0))
            for point, gain in gains.items():
                value = base + gain + NOISE[s] * 0.5
                rows.append(_row("gpt", point, "frozen", budget, labels, s, value, tokens[point]))
    return rows


def _reading(found, budget, unit="tokens"):
    return next(r for r in found if r["budget"] == budget and r["unit"] == unit)


def test_break_even_reads_the_least_pretraining_that_beats_scratch():
    found = break_even_rows(_arms(_rows({"0.1": 0.0, "0.5": 0.2, None: 0.25})))
    assert _reading(found, "10")["point"] == 500
    assert _reading(found, "10", "FLOPs")["point"] == 3000
    assert _reading(found, "10")["points"] == 3


def test_break_even_not_reached_when_no_point_beats_scratch():
    found = break_even_rows(_arms(_rows({"0.1": 0.0, "0.5": -0.1, None: 0.0})))
    assert _reading(found, "100")["point"] is None
    assert _reading(found, "100")["reading"] == "not reached"


def test_label_equivalents_interpolate_and_censor():
    # final frozen at 10 labels scores 0.5: scratch reaches it half-way (in log) to 100 labels
    found, _ = label_rows(_arms([r for r in _rows({None: 0.1}) if r["point"] is None]))
    at_10 = next(r for r in found if r["budget"] == "10")
    assert 30 <= float(at_10["estimate"]) <= 32  # 10 ** 1.5 = 31.6 (less the seeds' noise)
    # ... and at 100 labels it beats scratch at every budget: censored, never extrapolated
    at_100 = next(r for r in found if r["budget"] == "100")
    assert at_100["estimate"] == "> 100" and at_100["ratio"] is None


def test_label_equivalents_need_a_numeric_grid():
    rows = [r for r in _rows({None: 0.1}, budgets=((50, "all"),)) if r["point"] is None]
    found, why = label_rows(_arms(rows))
    assert found == [] and "numeric budget grid" in why
