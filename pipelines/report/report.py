"""The transfer report: what pretraining was worth in this run, read from the catalog alone.

`build_report` is the entry: it opens the catalog (`scores`), draws the eight sections
(`sections_scores`, `sections_layers`) and the break-even and label-equivalent readings of
pretraining points (`sections_points`), judges the claims on the findings the sections computed
(`claims`, by the paired rule of `stats.RULE`), adds the table of every claim's paired cells,
and writes report.md, report.html and the PNGs (`render`), the rules printed verbatim on top.
Each claim gets one line with its outcome and the numbers, and a pilot line; every neural
number is read against the task's non-neural baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipelines.report.claims import all_claims, undecided
from pipelines.report.document import Claim, Plots, Section
from pipelines.report.findings import (
    Findings,
    adapted_pairs,
    best_at_largest,
    is_wic,
    pairs,
    partial_curves,
    single_layers,
)
from pipelines.report.readings import CONVERGENCE_RULE
from pipelines.report.render import render_html, render_markdown
from pipelines.report.scores import Data, QueryFn, open_catalog
from pipelines.report.sections_layers import (
    section_equal_budget,
    section_masking,
    section_modes,
    section_polysemy,
)
from pipelines.report.sections_points import section_break_even, section_label_equivalents
from pipelines.report.sections_probes import best_layers, section_audit, section_probes
from pipelines.report.sections_scores import (
    section_budget,
    section_convergence,
    section_pretraining,
)
from pipelines.report.stats import RULE
from pipelines.report.verdicts import CELL_HEADERS
from storage.atomic import write_bytes

PROTOCOL = (RULE, CONVERGENCE_RULE)  # printed verbatim at the top of every report


@dataclass(frozen=True)
class ReportResult:
    markdown_path: Path
    html_path: Path
    pngs: list[Path]
    claims: list[Claim]


def build_report(
    store: Path,
    out_dir: Path,
    query: QueryFn | None = None,
    title: str = "pretrainlab report",
    experiment: str | None = None,
) -> ReportResult:
    """Write report.md, report.html and the PNGs into `out_dir` from the store's catalog.

    `query` runs SQL on a refreshed catalog (default: `<store>/catalog.duckdb`, read-only);
    refresh it before calling, since this layer cannot read MLflow itself. `experiment`
    limits the default catalog to that experiment's runs and rows (default: the whole store).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if query is None:
        with open_catalog(Path(store), experiment) as run_query:
            return _build(Data(run_query), out_dir, title)
    return _build(Data(query), out_dir, title)


def _build(data: Data, out_dir: Path, title: str) -> ReportResult:
    plots = Plots(out_dir)
    pretraining = section_pretraining(data, plots)
    budget = section_budget(data, plots)
    convergence, reached = section_convergence(data, plots)
    probes, probe_layers = section_probes(data, plots)
    modes = section_modes(data, plots)
    masking, mask_cells = section_masking(data)
    equal_budget = section_equal_budget(data, plots)
    polysemy, poly_rows = section_polysemy(data, plots)
    sections: list[Section] = [pretraining, budget, convergence, probes, modes, masking,
                               equal_budget, polysemy]  # fmt: skip
    wic_tasks = sorted({k.task for k in data.cells() if is_wic(k.task)})
    word2vec = [(t, best, data.against_baseline(t, best.budget, best.stat))
                for t in wic_tasks if (best := best_at_largest(data, t, "word2vec"))]  # fmt: skip
    found = Findings(
        few_labels=pairs(data, "finetune", "scratch"),
        budgets={task: data.budgets(task) for task in {k.task for k in data.cells()}},
        convergence=reached,
        frozen_finetune=pairs(data, "finetune", "frozen"),
        partial=partial_curves(data),
        best_layers=best_layers(probe_layers),
        word2vec_wic=word2vec,
        polysemy=poly_rows,
        singles=single_layers(data),
        masking=mask_cells,
        adapted=adapted_pairs(data),
        probes=probe_layers,
    )
    claims = all_claims(data, found)
    sections.append(section_cells(claims))
    sections += [section_break_even(data, plots, out_dir), section_label_equivalents(data, out_dir)]
    audit, warnings = section_audit(data)
    sections.append(audit)
    if warnings:  # read before anything else: these tasks' scores may measure memory
        top = Section("Contamination warning")
        for line in warnings:
            top.text(line)
        sections.insert(0, top)
    protocol = tuple(p for p in (*PROTOCOL, tuning_effort(data)) if p)
    md = render_markdown(title, claims, sections, protocol)
    page = render_html(title, claims, sections, protocol)
    md_path = write_bytes(out_dir / "report.md", md.encode())
    html_path = write_bytes(out_dir / "report.html", page.encode())
    return ReportResult(md_path, html_path, list(plots.paths), claims)


def tuning_effort(data: Data) -> str:
    """Every mode should search a learning-rate grid of the same size (the same chances to
    shine on dev); say so, or flag the modes that searched more."""
    grids = data.rates_per_mode()
    if not grids:
        return ""
    sizes = {size for found in grids.values() for size in found}
    listing = ", ".join(f"{kind} {'/'.join(map(str, sorted(found)))}"
                        for kind, found in sorted(grids.items()))  # fmt: skip
    if len(sizes) == 1:
        return f"**Tuning effort.** Every mode chose its rate on dev from a grid of {sizes.pop()}."
    return (f"**Unequal tuning effort.** Learning rates searched on dev per mode: {listing}. "
            "A mode with a larger grid has more chances to score well on dev; give every mode "
            "a grid of the same size (`transfer.lrs`) before trusting a comparison of modes.")


def section_cells(claims: list[Claim]) -> Section:
    """Every claim's paired cells: what each verdict rests on."""
    sec = Section("9. Paired comparisons behind the claims")
    rows = [row for c in claims for row in c.cells]
    if not rows:
        sec.text("Skipped: no claim has paired cells.")
        return sec
    sec.text(
        "First arm minus second, paired by seed (the rule in Protocol): mean difference, its 95% "
        "t interval, the p-value after Holm's correction over the claim's cells, the verdict, "
        "and the minimum detectable effect (not an equivalence bound). The bootstrap interval "
        "over test items × seeds, from the per-item predictions, is shown beside it and does "
        "not decide; n/a where predictions are missing or the headline is not a mean over items."
    )
    sec.table(CELL_HEADERS, rows)
    cannot = undecided(claims)
    if cannot:
        sec.text(f"**This run's size cannot decide**: {'; '.join(cannot)} (see each pilot line).")
    return sec
