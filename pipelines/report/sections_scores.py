"""Report sections 1-3: pretraining, score vs label budget, convergence.

Each section is a query plus a table and/or a PNG; it skips with a one-line note when its rows
are absent, and reads every neural number against the task's non-neural baseline.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from pipelines.report.document import Plots, Section, slug
from pipelines.report.findings import Convergence
from pipelines.report.readings import ConvergenceSummary, summarise_convergence
from pipelines.report.readings import convergence as read_convergence
from pipelines.report.scores import (
    BASE,
    Data,
    ScoreKey,
    budget_order,
    versus_baseline_text,
)

MASK_PARAM = "pretrain.bert.mask_replace_prob"
PRETRAIN_KEYS = ("valid_loss", "unigram_entropy", "entropy_gap", "tokens_seen", "wall_s", "flops")


def pretrain_rows(data: Data) -> list[dict[str, Any]]:
    """Finished pretrain runs with their key metrics (sections 1 and 7), each with the model
    version it registered and whether transfer runs used it: a family retrained after a code
    change has two runs, and only one of them is behind the transfer numbers."""
    if not data.has("runs", "metrics_latest"):
        return []
    pivots = ", ".join(f"max(m.value) filter (where m.key = '{k}') as {k}" for k in PRETRAIN_KEYS)
    mask, version = "null", "null"
    joins = ""
    if data.has("params"):
        mask = "any_value(try_cast(p.value as double))"
        joins += f" left join params p on p.run_id = r.run_id and p.key = '{MASK_PARAM}'"
    if data.has("model_versions"):
        version = "any_value(mv.name || ' v' || mv.version)"
        joins += " left join model_versions mv on mv.run_id = r.run_id and mv.tags['point'] is null"
    transferred = "r.run_id in (select t.pretrain_run_id from runs t where t.stage = 'transfer')"
    return data.rows(
        f"select r.run_id, r.family, r.run_name, r.tags['learned_little'] as learned_little, "
        f"{pivots}, {mask} as mask_replace_prob, {version} as version, "
        f"{transferred} as transferred from runs r "
        f"left join metrics_latest m on m.run_id = r.run_id{joins} "
        "where r.stage = 'pretrain' and r.status = 'FINISHED' "
        "group by r.run_id, r.family, r.run_name, r.tags, r.start_time "
        "order by r.family, r.start_time"
    )


def behind_transfer(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pretrain runs behind the transfer numbers, or every one when none has transfer runs
    yet (a spec run `--until pretrain`)."""
    return [r for r in rows if r["transferred"]] or rows


PRETRAIN_HEADERS = [
    "family",
    "run",
    "model version",
    "transferred",
    "valid loss",
    "unigram entropy",
    "gap (nats)",
    "tokens seen",
    "wall s",
    "FLOPs",
    "learned little",
]


def section_pretraining(data: Data, plots: Plots) -> Section:
    sec = Section("1. Pretraining")
    rows = pretrain_rows(data)
    if not rows:
        sec.text(
            "Skipped: no finished pretrain runs in the catalog (MLflow not read, or none yet)."
        )
        return sec
    columns = ("valid_loss", "unigram_entropy", "entropy_gap", "tokens_seen", "wall_s", "flops")
    sec.table(
        PRETRAIN_HEADERS,
        [[r["family"], r["run_name"], r["version"] or "–", "yes" if r["transferred"] else "no",
          *(r[c] for c in columns), r["learned_little"] or "–"] for r in rows],
    )  # fmt: skip
    little = sorted({r["family"] for r in rows if r["learned_little"] == "true"})
    if little:
        sec.text(
            f"**Learned little** (valid loss near unigram entropy): {', '.join(little)} — "
            "their transfer numbers measure word frequencies, not language."
        )
    lm = [r for r in behind_transfer(rows)  # one bar pair per family
          if r["valid_loss"] is not None and r["unigram_entropy"] is not None]  # fmt: skip
    if lm:
        fig = Figure(figsize=(6, 3.5))
        ax = fig.subplots()
        xs = range(len(lm))
        ax.bar([x - 0.2 for x in xs], [r["valid_loss"] for r in lm], 0.4, label="valid loss")
        ax.bar(
            [x + 0.2 for x in xs], [r["unigram_entropy"] for r in lm], 0.4, label="unigram entropy"
        )
        ax.set_xticks(list(xs), [r["family"] for r in lm])
        ax.set_ylabel("nats per token")
        ax.legend()
        sec.image(plots.save(fig, "pretraining"), "Valid loss vs unigram entropy per family")
    return sec


