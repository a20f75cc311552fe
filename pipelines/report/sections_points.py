"""What pretraining is worth in compute and in labels (issue 16): break-even and label-equivalents.

Both read the catalog's `point_scores` (one headline test score per task x family x point x mode
x budget x seed, with the pretraining amount behind it; scratch at zero) and apply the rules of
`readings` (printed verbatim). Their tables are also written as Parquet beside the report, which
the catalog's `break_even` and `label_equivalents` views read (`storage.catalog_points`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from matplotlib.figure import Figure

from pipelines.report.document import Plots, Section, slug
from pipelines.report.readings import (
    BREAK_EVEN_RULE,
    LABEL_EQUIVALENT_RULE,
    break_even,
    label_equivalent,
)
from pipelines.report.scores import Data, budget_order
from pipelines.report.stats import paired_t
from pretrainlab.config import PretrainlabError
from storage.atomic import write_parquet

POINT_ROWS = (
    "select task, family, point, mode, budget, labels, seed, value, tokens_seen, flops, "
    "pretrain_step, schedule from point_scores order by all"
)
UNITS = (("tokens_seen", "tokens"), ("flops", "FLOPs"))
_KEYS = [("report", pa.string()), ("task", pa.string()), ("family", pa.string()),
         ("mode", pa.string()), ("budget", pa.string())]  # fmt: skip
BREAK_EVEN_SCHEMA = pa.schema([*_KEYS, ("unit", pa.string()), ("point", pa.float64()),
                               ("reading", pa.string()), ("points", pa.int64())])  # fmt: skip
LABEL_SCHEMA = pa.schema([*_KEYS, ("labels", pa.float64()), ("estimate", pa.string()),
                          ("reading", pa.string()), ("ratio", pa.float64()),
                          ("seeds", pa.int64())])  # fmt: skip
HOW = {
    "wsd": "warmup-stable-decay: each point annealed on its own branch by a linear cooldown "
    "(the main run continues from the stable phase), so a point is a finished model",
    "cosine": "snapshots mid-way through a cosine schedule, not annealed: they understate "
    "what that much pretraining is worth, so break-even reads later than it is",
    "word2vec-linear": "after an epoch of word2vec's linear rate decay, not annealed",
}


@dataclass(frozen=True)
class Arm:
    """One (task, family, point, mode, budget): its seeds' scores and pretraining amount."""

    scores: dict[int, float]
    amount: dict[str, float]  # tokens_seen, flops
    labels: float | None


Arms = dict[tuple[str, str, str | None, str, str], Arm]


def _arms(rows: list[dict[str, Any]]) -> Arms:
    grouped: dict[tuple, dict[str, Any]] = defaultdict(lambda: {"scores": {}, "amount": {}})
    for r in rows:
        key = (r["task"], r["family"], r["point"], r["mode"], r["budget"])
        grouped[key]["scores"][int(r["seed"])] = float(r["value"])
        grouped[key]["amount"] = {k: float(r[k] or 0.0) for k, _ in UNITS}
        grouped[key]["labels"] = r["labels"]
    return {k: Arm(v["scores"], v["amount"], v["labels"]) for k, v in grouped.items()}


def _scratch(arms: Arms, task: str, family: str, budget: str) -> Arm | None:
    return arms.get((task, family, None, "scratch", budget))


def _pretrained(arms: Arms) -> list[tuple[str, str, str, str]]:
    """(task, family, mode, budget) of every pretrained cell, in table order."""
    keys = {(t, f, m, b) for (t, f, _, m, b) in arms if m != "scratch"}
    return sorted(keys, key=lambda k: (k[0], k[1], k[2], budget_order(k[3])))


# ----------------------------------------------------------------------------- break-even


def break_even_rows(arms: Arms) -> list[dict[str, Any]]:
    """One row per task x family x mode x budget x unit: the break-even reading."""
    found = []
    for task, family, mode, budget in _pretrained(arms):
        scratch = _scratch(arms, task, family, budget)
        points = [a for (t, f, _, m, b), a in arms.items() if (t, f, m, b) ==
                  (task, family, mode, budget)]  # fmt: skip
        if scratch is None or len(points) < 2:
            continue
        for column, unit in UNITS:
            cells = {a.amount[column]: paired_t(a.scores, scratch.scores) for a in points}
            reading = break_even(cells, unit=unit)
            found.append({"task": task, "family": family, "mode": mode, "budget": budget,
                          "unit": unit, "point": reading.point, "reading": reading.text(),
                          "points": len(points)})  # fmt: skip
    return found


