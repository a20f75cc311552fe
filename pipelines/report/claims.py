"""The claims: one line each saying whether this run supports it, with the numbers.

Every claim reads typed findings (`findings.Findings`) that the sections computed, never the
report's rendered sentences.
"""

from __future__ import annotations

import math

from scipy import stats

from pipelines.report.document import NOT_MEASURED, Claim, overall
from pipelines.report.findings import Findings, ModePair, is_pos, is_wic
from pipelines.report.scores import Diff, budget_order, family_of, versus_baseline_text
from pipelines.report.sections_scores import MASK_PARAM

WIC_CHANCE = 0.5  # word-in-context test sets are balanced
CHANCE_BAND = 0.05  # "about chance": within 5 points (or the CI) of it


def _budgets(pairs: list[ModePair]) -> str:
    return "/".join(sorted({p.budget for p in pairs}, key=budget_order))


def claim_few_labels(found: Findings) -> Claim:
    name = "Pretrained beats scratch when labels are few"
    pairs = found.few_labels
    if not pairs:
        return Claim(name, NOT_MEASURED, f"{name}: not measured (no finetune/scratch pairs).")
    small = [p for p in pairs if p.budget == found.budgets[p.task][0]]
    large = [p for p in pairs if p.budget == found.budgets[p.task][-1]
             and p.budget != found.budgets[p.task][0]]  # fmt: skip
    verdict = overall(sum(p.diff.above for p in small), len(small))

    def detail(ps: list[ModePair]) -> str:
        return "; ".join(
            f"{p.model}/{p.task} {p.a.mean:.3f} vs {p.b.mean:.3f}, {p.diff.text()}"
            f"{', below baseline' if p.a_vs_baseline and p.a_vs_baseline.below else ''}"
            for p in ps
        )

    line = f"{name}: {verdict} at {_budgets(small)} labels ({detail(small)})"
    if large:
        line += f"; at {_budgets(large)}: {detail(large)}"
    return Claim(name, verdict, line + ".")


def claim_convergence(found: Findings) -> Claim:
    name = "Pretrained converges faster"
    reached, unit = found.convergence.reached, found.convergence.unit
    pairs = [
        (k, s, reached[k.but(mode="scratch")])
        for k, s in sorted(reached.items())
        if k.mode == "finetune" and k.but(mode="scratch") in reached
    ]
    if not pairs:
        return Claim(name, NOT_MEASURED, f"{name}: not measured (no finetune and scratch curves).")
    verdict = overall(sum(ft.mean < sc.mean for _, ft, sc in pairs), len(pairs))
    detail = "; ".join(
        f"{k.model}/{k.task}@{k.budget} {ft.mean:.1f} vs {sc.mean:.1f} {unit}"
        for k, ft, sc in pairs
    )
    return Claim(
        name,
        verdict,
        f"{name} ({unit} to 95% of final dev accuracy, finetune vs scratch): {verdict} ({detail}).",
    )


def _pairs_claim(name: str, pairs: list[ModePair], what: str = "", where: str = "") -> Claim:
    """Supported where the first score of each pair beats the second beyond their intervals;
    the line gives every pair's numbers."""
    verdict = overall(sum(p.diff.above for p in pairs), len(pairs))
    detail = "; ".join(
        f"{p.model}/{p.task}@{p.budget} {p.a.mean:.3f} vs {p.b.mean:.3f}, {p.diff.text()}"
        for p in pairs
    )
    return Claim(name, verdict, f"{name}{what}: {verdict}{where} ({detail}).")


def claim_frozen_finetune(found: Findings) -> Claim:
    name = "Fine-tuning beats frozen features"
    pairs = [p for p in found.frozen_finetune if p.budget == found.budgets[p.task][-1]]
    if not pairs:
        return Claim(name, NOT_MEASURED, f"{name}: not measured (no frozen/finetune pairs).")
    return _pairs_claim(name, pairs, where=" at the largest budget")


def claim_adaptation(found: Findings) -> Claim:
    """ULMFiT's middle stage: the model adapted on the task's text vs its parent, fine-tuned."""
    name = "Domain adaptation helps"
    if not found.adapted:
        why = "no <family>+adapt runs; see transfer.adapt"
        return Claim(name, NOT_MEASURED, f"{name}: not measured ({why}).")
    return _pairs_claim(name, found.adapted, what=" (finetune, adapted vs parent)")


