"""Report sections 5-8: transfer modes, masking, equal budget, polysemy (4, the probes, is in
`sections_probes`).

Each section returns its `Section` and, where a claim judges it, the typed findings it drew.
"""

from __future__ import annotations

from matplotlib.figure import Figure

from pipelines.report.document import Plots, Section
from pipelines.report.findings import (
    MaskingCell,
    PartialCurve,
    PolysemyRow,
    best_at_largest,
    pairs,
    partial_curves,
    single_layers,
)
from pipelines.report.scores import BASE, Data, Stat, versus_baseline_text
from pipelines.report.sections_scores import MASK_PARAM, behind_transfer, pretrain_rows
from storage.scores import cell_stats

# ----------------------------------------------------------------------------------- modes

SINGLE_HEADERS = ["task", "model", "budget", "frozen scalar mix", "best single layer",
                  "its score", "mix − best"]  # fmt: skip
PARTIAL_HEADERS = ["task", "model", "budget", "k (0 = scratch): accuracy"]


def _curve_rows(curves: list[PartialCurve]) -> list[list[str]]:
    return [
        [c.task, c.model, c.budget, "; ".join(f"k={k}: {s.text()}" for k, s in c.points)]
        for c in curves
    ]


def _partial_plot(curves: list[PartialCurve], plots: Plots, sec: Section) -> None:
    fig = Figure(figsize=(5, 3.2))
    ax = fig.subplots()
    for c in curves:
        label = f"{c.task}/{c.model}/{c.budget}" + (" frozen" if c.frozen else "")
        ax.plot([k for k, _ in c.points], [s.mean for _, s in c.points], marker="o", label=label)
    ax.set_xlabel("pretrained layers loaded (k)")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=6)
    sec.image(plots.save(fig, "partial_k"), "Accuracy vs pretrained layers loaded")


def section_modes(data: Data, plots: Plots) -> Section:
    sec = Section("5. Frozen vs fine-tune, scalar mix vs single layer, partial:k")
    finetune_frozen = pairs(data, "finetune", "frozen")
    singles = single_layers(data)
    curves = partial_curves(data)
    if not (finetune_frozen or singles or curves):
        sec.text("Skipped: no frozen/finetune pairs, single-layer or partial:k runs.")
        return sec
    if finetune_frozen:
        sec.table(
            ["task", "model", "budget", "finetune", "frozen (mix)", "finetune − frozen"],
            [[p.task, p.model, p.budget, p.a.text(), p.b.text(), p.diff.text()]
             for p in finetune_frozen],
        )  # fmt: skip
    if singles:
        sec.table(
            SINGLE_HEADERS,
            [[s.task, s.model, s.budget, s.mix.text(), s.layer, s.best.text(), s.diff.text()]
             for s in singles],
        )  # fmt: skip
    tuned = [c for c in curves if not c.frozen]
    frozen = [c for c in curves if c.frozen]
    if tuned:
        sec.table(PARTIAL_HEADERS, _curve_rows(tuned))
    if frozen:
        sec.text("partial:k:frozen (the k loaded layers frozen, the rest trained):")
        sec.table(PARTIAL_HEADERS, _curve_rows(frozen))
    if curves:
        _partial_plot(curves, plots, sec)
    return sec


# --------------------------------------------------------------------------------- masking


def _masking_cells(data: Data) -> list[MaskingCell]:
    """BERT's headline scores per task, mode, budget and model, beside the mask_replace_prob
    its pretrain run logged, with each seed's score (the masking claim pairs them by seed).
    BERT means the architecture: a variant (`pretrain.variants`, family tag = its own name)
    counts as well, one cell per model (`model`: its name, with @version when a name has
    several). A row finds its pretrain run through its model_version; a bare version number
    repeats across registered models, so it matches only within its own name (family)."""
    if not (data.has_results and data.has("runs", "params")):
        return []
    keys = "select run_id, run_id as key from bert_runs"
    if data.has("model_versions"):
        keys += (
            " union select mv.run_id, unnest([mv.name || '/' || mv.version, "
            "'models:/' || mv.name || '/' || mv.version, mv.name || ':' || mv.version, "
            "b.family || '#' || cast(mv.version as varchar)]) from model_versions mv "
            "join bert_runs b on b.run_id = mv.run_id"
        )
    where = "headline and mode <> 'probe' and task <> 'polysemy'"
    masked = (
        BASE
        + f""",
bert_runs as (
    select r.run_id, r.family, try_cast(p.value as double) as mrp from runs r
    join params p on p.run_id = r.run_id and p.key = '{MASK_PARAM}'
    where r.stage = 'pretrain' and coalesce(r.tags['architecture'], r.family) = 'bert'),
keys as (select distinct run_id, key from ({keys})),
masked as (
    select c.*, br.mrp from chosen c
    join keys k on k.key in (cast(c.model_version as varchar),
                             c.family || '#' || cast(c.model_version as varchar))
    join bert_runs br on br.run_id = k.run_id)
"""
    )
    cell = ("task", "mode", "b", "model", "mrp")
    stats = data.rows(
        masked + cell_stats("masked", cell, where) + " order by task, mode, b, mrp, model"
    )
    seeds: dict[tuple, dict[int, float]] = {}
    for r in data.rows(masked + cell_stats("masked", (*cell, "seed"), where)):
        seeds.setdefault(tuple(r[c] for c in cell), {})[int(r["seed"])] = float(r["mean"])
    return [
        MaskingCell(r["task"], r["mode"], r["b"], r["mrp"], Stat.of_row(r), model=r["model"],
                    seeds=seeds.get(tuple(r[c] for c in cell), {}))
        for r in stats
    ]  # fmt: skip


