"""The claims: one line each with the outcome the paired rule gives (`stats.RULE`, applied by
`verdicts.judge`) and the numbers, a pilot line (how many seeds would decide it) and its rows of
the paired-cell table.

Every claim reads typed findings (`findings.Findings`) that the sections computed, never the
report's rendered sentences, and each task's headline metric.
"""

from __future__ import annotations

from pipelines.report.document import NOT_MEASURED, Claim
from pipelines.report.findings import Findings, ModePair, ProbeLayer, is_wic
from pipelines.report.scores import Data, budget_order, family_of, versus_baseline_text
from pipelines.report.sections_scores import MASK_PARAM
from pipelines.report.stats import Outcome, Verdict
from pipelines.report.verdicts import (
    Cell,
    Judged,
    cell_rows,
    cell_text,
    judge,
    pilot,
    score_cell,
    seeds_cell,
)

WIC_CHANCE = 0.5  # word-in-context test sets are balanced
STEPS_WORDS = {Verdict.BETTER: "more steps", Verdict.WORSE: "fewer steps"}  # finetune − scratch


def _budgets(pairs: list[ModePair]) -> str:
    return "/".join(sorted({p.budget for p in pairs}, key=budget_order))


def _judged_claim(name: str, judged: Judged, text: str, unit: str = "") -> Claim:
    """The claim with its outcome, its cells' numbers in the line, a pilot and table rows."""
    detail = "; ".join(cell_text(c, judged) for c in judged.cells)
    return Claim(name, judged.outcome.value, f"{name}{text}: {judged.outcome.value} ({detail}).",
                 pilot(judged, unit), cell_rows(name, judged))  # fmt: skip


def _pair_cells(data: Data, pairs: list[ModePair], with_budget: bool = True) -> list[Cell]:
    return [
        score_cell(data, f"{p.model}/{p.task}" + (f"@{p.budget}" if with_budget else ""),
                   p.a_key, p.b_key)
        for p in pairs
    ]  # fmt: skip


def claim_few_labels(data: Data, found: Findings) -> Claim:
    name = "Pretrained beats scratch when labels are few"
    pairs = found.few_labels
    if not pairs:
        return Claim(name, NOT_MEASURED, f"{name}: not measured (no finetune/scratch pairs).")
    small = [p for p in pairs if p.budget == found.budgets[p.task][0]]
    judged = judge(_pair_cells(data, small, with_budget=False))
    below = [f"{p.model}/{p.task}" for p in small if p.a_vs_baseline and p.a_vs_baseline.below]
    note = f"; finetune below baseline: {', '.join(below)}" if below else ""
    claim = _judged_claim(name, judged, f" (finetune vs scratch at {_budgets(small)} labels)")
    return Claim(claim.name, claim.verdict, claim.line[:-2] + note + ").", claim.pilot,
                 claim.cells)  # fmt: skip


def claim_convergence(data: Data, found: Findings) -> Claim:
    name = "Pretrained converges faster"
    conv, unit = found.convergence, found.convergence.unit
    keys = [k for k in sorted(conv.steps) if k.mode == "finetune"
            and k.but(mode="scratch") in conv.steps]  # fmt: skip
    if not keys:
        return Claim(name, NOT_MEASURED, f"{name}: not measured (no finetune and scratch curves).")
    cells = [
        seeds_cell(f"{k.model}/{k.task}@{k.budget}", conv.steps[k], conv.steps[s],
                   k in conv.unconverged or s in conv.unconverged)
        for k in keys if (s := k.but(mode="scratch"))
    ]  # fmt: skip
    judged = judge(cells, sign=-1)
    detail = "; ".join(cell_text(c, judged, 1, STEPS_WORDS) for c in judged.cells)
    return Claim(
        name,
        judged.outcome.value,
        f"{name} ({unit} to 95% of the dev gain, finetune vs scratch, fewer is faster): "
        f"{judged.outcome.value} ({detail}).",
        pilot(judged, f" {unit}"),
        cell_rows(name, judged, 1, STEPS_WORDS),
    )


def claim_frozen_finetune(data: Data, found: Findings) -> Claim:
    name = "Fine-tuning beats frozen features"
    pairs = [p for p in found.frozen_finetune if p.budget == found.budgets[p.task][-1]]
    if not pairs:
        return Claim(name, NOT_MEASURED, f"{name}: not measured (no frozen/finetune pairs).")
    return _judged_claim(name, judge(_pair_cells(data, pairs)), " at the largest budget")


def claim_adaptation(data: Data, found: Findings) -> Claim:
    """ULMFiT's middle stage: the model adapted on the task's text vs its parent, fine-tuned."""
    name = "Domain adaptation helps"
    if not found.adapted:
        why = "no <family>+adapt runs; see transfer.adapt"
        return Claim(name, NOT_MEASURED, f"{name}: not measured ({why}).")
    judged = judge(_pair_cells(data, found.adapted))
    return _judged_claim(name, judged, " (finetune, adapted vs parent)")


def claim_partial(data: Data, found: Findings) -> Claim:
    """Loading the most layers (largest k) against the fewest (scratch as k = 0), paired; the
    line also lists every point of each curve."""
    name = "Loading more pretrained layers helps (partial:k)"
    curves = [c for c in found.partial if len(c.points) >= 2]
    if not curves:
        return Claim(
            name,
            NOT_MEASURED,
            f"{name}: not measured (needs partial:k and scratch or two values of k).",
        )
    cells = []
    for c in curves:
        lo, hi = min(c.keys), max(c.keys)
        cells.append(score_cell(data, f"{c.label} k={hi} vs k={lo}", c.keys[hi], c.keys[lo]))
    judged = judge(cells)
    curves_text = "; ".join(
        f"{c.label} " + ", ".join(f"k={k} {s.mean:.3f}" for k, s in c.points) for c in curves
    )
    claim = _judged_claim(name, judged, "")
    return Claim(name, claim.verdict, claim.line[:-2] + f"; curves: {curves_text}).",
                 claim.pilot, claim.cells)  # fmt: skip