# ---------------------------------------------------------------------------- label budget


def _budget_plot(data: Data, task: str, plots: Plots) -> Path:
    cells = [k for k in data.cells() if k.task == task]
    models = sorted({k.model for k in cells})
    budgets = data.budgets(task)
    fig = Figure(figsize=(4 * len(models), 3.5))
    axes = fig.subplots(1, len(models), squeeze=False, sharey=True)[0]
    for ax, model in zip(axes, models, strict=True):
        for mode in sorted({k.mode for k in cells if k.model == model}):
            pts = [(i, data.score(task, model, mode, b)) for i, b in enumerate(budgets)]
            found = [(i, s) for i, s in pts if s is not None]
            ax.errorbar(
                [i for i, _ in found],
                [s.mean for _, s in found],
                yerr=[0 if math.isnan(s.ci) else s.ci for _, s in found],
                marker="o",
                capsize=3,
                label=mode,
            )
        base = [data.baseline(task, b) for b in budgets]
        if any(base):
            ax.plot(
                range(len(budgets)),
                [b.stat.mean if b else math.nan for b in base],
                "k--",
                label="baseline",
            )
        ax.set_xticks(range(len(budgets)), budgets)
        ax.set_ylim(0, 1)  # a rate; wide intervals (few seeds) are clipped, the table has them
        ax.set_title(model)
        ax.set_xlabel("labelled examples")
        axes[0].set_ylabel(f"test {data.metric(task)}")
        ax.legend(fontsize=7)
    return plots.save(fig, f"budget_{slug(task)}")


def _score_row(data: Data, key: ScoreKey, versus: str) -> list[Any]:
    head = data.scores[key]
    f1 = data.scores.get(key.but(metric="macro_f1"))
    return [key.task, key.model, key.mode, key.budget, head.text(), head.n,
            f1.text() if f1 else "–", versus]  # fmt: skip


def section_budget(data: Data, plots: Plots) -> Section:
    sec = Section("2. Score vs label budget")
    cells = data.cells()
    for task, splits in data.unseen_labels().items():
        counts = ", ".join(f"{split} {n}" for split, n in splits.items())
        sec.text(
            f"{task}: items whose label never occurs in train ({counts}) are kept and scored "
            "as errors by every model and baseline."
        )
    if not cells:
        sec.text("Skipped: no test result rows in the catalog.")
        return sec
    heads = "; ".join(f"{t}: {data.metric(t)}" for t in sorted({k.task for k in cells}))
    sec.text(
        "Test split at the best dev evaluation, the learning rate chosen on dev; each task's "
        f"headline metric ({heads}), mean ±95% CI over seeds (n = seeds)."
    )
    rows = [
        _score_row(data, k, versus_baseline_text(
            data.against_baseline(k.task, k.budget, data.scores[k])))
        for k in cells
    ]  # fmt: skip
    rows += [_score_row(data, k, "–") for k in data.baseline_keys()]
    headers = ["task", "model", "mode", "budget", "headline", "n", "macro-F1", "vs baseline"]
    sec.table(headers, rows)
    for task in sorted({k.task for k in cells}):
        sec.image(_budget_plot(data, task, plots), f"{task}: {data.metric(task)} vs label budget")
    return sec


# ----------------------------------------------------------------------------- convergence

CURVES = """,
steps as (select run_id, epoch, value as step from chosen where split = 'dev' and metric = 'step'),
curves as (
    select c.run_id, c.task, c.model, c.mode, c.b, c.seed, c.lr, c.epoch,
        coalesce(s.step, c.epoch) as x, c.value
    from chosen c left join steps s using (run_id, epoch)
    where c.split = 'dev' and c.headline and c.layer is null
      and c.mode in ('finetune', 'scratch') and c.family <> 'baseline')"""
RUN_CURVES = """
select task, model, mode, b, seed, run_id, x, value from curves order by all"""
MEAN_CURVES = """
select task, model, mode, b, epoch, avg(x) as x, avg(value) as value from curves group by all
order by task, model, mode, b, epoch"""


