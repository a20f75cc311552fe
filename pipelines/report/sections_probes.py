"""Report section 4 (probes per layer, with their controls) and the contamination audit.

A probe row holds, per layer and probe seed, the probe's accuracy and either its control
(tag tasks: `seen_accuracy`, `control_accuracy`, `selectivity`, Hewitt & Liang 2019) or its
floor (other kinds: `floor`, `above_floor`), and `relative_depth` (pipelines/transfer/probes.py).
Layers are drawn at relative depth so families of different depth share an axis.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from pipelines.report.document import Plots, Section, slug
from pipelines.report.findings import ProbeLayer
from pipelines.report.scores import BASE, Data, Stat, versus_baseline_text

METRICS = ("accuracy", "seen_accuracy", "control_accuracy", "selectivity", "floor",
           "above_floor", "relative_depth")  # fmt: skip
PROBE_SEEDS = (
    "select task, model, layer, metric, seed, avg(value) as value from res "
    "where mode = 'probe' and split = 'test' and layer is not null and task <> 'polysemy' "
    f"and metric in ({', '.join(repr(m) for m in METRICS)}) group by all"
)


def _stat(seeds: dict[int, float]) -> Stat:
    values = np.asarray(list(seeds.values()), dtype=float)
    sd = float(values.std(ddof=1)) if len(values) > 1 else math.nan
    return Stat.of(float(values.mean()), sd, len(values))


def probe_layers(data: Data) -> list[ProbeLayer]:
    """Every (task, model, layer) of the probe rows with its per-seed numbers."""
    if not data.has_results:
        return []
    found: dict[tuple[str, str, int], dict[str, dict[int, float]]] = {}
    for r in data.rows(BASE + PROBE_SEEDS):
        cell = found.setdefault((r["task"], r["model"], int(r["layer"])), {})
        cell.setdefault(r["metric"], {})[int(r["seed"])] = float(r["value"])
    tops: dict[tuple[str, str], int] = {}
    for task, model, layer in found:
        tops[(task, model)] = max(tops.get((task, model), 0), layer)
    layers = []
    for (task, model, layer), metrics in sorted(found.items()):
        depth = metrics.get("relative_depth")
        top = tops[(task, model)]
        layers.append(ProbeLayer(
            task, model, layer,
            next(iter(depth.values())) if depth else (layer / top if top else 0.0),
            {k: v for k, v in metrics.items() if k != "relative_depth"},
        ))  # fmt: skip
    return layers


def best_layers(layers: list[ProbeLayer]) -> dict[tuple[str, str], int]:
    """(task, model) -> the layer of best mean probe accuracy."""
    best: dict[tuple[str, str], ProbeLayer] = {}
    for p in layers:
        key = (p.task, p.model)
        if "accuracy" in p.seeds and (key not in best or p.mean("accuracy") > best[key].mean(
                "accuracy")):  # fmt: skip
            best[key] = p
    return {k: p.layer for k, p in best.items()}


def _cell(p: ProbeLayer, metric: str) -> str:
    return _stat(p.seeds[metric]).text() if metric in p.seeds else "–"


def _table_rows(data: Data, layers: list[ProbeLayer], best: dict) -> list[list[Any]]:
    rows = []
    for p in layers:
        control = "control_accuracy" if p.control == "selectivity" else "floor"
        gap = (data.against_baseline(p.task, "all", _stat(p.seeds["accuracy"]))
               if "accuracy" in p.seeds else None)  # fmt: skip
        rows.append([p.task, p.model, p.layer, f"{p.depth:.2f}", _cell(p, "accuracy"),
                     _cell(p, control), f"{p.control or '–'}: {_cell(p, p.control or '')}",
                     len(p.seeds.get("accuracy", {})),
                     "best" if best.get((p.task, p.model)) == p.layer else "",
                     versus_baseline_text(gap)])  # fmt: skip
    return rows


def _plot(plots: Plots, sec: Section, task: str, layers: list[ProbeLayer], metric: str,
          label: str, name: str) -> None:
    fig = Figure(figsize=(5, 3.2))
    ax = fig.subplots()
    for model in sorted({p.model for p in layers}):
        pts = [p for p in layers if p.model == model and metric in p.seeds]
        ax.plot([p.depth for p in pts], [p.mean(metric) for p in pts], marker="o", label=model)
    if metric != "accuracy":
        ax.axhline(0, color="k", linewidth=0.8)
    ax.set_xlabel("relative depth (0 = embeddings, 1 = top layer)")
    ax.set_ylabel(label)
    ax.set_title(task)
    ax.legend(fontsize=7)
    sec.image(plots.save(fig, f"{name}_{slug(task)}"), f"{task}: {label} per layer")


def section_probes(data: Data, plots: Plots) -> tuple[Section, list[ProbeLayer]]:
    sec = Section("4. Score per layer (linear probes with controls)")
    layers = probe_layers(data)
    if not layers:
        sec.text("Skipped: no probe rows (mode 'probe' with a layer).")
        return sec, []
    sec.text(
        "A linear probe per layer, over probe seeds. Tag tasks: each probe beside a control task "
        "(Hewitt & Liang 2019: a fixed random label per word type, drawn from the tag "
        "distribution), both scored on test tokens of types seen in training; selectivity = "
        "accuracy on those tokens − control accuracy. A probe that memorises word types scores "
        "high on both: only selectivity reads what the layer encodes. Other kinds have no "
        "per-type control: their floor is the better of the majority class and a probe trained "
        "on shuffled labels. Layers at relative depth (0 = embeddings, 1 = top)."
    )
    best = best_layers(layers)
    sec.table(["task", "model", "layer", "depth", "accuracy", "control / floor",
               "selectivity / above floor", "seeds", "best layer?", "vs baseline"],
              _table_rows(data, layers, best))  # fmt: skip
    for task in sorted({p.task for p in layers}):
        mine = [p for p in layers if p.task == task]
        _plot(plots, sec, task, mine, "accuracy", "probe test accuracy", "probes")
        control = next((p.control for p in mine if p.control), None)
        if control is not None:
            label = "selectivity" if control == "selectivity" else "accuracy above floor"
            _plot(plots, sec, task, mine, control, label, "selectivity")
    return sec, layers


# ------------------------------------------------------------------------------ contamination

AUDIT = (
    "select task, corpus_id, examples, short_examples, ngram_examples, verbatim_examples, "
    "ngram_share, verbatim_share, ngram_words, ngram_chars, warn_share, adapted "
    "from contamination{scope} order by task"
)


def section_audit(data: Data) -> tuple[Section, list[str]]:
    """The audit table, and the warning lines (a share above `audit.warn_share`) that the
    report also puts at its top."""
    sec = Section("12. Contamination audit (test examples in the pretraining corpus)")
    if not data.has("contamination"):
        sec.text("Skipped: no audit rows (the transfer stage audits each task once its corpus "
                 "is ingested; `audit.enabled`).")  # fmt: skip
        return sec, []
    scope = " where run_id in (select run_id from runs)" if data.has("runs") else ""
    rows = data.rows(AUDIT.format(scope=scope))
    if not rows:
        sec.text("Skipped: no audit rows for this experiment.")
        return sec, []
    first = rows[0]
    sec.text(
        f"Share of each task's test examples that share a {first['ngram_words']}-word n-gram "
        f"(CJK text: a {first['ngram_chars']}-character span) with a pretraining document, and "
        "that occur in one verbatim; an example shorter than n counts only when verbatim."
    )
    warnings = [
        f"**Warning**: {r['task']}: {r['ngram_share']:.1%} of its test examples overlap the "
        f"pretraining corpus (above audit.warn_share {r['warn_share']:.1%}); its scores may "
        "measure memory, not transfer." for r in rows if r["ngram_share"] > r["warn_share"]
    ]
    for line in warnings:
        sec.text(line)
    for r in rows:
        if r["adapted"]:
            sec.text(f"{r['task']}: {', '.join(r['adapted'])} adapted on this task's text, test "
                     "split included: they saw the test text by design.")  # fmt: skip
    sec.table(
        ["task", "corpus", "test examples", "n-gram overlap", "verbatim", "shorter than n",
         "adapted on its text"],
        [[r["task"], r["corpus_id"][:12], r["examples"],
          f"{r['ngram_share']:.1%} ({r['ngram_examples']})",
          f"{r['verbatim_share']:.1%} ({r['verbatim_examples']})", r["short_examples"],
          ", ".join(r["adapted"]) or "–"] for r in rows],
    )  # fmt: skip
    return sec, warnings