def section_masking(data: Data) -> tuple[Section, list[MaskingCell]]:
    sec = Section("6. Masking ablation (BERT mask_replace_prob)")
    cells = _masking_cells(data)
    if len({c.mask_prob for c in cells}) < 2:
        sec.text(
            "Skipped: needs two BERT model versions (or a variant in pretrain.variants) whose "
            f"pretraining differs in {MASK_PARAM}, both with transfer results."
        )
        return sec, []
    sec.table(
        ["task", "mode", "budget", "model", "mask_replace_prob", "headline", "n", "vs baseline"],
        [[c.task, c.mode, c.budget, c.model, c.mask_prob, c.stat.text(), c.stat.n,
          versus_baseline_text(data.against_baseline(c.task, c.budget, c.stat))]
         for c in cells],
    )  # fmt: skip
    return sec, cells


# ---------------------------------------------------------------------------- equal budget


def section_equal_budget(data: Data, plots: Plots) -> Section:
    sec = Section("7. Families side by side at equal pretraining budget")
    pre = behind_transfer(pretrain_rows(data))
    tasks = sorted({k.task for k in data.cells()})
    if not pre:
        sec.text("Skipped: no finished pretrain runs with tokens/FLOPs/wall time.")
        return sec
    for key, label in (("tokens_seen", "tokens seen"), ("flops", "FLOPs"), ("wall_s", "wall s")):
        vals = [r[key] for r in pre if r[key]]
        if vals:
            sec.text(
                f"{label}: {min(vals):.3g} to {max(vals):.3g} "
                f"(max/min ×{max(vals) / min(vals):.2f})."
            )
    rows = []
    points = []
    for r in pre:
        best = [(t, best_at_largest(data, t, r["family"])) for t in tasks]
        cells = [f"{x.stat.mean:.3f} ({x.mode}, {x.budget})" if x else "–" for _, x in best]
        rows.append([r["family"], r["run_name"], r["tokens_seen"], r["flops"], r["wall_s"], *cells])
        points += [(t, r["family"], r["flops"], x.stat.mean) for t, x in best if x and r["flops"]]
    sec.table(
        ["family", "run", "tokens seen", "FLOPs", "wall s",
         *[f"{t}: best pretrained mode" for t in tasks]],
        rows,
    )  # fmt: skip
    if points:
        fig = Figure(figsize=(5, 3.2))
        ax = fig.subplots()
        for task in sorted({p[0] for p in points}):
            pts = [p for p in points if p[0] == task]
            ax.scatter([p[2] for p in pts], [p[3] for p in pts], label=task)
            for p in pts:
                ax.annotate(p[1], (p[2], p[3]), fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("pretraining FLOPs")
        ax.set_ylabel("test accuracy (largest budget)")
        ax.legend(fontsize=7)
        sec.image(plots.save(fig, "equal_budget"), "Transfer accuracy vs pretraining FLOPs")
    return sec


# -------------------------------------------------------------------------------- polysemy


def _polysemy_rows(data: Data) -> list[PolysemyRow]:
    if not data.has_results:
        return []
    found = data.rows(
        BASE + "select model, coalesce(layer, 0) as layer, "
        "avg(value) filter (where metric = 'same_sense_sim') as same, "
        "avg(value) filter (where metric = 'diff_sense_sim') as diff, count(*) as n "
        "from res where task = 'polysemy' and metric in ('same_sense_sim', 'diff_sense_sim') "
        "group by all order by model, layer"
    )
    return [
        PolysemyRow(r["model"], r["layer"], r["same"], r["diff"])
        for r in found
        if r["same"] is not None and r["diff"] is not None
    ]


def section_polysemy(data: Data, plots: Plots) -> tuple[Section, list[PolysemyRow]]:
    sec = Section("8. Polysemy: same-sense vs different-sense similarity")
    rows = _polysemy_rows(data)
    if not rows:
        sec.text("Skipped: no polysemy rows (task 'polysemy').")
        return sec, []
    sec.text(
        "Cosine similarity of an ambiguous word's representation across two sentences; a "
        "model that separates senses has same > different."
    )
    sec.table(
        ["model", "layer", "same sense", "different sense", "separation"],
        [[r.model, r.layer, r.same, r.diff, r.separation] for r in rows],
    )
    fig = Figure(figsize=(5, 3.2))
    ax = fig.subplots()
    for model in sorted({r.model for r in rows}):
        pts = [r for r in rows if r.model == model]
        ax.plot([r.layer for r in pts], [r.separation for r in pts], marker="o", label=model)
    ax.axhline(0, color="k", linewidth=0.8)
    ax.set_xlabel("layer")
    ax.set_ylabel("same − different similarity")
    ax.legend(fontsize=7)
    sec.image(plots.save(fig, "polysemy"), "Sense separation per family and layer")
    return sec, rows