def _run_curves(data: Data) -> dict[ScoreKey, dict[int, list[tuple[int, float]]]]:
    """cell -> seed -> its dev curve [(step, headline score)] (one run per seed: the first)."""
    runs: dict[ScoreKey, dict[int, dict[str, list[tuple[int, float]]]]] = {}
    for r in data.rows(BASE + CURVES + RUN_CURVES):
        key = data.key(r["task"], r["model"], r["mode"], r["b"])
        by_run = runs.setdefault(key, {}).setdefault(int(r["seed"]), {})
        by_run.setdefault(r["run_id"], []).append((int(r["x"]), float(r["value"])))
    return {k: {seed: next(iter(by_run.values())) for seed, by_run in seeds.items()}
            for k, seeds in runs.items()}  # fmt: skip


def convergence(data: Data) -> tuple[Convergence, list[dict[str, Any]]]:
    """Each run's dev curve (headline metric, against optimizer steps; epochs when a run logged
    no `step` rows) read by `readings.CONVERGENCE_RULE`. A cell is marked when a run's
    `converged` row says it was still improving (by the reading, for rows without that flag)."""
    if not data.has_results:
        return Convergence({}, {}, set(), "epochs"), []
    steps = data.rows("select count(*) as n from results where split = 'dev' and metric = 'step'")
    flagged = data.rows("select count(*) as n from results where metric = 'converged'")
    unit = "steps" if steps[0]["n"] else "epochs"
    per_seed, summary, unconverged = {}, {}, set()
    for key, curves in _run_curves(data).items():
        readings = {seed: read_convergence(curve) for seed, curve in curves.items()}
        per_seed[key] = {seed: float(r.steps_to_gain) for seed, r in readings.items()}
        summary[key] = summarise_convergence(list(readings.values()))
        still = key in data.unconverged if flagged[0]["n"] else not summary[key].all_converged
        if still:
            unconverged.add(key)
    return Convergence(per_seed, summary, unconverged, unit), data.rows(BASE + CURVES + MEAN_CURVES)


def _convergence_plot(curves: list[dict[str, Any]], task: str, unit: str, plots: Plots,
                      sec: Section, metric: str) -> None:  # fmt: skip
    rows = [c for c in curves if c["task"] == task]
    small = min({c["b"] for c in rows}, key=budget_order)
    rows = [c for c in rows if c["b"] == small]
    models = sorted({c["model"] for c in rows})
    fig = Figure(figsize=(4 * len(models), 3.2))
    axes = fig.subplots(1, len(models), squeeze=False, sharey=True)[0]
    for ax, model in zip(axes, models, strict=True):
        for mode in ("finetune", "scratch"):
            pts = [c for c in rows if c["model"] == model and c["mode"] == mode]
            if pts:
                ax.plot([c["x"] for c in pts], [c["value"] for c in pts], marker="o", label=mode)
        ax.set_title(f"{model} ({small} labels)")
        ax.set_xlabel(unit[:-1])
        axes[0].set_ylabel(f"dev {metric}")
        ax.legend(fontsize=7)
    sec.image(
        plots.save(fig, f"convergence_{slug(task)}"),
        f"{task}: dev {metric} per {unit[:-1]} at {small} labels",
    )


def _steps_text(summary: ConvergenceSummary) -> str:
    s = summary.steps
    interval = "" if s.low is None or s.high is None else f" [{s.low:.1f}, {s.high:.1f}]"
    return f"{s.mean:.1f}{interval}"


def section_convergence(data: Data, plots: Plots) -> tuple[Section, Convergence]:
    sec = Section("3. Convergence: pretrained (finetune) vs scratch")
    found, curves = convergence(data)
    if not found.summary:
        sec.text("Skipped: no per-epoch dev rows for finetune or scratch.")
        return sec, found
    unit = found.unit
    sec.text(
        f"Optimizer {unit} until a run's dev headline score first reaches 95% of its gain "
        "(first evaluation to best), mean over seeds with a 95% t interval; the rate each mode "
        "chose on dev. A cell marked **not converged** has a run still improving at its end: "
        "its steps are a lower bound."
    )
    sec.table(
        ["task", "model", "mode", "budget", f"{unit} to 95% of gain [95% CI]", "n",
         "converged runs", "mark"],
        [
            [k.task, k.model, k.mode, k.budget, _steps_text(s), s.steps.n,
             f"{s.n_converged}/{s.steps.n}", "not converged" if k in found.unconverged else ""]
            for k, s in sorted(found.summary.items(), key=lambda ks: ks[0].sort_key())
        ],
    )  # fmt: skip
    for task in sorted({c["task"] for c in curves}):
        _convergence_plot(curves, task, unit, plots, sec, data.metric(task))
    return sec, found