def claim_partial(found: Findings) -> Claim:
    """Rising where the score at the most loaded layers beats the fewest (and, with three or
    more points, the rank correlation with k is positive); partial:k:frozen curves count too."""
    name = "Loading more pretrained layers helps (partial:k)"
    curves = [c for c in found.partial if len(c.points) >= 2]
    if not curves:
        return Claim(
            name,
            NOT_MEASURED,
            f"{name}: not measured (needs partial:k and scratch or two values of k).",
        )
    hits = 0
    parts = []
    for curve in curves:
        means = [s.mean for _, s in curve.points]
        rising = means[-1] > means[0]
        if rising and len(means) >= 3:  # and no worse than flat overall
            rising = stats.spearmanr([k for k, _ in curve.points], means).statistic > 0
        hits += rising
        parts.append(f"{curve.label} " + ", ".join(f"k={k} {s.mean:.3f}" for k, s in curve.points))
    verdict = overall(hits, len(curves))
    return Claim(name, verdict, f"{name}: {verdict} ({'; '.join(parts)}).")


def claim_lower_layers(found: Findings) -> Claim:
    name = "Lower layers are more general (best probe layer for POS below WiC's)"
    pos = {m: layer for (t, m), layer in found.best_layers.items() if is_pos(t)}
    wic = {m: layer for (t, m), layer in found.best_layers.items() if is_wic(t)}
    both = sorted(set(pos) & set(wic))
    if not both:
        return Claim(
            name,
            NOT_MEASURED,
            f"{name}: not measured (needs probes on a POS and a WiC task for the same model).",
        )
    verdict = overall(sum(pos[m] < wic[m] for m in both), len(both))
    detail = "; ".join(f"{m} POS layer {pos[m]} vs WiC layer {wic[m]}" for m in both)
    return Claim(name, verdict, f"{name}: {verdict} ({detail}).")


def claim_word2vec_wic(found: Findings) -> Claim:
    name = "Static word2vec is at chance on WiC"
    if not found.word2vec_wic:
        return Claim(
            name, NOT_MEASURED, f"{name}: not measured (no word2vec result on a WiC task)."
        )
    hits = 0
    parts = []
    for task, best, gap in found.word2vec_wic:
        stat = best.stat
        band = max(CHANCE_BAND, 0.0 if math.isnan(stat.ci) else stat.ci)
        hits += abs(stat.mean - WIC_CHANCE) <= band
        parts.append(
            f"{task}@{best.budget} best mode {best.mode} {stat.text()} vs chance "
            f"{WIC_CHANCE:.2f}, {versus_baseline_text(gap)}"
        )
    sep = [r.separation for r in found.polysemy if family_of(r.model) == "word2vec"]
    if sep:
        parts.append(f"polysemy separation {sep[0]:+.3f}")
    verdict = overall(hits, len(found.word2vec_wic))
    return Claim(name, verdict, f"{name}: {verdict} ({'; '.join(parts)}).")


def claim_scalar_mix(found: Findings) -> Claim:
    name = "Scalar mix ≥ best single layer (frozen)"
    singles = found.singles
    if not singles:
        return Claim(
            name, NOT_MEASURED, f"{name}: not measured (no frozen:layer=N runs beside frozen)."
        )
    verdict = overall(sum(s.mix.mean >= s.best.mean for s in singles), len(singles))
    detail = "; ".join(
        f"{s.model}/{s.task}@{s.budget} mix {s.mix.mean:.3f} vs layer {s.layer} "
        f"{s.best.mean:.3f}, {s.diff.text()}"
        for s in singles
    )
    return Claim(name, verdict, f"{name}: {verdict} ({detail}).")


def claim_masking(found: Findings) -> Claim:
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
    hits = 0
    parts = []
    for (task, mode, b), variants in sorted(cells.items()):
        lo, hi = variants[0], variants[-1]
        d = Diff.of(hi.stat, lo.stat)
        hits += Diff(abs(d.value), d.ci).above
        parts.append(
            f"{task}/{mode}@{b} mask {hi.mask_prob:g}: {hi.stat.mean:.3f} vs "
            f"{lo.mask_prob:g}: {lo.stat.mean:.3f}, {d.text()}"
        )
    verdict = overall(hits, len(cells))
    return Claim(name, verdict, f"{name}: {verdict} ({'; '.join(parts)}).")


def all_claims(found: Findings) -> list[Claim]:
    """The claims in the order the report lists them."""
    return [
        claim_few_labels(found),
        claim_convergence(found),
        claim_frozen_finetune(found),
        claim_partial(found),
        claim_lower_layers(found),
        claim_word2vec_wic(found),
        claim_scalar_mix(found),
        claim_masking(found),
        claim_adaptation(found),
    ]