def _plot(data: Data, arms: Arms, task: str, plots: Plots) -> Path:
    budgets = sorted({k[4] for k in arms if k[0] == task}, key=budget_order)
    fig = Figure(figsize=(9, 3.2 * len(budgets)))
    axes = fig.subplots(len(budgets), len(UNITS), squeeze=False)
    for row, budget in enumerate(budgets):
        for col, (column, unit) in enumerate(UNITS):
            ax, least = axes[row][col], math.inf
            for family, mode in sorted({(k[1], k[3]) for k in arms if k[0] == task}):
                curve = sorted((a.amount[column], _mean(a.scores)) for (t, f, _, m, b), a
                               in arms.items() if (t, f, m, b) == (task, family, mode, budget))
                if mode == "scratch":
                    curve = [(0.0, y) for _, y in curve]
                least = min([least, *(x for x, _ in curve if x > 0)])
                if curve:
                    ax.plot(*zip(*curve, strict=True), marker="s" if mode == "scratch" else "o",
                            label=f"{family} {mode}", clip_on=False)  # fmt: skip
            base = data.baseline(task, budget)
            if base is not None:
                ax.axhline(base.stat.mean, color="k", linestyle="--", label=base.method)
            # log axis that still shows zero: linear below the least amount (scratch at 0)
            ax.set_xscale("symlog", linthresh=least if math.isfinite(least) else 1.0)
            ax.set_xlim(left=0)
            ax.set_xlabel(f"pretraining {unit}")
        axes[row][0].set_ylabel(f"test {data.metric(task)} ({budget} labels)")
    axes[0][-1].legend(fontsize=7, loc="best")
    return plots.save(fig, f"break_even_{slug(task)}")


def _mean(scores: dict[int, float]) -> float:
    return sum(scores.values()) / len(scores)


def _how(rows: list[dict[str, Any]]) -> list[str]:
    made: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        if r["point"] is not None and r["schedule"]:
            made[r["family"]].add(r["schedule"])
    return [f"{family}: {'; '.join(HOW.get(s, s) for s in sorted(ways))}."
            for family, ways in sorted(made.items())]  # fmt: skip


def section_break_even(data: Data, plots: Plots, out_dir: Path) -> Section:
    sec = Section("10. Break-even: score vs pretraining")
    rows = data.rows(POINT_ROWS) if data.has("point_scores") else []
    if not any(r["point"] is not None for r in rows):
        sec.text("Skipped: no pretraining points in the catalog (set `pretrain.points`, e.g. "
                 "[0.1, 0.3, 1.0], and re-run pretrain and transfer).")  # fmt: skip
        return sec
    arms = _arms(rows)
    sec.text(BREAK_EVEN_RULE)
    sec.text("How the points were made: " + " ".join(_how(rows)))
    found = break_even_rows(arms)
    write_parquet(out_dir / "break_even.parquet", _table(found, out_dir, BREAK_EVEN_SCHEMA))
    sec.table(["task", "family", "mode", "budget", "unit", "break-even", "points"],
              [[r["task"], r["family"], r["mode"], r["budget"], r["unit"], r["reading"],
                r["points"]] for r in found])  # fmt: skip
    for task in sorted({k[0] for k in arms}):
        sec.image(_plot(data, arms, task, plots), f"{task}: test {data.metric(task)} vs "
                  "pretraining tokens and FLOPs (scratch at zero; dashed: non-neural baseline)")
    return sec


# ------------------------------------------------------------------------ label-equivalents


def label_rows(arms: Arms) -> tuple[list[dict[str, Any]], str | None]:
    """One row per final pretrained cell: scratch labels matching it; or why none can be read."""
    found, why = [], None
    for task, family, mode, budget in _pretrained(arms):
        cell = arms.get((task, family, None, mode, budget))
        grid = {b: a for (t, f, p, m, b), a in arms.items()
                if (t, f, p, m) == (task, family, None, "scratch") and a.labels}  # fmt: skip
        if cell is None or cell.labels is None or not grid:
            continue
        scratch: dict[int, dict[float, float]] = defaultdict(dict)
        for arm in grid.values():
            for seed, value in arm.scores.items():
                scratch[seed][float(arm.labels)] = value
        try:
            reading = label_equivalent(scratch, cell.scores, float(cell.labels))
        except PretrainlabError as error:
            why = str(error)
            continue
        found.append({"task": task, "family": family, "mode": mode, "budget": budget,
                      "labels": float(cell.labels), "estimate": reading.estimate.text(),
                      "reading": reading.text(), "ratio": reading.ratio,
                      "seeds": len(reading.seeds)})  # fmt: skip
    return found, why


def section_label_equivalents(data: Data, out_dir: Path) -> Section:
    sec = Section("11. Label-equivalents: what pretraining is worth in labels")
    rows = data.rows(POINT_ROWS) if data.has("point_scores") else []
    found, why = label_rows(_arms([r for r in rows if r["point"] is None]))
    if not found:
        sec.text(f"Skipped: {why or 'no scratch and pretrained cells on a shared label grid'}.")
        return sec
    sec.text(LABEL_EQUIVALENT_RULE)
    write_parquet(out_dir / "label_equivalents.parquet", _table(found, out_dir, LABEL_SCHEMA))
    sec.table(["task", "family / mode at N labels", "≈ scratch labels", "ratio", "seeds"],
              [[r["task"], f"{r['family']} {r['mode']} at {r['labels']:,.0f}", r["reading"],
                "–" if r["ratio"] is None else f"{r['ratio']:.2g}×", r["seeds"]]
               for r in found])  # fmt: skip
    return sec


def _table(rows: list[dict[str, Any]], out_dir: Path, schema: pa.Schema) -> pa.Table:
    """A reading table for the catalog; `report` names the experiment's report directory."""
    return pa.Table.from_pylist([{"report": out_dir.name, **r} for r in rows], schema=schema)