def _layer_cells(found: Findings) -> list[Cell]:
    """Per (task, model) with a layer 1 below its top layer, paired by probe seed: a tag task's
    selectivity at layer 1 minus at the top (syntax is general: lower layers more selective);
    a WiC task's accuracy above its floor at the top minus at layer 1 (senses sit higher)."""
    layers: dict[tuple[str, str], dict[int, ProbeLayer]] = {}
    for p in found.probes:
        layers.setdefault((p.task, p.model), {})[p.layer] = p
    cells = []
    for (task, model), by_layer in sorted(layers.items()):
        top = max(by_layer)
        low, high = by_layer.get(1), by_layer[top]
        if low is None or top < 2 or low.control != high.control:
            continue
        if low.control == "selectivity":
            cells.append(seeds_cell(f"{model}/{task} selectivity layer 1 vs {top}",
                                    low.seeds["selectivity"], high.seeds["selectivity"]))
        elif low.control == "above_floor" and is_wic(task):
            cells.append(seeds_cell(f"{model}/{task} above floor layer {top} vs 1",
                                    high.seeds["above_floor"], low.seeds["above_floor"]))
    return cells


def claim_lower_layers(found: Findings) -> Claim:
    """Read on selectivity, not raw probe accuracy (a probe can memorise word types), paired by
    probe seed, one cell per (task, model); layer 1 is the lowest contextual layer (layer 0,
    the static embeddings, makes a per-type control trivial)."""
    name = "Lower layers are more general (probe selectivity: tags peak low, WiC high)"
    cells = _layer_cells(found)
    if not cells:
        return Claim(
            name,
            NOT_MEASURED,
            f"{name}: not measured (needs probes with controls on a tag task, or a WiC task, "
            "for a model with at least two layers above its embeddings).",
        )
    return _judged_claim(name, judge(cells), "")


def claim_word2vec_wic(data: Data, found: Findings) -> Claim:
    """Each WiC cell against chance, paired with a constant arm. The rule never turns "no
    detectable difference" into equivalence, so the claim is contradicted by a cell that
    differs from chance and otherwise inconclusive."""
    name = "Static word2vec is at chance on WiC"
    if not found.word2vec_wic:
        return Claim(
            name, NOT_MEASURED, f"{name}: not measured (no word2vec result on a WiC task)."
        )
    cells = []
    for task, best, gap in found.word2vec_wic:
        seeds = data.seeds(data.key(task, "word2vec", best.mode, best.budget))
        label = f"{task}@{best.budget} {best.mode} vs chance ({versus_baseline_text(gap)})"
        cells.append(seeds_cell(label, seeds, {s: WIC_CHANCE for s in seeds}))
    judged = judge(cells, sign=0)
    outcome = Outcome.CONTRADICTED if judged.outcome == Outcome.SUPPORTED else Outcome.INCONCLUSIVE
    sep = [r.separation for r in found.polysemy if family_of(r.model) == "word2vec"]
    extra = f"; polysemy separation {sep[0]:+.3f}" if sep else ""
    detail = "; ".join(cell_text(c, judged) for c in judged.cells)
    return Claim(name, outcome.value, f"{name}: {outcome.value} ({detail}{extra}).",
                 pilot(judged), cell_rows(name, judged))  # fmt: skip


def claim_scalar_mix(data: Data, found: Findings) -> Claim:
    name = "Scalar mix ≥ best single layer (frozen)"
    singles = found.singles
    if not singles:
        return Claim(
            name, NOT_MEASURED, f"{name}: not measured (no frozen:layer=N runs beside frozen)."
        )
    cells = [score_cell(data, f"{s.model}/{s.task}@{s.budget} mix vs layer {s.layer}",
                        s.mix_key, s.best_key) for s in singles]  # fmt: skip
    return _judged_claim(name, judge(cells), "")


def claim_masking(found: Findings) -> Claim:
    """Two-sided: the masking mix matters when any cell differs either way."""
    name = "BERT's masking mix matters"
    by_cell: dict[tuple[str, str, str], list] = {}
    for c in found.masking:
        by_cell.setdefault((c.task, c.mode, c.budget), []).append(c)
    cells = {k: sorted(v, key=lambda c: c.mask_prob) for k, v in by_cell.items() if len(v) >= 2}
    if not cells:
        return Claim(
            name,
            NOT_MEASURED,
            f"{name}: not measured (needs two BERT versions that "
            f"differ in {MASK_PARAM}, both transferred).",
        )
    pairs = [
        seeds_cell(f"{task}/{mode}@{b} mask {v[-1].mask_prob:g} vs {v[0].mask_prob:g}",
                   v[-1].seeds, v[0].seeds)
        for (task, mode, b), v in sorted(cells.items())
    ]  # fmt: skip
    return _judged_claim(name, judge(pairs, sign=0), " (either direction)")


def all_claims(data: Data, found: Findings) -> list[Claim]:
    """The claims in the order the report lists them."""
    return [
        claim_few_labels(data, found),
        claim_convergence(data, found),
        claim_frozen_finetune(data, found),
        claim_partial(data, found),
        claim_lower_layers(found),
        claim_word2vec_wic(data, found),
        claim_scalar_mix(data, found),
        claim_masking(found),
        claim_adaptation(data, found),
    ]


def undecided(claims: list[Claim]) -> list[str]:
    """The claims this run's size cannot decide (their pilot says so)."""
    return [c.name for c in claims if "cannot decide" in c.pilot]
