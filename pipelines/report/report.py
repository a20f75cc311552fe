"""The transfer report: what pretraining was worth in this run, read from the catalog alone.

Every number comes from a DuckDB query over `<store>/catalog.duckdb` (the `results` rows and the
MLflow tables copied there). `pipelines/` may not import MLflow, even through
`storage.catalog`, so this module does not refresh the catalog: its caller refreshes it
(`storage.catalog.refresh(store, tracking_uri)`) or passes its own `query` function.

Each section is a query plus a table and/or a PNG; it skips with a one-line note when its rows
are absent. Each claim gets one line saying whether this run supports it, with the numbers, and
every neural number is read against the task's non-neural baseline. Confidence intervals are
95% Student-t intervals over seeds (mean ± t·sd/√n).
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from matplotlib.figure import Figure
from scipy import stats

from pretrainlab.config import PretrainlabError
from storage.atomic import atomic_path, write_bytes
from storage.layout import Layout

QueryFn = Callable[[str], pa.Table]

MASK_PARAM = "pretrain.bert.mask_replace_prob"
PRETRAIN_KEYS = ("valid_loss", "unigram_entropy", "entropy_gap", "tokens_seen", "wall_s", "flops")
WIC_CHANCE = 0.5  # word-in-context test sets are balanced
CHANCE_BAND = 0.05  # "about chance": within 5 points (or the CI) of it
PARTIAL = re.compile(r"^partial:(\d+)$")
SINGLE_LAYER = re.compile(r"^frozen:layer=(\d+)$")

SUPPORTED, PARTLY, NOT_SUPPORTED, NOT_MEASURED = (
    "supported",
    "partly supported",
    "not supported",
    "not measured",
)


class ReportError(PretrainlabError, RuntimeError):
    """The report cannot be built (no catalog); the message says what to run."""


@dataclass(frozen=True)
class Claim:
    name: str
    verdict: str  # supported | partly supported | not supported | not measured
    line: str  # the one line the report prints, numbers included


@dataclass(frozen=True)
class ReportResult:
    markdown_path: Path
    html_path: Path
    pngs: list[Path]
    claims: list[Claim]


# ---------------------------------------------------------------------------------- numbers


@dataclass(frozen=True)
class Stat:
    """A mean over seeds with its 95% t-interval half-width (nan with one seed)."""

    mean: float
    ci: float
    n: int

    @classmethod
    def of(cls, mean: float, sd: float | None, n: int) -> Stat:
        if n < 2 or sd is None or math.isnan(sd):
            return cls(float(mean), math.nan, n)
        return cls(float(mean), float(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)), n)

    def text(self) -> str:
        return f"{self.mean:.3f}" + ("" if math.isnan(self.ci) else f" ±{self.ci:.3f}")


def _diff(a: Stat, b: Stat) -> tuple[float, float]:
    """a − b and a conservative half-width (the two intervals added in quadrature)."""
    ci = math.sqrt(a.ci**2 + b.ci**2) if not (math.isnan(a.ci) or math.isnan(b.ci)) else math.nan
    return a.mean - b.mean, ci


def _signed(diff: float, ci: float) -> str:
    return f"{diff:+.3f}" + ("" if math.isnan(ci) else f" ±{ci:.3f}")


def _above(diff: float, ci: float) -> bool:
    """Greater than zero beyond its interval (or plainly, with one seed)."""
    return diff - (0.0 if math.isnan(ci) else ci) > 0


def _budget_key(budget: str) -> float:
    return float(budget) if budget.isdigit() else math.inf


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and (abs(value) >= 1e5 or 0 < abs(value) < 1e-3):
        return f"{value:.3g}"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _overall(hits: int, total: int) -> str:
    if total == 0:
        return NOT_MEASURED
    return SUPPORTED if hits == total else PARTLY if hits else NOT_SUPPORTED


# ---------------------------------------------------------------------------------- catalog


# The catalog's tables and views by name (a store may lack some: each section checks).
RELATIONS = (
    "select table_name as name from duckdb_tables() union "
    "select view_name from duckdb_views() where not internal"
)


@contextmanager
def open_catalog(store: Path, experiment: str | None = None) -> Iterator[QueryFn]:
    """A query function on `<store>/catalog.duckdb`, opened read-only for the whole report;
    with `experiment`, it sees only that experiment's runs and result rows."""
    path = Layout.at(store).catalog
    if not path.is_file():
        raise ReportError(
            f"no catalog at {path}: refresh it first (`pretrainlab query --refresh` or "
            "storage.catalog.refresh(store, tracking_uri))"
        )
    with duckdb.connect(str(path), read_only=True) as con:
        if experiment is not None:
            _scope_to_experiment(con, experiment)
        yield lambda sql: con.sql(sql).to_arrow_table()


def _scope_to_experiment(con: duckdb.DuckDBPyConnection, experiment: str) -> None:
    """Shadow `runs` and `results` with temp views of one experiment's runs (its own and its
    `<experiment>/transfer/<task>` ones): one store holds every experiment run on it, and the
    demo's report must not count the showcase's rows. Joins through `runs` follow the scope."""
    present = {name for (name,) in con.sql(RELATIONS).fetchall()}
    if not {"runs", "results"} <= present:
        return
    db = con.sql("select current_database()").fetchall()[0][0]
    name = experiment.replace("'", "''")
    con.sql(
        f'create temp view runs as select * from "{db}".main.runs '
        f"where experiment = '{name}' or starts_with(experiment, '{name}/')"
    )
    con.sql(
        f'create temp view results as select * from "{db}".main.results '
        "where run_id in (select run_id from runs)"
    )


# `model` is the family, or family@model_version when a family has several versions (ablations).
# `chosen` keeps, per (task, model, mode, budget, seed), only the learning rate best on dev: a
# seed is one replicate of the whole protocol (rate chosen on dev included), so none is dropped.
BASE = """
with versions as (
    select family, count(distinct model_version) as n from results group by family),
res as (
    select r.*, cast(r.budget as varchar) as b,
        case when v.n > 1 then r.family || '@' || coalesce(cast(r.model_version as varchar), '?')
             else r.family end as model
    from results r join versions v using (family)),
dev_best as (
    select task, model, mode, b, lr, seed, max(value) as best from res
    where split = 'dev' and metric = 'accuracy' and layer is null group by all),
lr_pick as (
    select task, model, mode, b, seed, arg_max(lr, best) as lr from dev_best group by all),
chosen as (
    select res.* from res left join lr_pick p
        on res.task = p.task and res.model = p.model and res.mode = p.mode and res.b = p.b
        and res.seed = p.seed
    where p.lr is null or res.lr is not distinct from p.lr)
"""


class Data:
    """The catalog's relations and the queries every section shares."""

    def __init__(self, query: QueryFn) -> None:
        self.query = query
        names = query(RELATIONS).column("name")
        self.relations = set(names.to_pylist())
        self.has_results = "results" in self.relations and self._count("results") > 0
        self.scores = self._scores() if self.has_results else {}

    def _count(self, relation: str) -> int:
        return int(self.query(f"select count(*) as n from {relation}").column("n")[0].as_py())

    def rows(self, sql: str) -> list[dict[str, Any]]:
        return self.query(sql).to_pylist()

    def has(self, *relations: str) -> bool:
        return all(r in self.relations for r in relations)

    def _scores(self) -> dict[tuple[str, str, str, str, str], Stat]:
        found = self.rows(
            BASE + "select task, model, mode, b, metric, count(*) as n, avg(value) as mean, "
            "stddev_samp(value) as sd from chosen where split = 'test' and layer is null "
            "and mode <> 'probe' and task <> 'polysemy' and metric in ('accuracy', 'macro_f1') "
            "group by all"
        )
        return {
            (r["task"], r["model"], r["mode"], r["b"], r["metric"]): Stat.of(
                r["mean"], r["sd"], r["n"]
            )
            for r in found
        }

    def score(self, task: str, model: str, mode: str, b: str) -> Stat | None:
        return self.scores.get((task, model, mode, b, "accuracy"))

    def cells(self, metric: str = "accuracy") -> list[tuple[str, str, str, str]]:
        """(task, model, mode, budget) of every neural score, sorted for tables."""
        keys = {k[:4] for k in self.scores if k[4] == metric and k[1] != "baseline"}
        return sorted(keys, key=lambda k: (k[0], k[1], k[2], _budget_key(k[3])))

    def budgets(self, task: str) -> list[str]:
        found = {k[3] for k in self.scores if k[0] == task}
        return sorted(found, key=_budget_key)

    def baseline(self, task: str, b: str) -> tuple[str, Stat] | None:
        """The best baseline mode at this budget, else at the task's largest baseline budget."""
        rows = [
            (k, s)
            for k, s in self.scores.items()
            if k[0] == task and k[1] == "baseline" and k[4] == "accuracy"
        ]
        if not rows:
            return None
        same = [(k, s) for k, s in rows if k[3] == b]
        pool = same or [
            (k, s) for k, s in rows if k[3] == max((k2[3] for k2, _ in rows), key=_budget_key)
        ]
        key, stat = max(pool, key=lambda ks: ks[1].mean)
        return key[2], stat

    def against_baseline(self, task: str, b: str, stat: Stat) -> str:
        base = self.baseline(task, b)
        if base is None:
            return "no baseline"
        gap = stat.mean - base[1].mean
        where = "level with" if abs(gap) < 5e-4 else "below" if gap < 0 else "above"
        return f"{where} baseline {base[1].mean:.3f} ({base[0]})"


def _family(model: str) -> str:
    return model.split("@", 1)[0]


# ---------------------------------------------------------------------------------- sections


@dataclass
class Section:
    title: str
    blocks: list[tuple[Any, ...]] = field(default_factory=list)

    def text(self, line: str) -> None:
        self.blocks.append(("text", line))

    def table(self, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        self.blocks.append(("table", list(headers), [[_num(v) for v in r] for r in rows]))

    def image(self, path: Path, caption: str) -> None:
        self.blocks.append(("image", path, caption))


class Plots:
    """Writes figures as PNGs into the report directory and remembers them."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.paths: list[Path] = []

    def save(self, fig: Figure, name: str) -> Path:
        path = self.out_dir / f"{name}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
        self.paths.append(path)
        return path


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "x"


def _pretrain_rows(data: Data) -> list[dict[str, Any]]:
    if not data.has("runs", "metrics_latest"):
        return []
    pivots = ", ".join(f"max(m.value) filter (where m.key = '{k}') as {k}" for k in PRETRAIN_KEYS)
    mask = "null"
    join = ""
    if data.has("params"):
        mask = "any_value(try_cast(p.value as double))"
        join = f"left join params p on p.run_id = r.run_id and p.key = '{MASK_PARAM}'"
    return data.rows(
        f"select r.run_id, r.family, r.run_name, r.tags['learned_little'] as learned_little, "
        f"{pivots}, {mask} as mask_replace_prob from runs r "
        f"left join metrics_latest m on m.run_id = r.run_id {join} "
        "where r.stage = 'pretrain' and r.status = 'FINISHED' "
        "group by r.run_id, r.family, r.run_name, r.tags, r.start_time "
        "order by r.family, r.start_time"
    )


def section_pretraining(data: Data, plots: Plots) -> Section:
    sec = Section("1. Pretraining")
    rows = _pretrain_rows(data)
    if not rows:
        sec.text(
            "Skipped: no finished pretrain runs in the catalog (MLflow not read, or none yet)."
        )
        return sec
    sec.table(
        [
            "family",
            "run",
            "valid loss",
            "unigram entropy",
            "gap (nats)",
            "tokens seen",
            "wall s",
            "FLOPs",
            "learned little",
        ],
        [
            [
                r["family"],
                r["run_name"],
                r["valid_loss"],
                r["unigram_entropy"],
                r["entropy_gap"],
                r["tokens_seen"],
                r["wall_s"],
                r["flops"],
                r["learned_little"] or "–",
            ]
            for r in rows
        ],
    )
    little = sorted({r["family"] for r in rows if r["learned_little"] == "true"})
    if little:
        sec.text(
            f"**Learned little** (valid loss near unigram entropy): {', '.join(little)} — "
            "their transfer numbers measure word frequencies, not language."
        )
    lm = [r for r in rows if r["valid_loss"] is not None and r["unigram_entropy"] is not None]
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


def _budget_plot(data: Data, task: str, plots: Plots) -> Path:
    models = sorted({m for t, m, _, _ in data.cells() if t == task})
    budgets = data.budgets(task)
    fig = Figure(figsize=(4 * len(models), 3.5))
    axes = fig.subplots(1, len(models), squeeze=False, sharey=True)[0]
    for ax, model in zip(axes, models, strict=True):
        modes = sorted({k[2] for k in data.cells() if k[0] == task and k[1] == model})
        for mode in modes:
            pts = [(i, data.score(task, model, mode, b)) for i, b in enumerate(budgets)]
            pts = [(i, s) for i, s in pts if s is not None]
            ax.errorbar(
                [i for i, _ in pts],
                [s.mean for _, s in pts],
                yerr=[0 if math.isnan(s.ci) else s.ci for _, s in pts],
                marker="o",
                capsize=3,
                label=mode,
            )
        base = [data.baseline(task, b) for b in budgets]
        if any(base):
            ax.plot(
                range(len(budgets)),
                [b[1].mean if b else math.nan for b in base],
                "k--",
                label="baseline",
            )
        ax.set_xticks(range(len(budgets)), budgets)
        ax.set_ylim(0, 1)  # accuracy; wide intervals (few seeds) are clipped, the table has them
        ax.set_title(model)
        ax.set_xlabel("labelled examples")
        axes[0].set_ylabel("test accuracy")
        ax.legend(fontsize=7)
    return plots.save(fig, f"budget_{_slug(task)}")


def section_budget(data: Data, plots: Plots) -> Section:
    sec = Section("2. Score vs label budget")
    cells = data.cells()
    if not cells:
        sec.text("Skipped: no test result rows in the catalog.")
        return sec
    sec.text(
        "Test split at the best dev epoch, the learning rate chosen on dev; mean ±95% CI "
        "over seeds (n = seeds)."
    )
    rows = []
    for task, model, mode, b in cells:
        acc = data.score(task, model, mode, b)
        f1 = data.scores.get((task, model, mode, b, "macro_f1"))
        rows.append(
            [
                task,
                model,
                mode,
                b,
                acc.text(),
                acc.n,
                f1.text() if f1 else "–",
                data.against_baseline(task, b, acc),
            ]
        )
    base = sorted(k for k in data.scores if k[1] == "baseline" and k[4] == "accuracy")
    rows += [
        [
            k[0],
            "baseline",
            k[2],
            k[3],
            data.scores[k].text(),
            data.scores[k].n,
            data.scores[(*k[:4], "macro_f1")].text()
            if (*k[:4], "macro_f1") in data.scores
            else "–",
            "–",
        ]
        for k in base
    ]
    sec.table(["task", "model", "mode", "budget", "accuracy", "n", "macro-F1", "vs baseline"], rows)
    for task in sorted({c[0] for c in cells}):
        sec.image(_budget_plot(data, task, plots), f"{task}: accuracy vs label budget")
    return sec


def _convergence(data: Data) -> tuple[dict[tuple[str, str, str, str], Stat], list[dict], str]:
    """Dev accuracy against optimizer steps (epochs when a run logged no `step` rows)."""
    steps = data.rows("select count(*) as n from results where split = 'dev' and metric = 'step'")
    unit = "steps" if steps[0]["n"] else "epochs"
    curves = (
        BASE
        + """,
steps as (select run_id, epoch, value as step from chosen where split = 'dev' and metric = 'step'),
curves as (
    select c.run_id, c.task, c.model, c.mode, c.b, c.seed, c.lr, c.epoch,
        coalesce(s.step, c.epoch) as x, c.value
    from chosen c left join steps s using (run_id, epoch)
    where c.split = 'dev' and c.metric = 'accuracy' and c.layer is null
      and c.mode in ('finetune', 'scratch') and c.family <> 'baseline')"""
    )
    reach = data.rows(
        curves
        + """,
final as (
    select run_id, task, model, mode, b, seed, lr, arg_max(value, epoch) as final
    from curves group by all),
reach as (
    select f.task, f.model, f.mode, f.b,
        min(c.x) filter (where c.value >= 0.95 * f.final) as x
    from final f join curves c using (run_id, task, model, mode, b, seed, lr) group by all)
select task, model, mode, b, count(*) as n, avg(x) as mean, stddev_samp(x) as sd
from reach group by all"""
    )
    mean_curves = data.rows(
        curves
        + """
select task, model, mode, b, epoch, avg(x) as x, avg(value) as value from curves group by all
order by task, model, mode, b, epoch"""
    )
    reached = {
        (r["task"], r["model"], r["mode"], r["b"]): Stat.of(r["mean"], r["sd"], r["n"])
        for r in reach
    }
    return reached, mean_curves, unit


def section_convergence(data: Data, plots: Plots) -> tuple[Section, dict, str]:
    sec = Section("3. Convergence: pretrained (finetune) vs scratch")
    reached, curves, unit = _convergence(data) if data.has_results else ({}, [], "epochs")
    if not reached:
        sec.text("Skipped: no per-epoch dev rows for finetune or scratch.")
        return sec, reached, unit
    sec.text(
        f"Optimizer {unit} until the dev accuracy first reaches 95% of its final value "
        "(mean over seeds; the rate each mode chose on dev)."
    )
    sec.table(
        ["task", "model", "mode", "budget", f"{unit} to 95%", "n"],
        [
            [*k, s.text(), s.n]
            for k, s in sorted(reached.items(), key=lambda kv: (kv[0][:3], _budget_key(kv[0][3])))
        ],
    )
    for task in sorted({c["task"] for c in curves}):
        rows = [c for c in curves if c["task"] == task]
        small = min({c["b"] for c in rows}, key=_budget_key)
        rows = [c for c in rows if c["b"] == small]
        models = sorted({c["model"] for c in rows})
        fig = Figure(figsize=(4 * len(models), 3.2))
        axes = fig.subplots(1, len(models), squeeze=False, sharey=True)[0]
        for ax, model in zip(axes, models, strict=True):
            for mode in ("finetune", "scratch"):
                pts = [c for c in rows if c["model"] == model and c["mode"] == mode]
                if pts:
                    ax.plot([c["x"] for c in pts], [c["value"] for c in pts], marker="o",
                            label=mode)
            ax.set_title(f"{model} ({small} labels)")
            ax.set_xlabel(unit[:-1])
            axes[0].set_ylabel("dev accuracy")
            ax.legend(fontsize=7)
        sec.image(
            plots.save(fig, f"convergence_{_slug(task)}"),
            f"{task}: dev accuracy per {unit[:-1]} at {small} labels",
        )
    return sec, reached, unit


def _probe_rows(data: Data) -> list[dict[str, Any]]:
    if not data.has_results:
        return []
    found = data.rows(
        BASE + "select task, model, b, layer, count(*) as n, avg(value) as mean, "
        "stddev_samp(value) as sd from res where mode = 'probe' and split = 'test' "
        "and metric = 'accuracy' and layer is not null and task <> 'polysemy' group by all"
    )
    largest = {}
    for r in found:
        key = (r["task"], r["model"])
        largest[key] = max(largest.get(key, r["b"]), r["b"], key=_budget_key)
    return sorted(
        (r for r in found if r["b"] == largest[(r["task"], r["model"])]),
        key=lambda r: (r["task"], r["model"], r["layer"]),
    )


def section_probes(data: Data, plots: Plots) -> tuple[Section, dict[tuple[str, str], int]]:
    sec = Section("4. Score per layer (linear probes)")
    rows = _probe_rows(data)
    if not rows:
        sec.text("Skipped: no probe rows (mode 'probe' with a layer).")
        return sec, {}
    best: dict[tuple[str, str], int] = {}
    for r in rows:
        key = (r["task"], r["model"])
        top = [x for x in rows if (x["task"], x["model"]) == key]
        best[key] = max(top, key=lambda x: x["mean"])["layer"]
    sec.table(
        ["task", "model", "layer", "accuracy", "n", "best layer?", "vs baseline"],
        [
            [
                r["task"],
                r["model"],
                r["layer"],
                Stat.of(r["mean"], r["sd"], r["n"]).text(),
                r["n"],
                "best" if best[(r["task"], r["model"])] == r["layer"] else "",
                data.against_baseline(r["task"], r["b"], Stat.of(r["mean"], r["sd"], r["n"])),
            ]
            for r in rows
        ],
    )
    for task in sorted({r["task"] for r in rows}):
        fig = Figure(figsize=(5, 3.2))
        ax = fig.subplots()
        for model in sorted({r["model"] for r in rows if r["task"] == task}):
            pts = [r for r in rows if r["task"] == task and r["model"] == model]
            ax.plot([r["layer"] for r in pts], [r["mean"] for r in pts], marker="o", label=model)
        ax.set_xlabel("layer (0 = embeddings)")
        ax.set_ylabel("probe test accuracy")
        ax.set_title(task)
        ax.legend(fontsize=7)
        sec.image(plots.save(fig, f"probes_{_slug(task)}"), f"{task}: probe accuracy per layer")
    return sec, best


def _pairs(data: Data, mode_a: str, mode_b: str) -> list[tuple[str, str, str, Stat, Stat]]:
    out = []
    for task, model, mode, b in data.cells():
        if mode == mode_a and (other := data.score(task, model, mode_b, b)):
            out.append((task, model, b, data.score(task, model, mode, b), other))
    return out


def _single_layers(data: Data) -> list[tuple[str, str, str, Stat, int, Stat]]:
    """(task, model, budget, scalar mix, best layer, its score) where both were measured."""
    out = []
    for task, model, mode, b in data.cells():
        if mode != "frozen":
            continue
        singles = [
            (int(m.group(1)), data.score(task, model, k[2], b))
            for k in data.cells()
            if k[0] == task and k[1] == model and k[3] == b and (m := SINGLE_LAYER.match(k[2]))
        ]
        if singles:
            layer, stat = max(singles, key=lambda ls: ls[1].mean)
            out.append((task, model, b, data.score(task, model, mode, b), layer, stat))
    return out


def _partial_curves(data: Data) -> dict[tuple[str, str, str], list[tuple[int, Stat]]]:
    """Score vs number of loaded layers k (scratch = 0) per (task, model, budget)."""
    curves: dict[tuple[str, str, str], list[tuple[int, Stat]]] = {}
    for task, model, mode, b in data.cells():
        if m := PARTIAL.match(mode):
            curves.setdefault((task, model, b), []).append(
                (int(m.group(1)), data.score(task, model, mode, b))
            )
    for (task, model, b), pts in curves.items():
        if scratch := data.score(task, model, "scratch", b):
            pts.append((0, scratch))
        pts.sort(key=lambda p: p[0])
    return curves


def section_modes(data: Data, plots: Plots) -> Section:
    sec = Section("5. Frozen vs fine-tune, scalar mix vs single layer, partial:k")
    pairs = _pairs(data, "finetune", "frozen")
    singles = _single_layers(data)
    curves = _partial_curves(data)
    if not (pairs or singles or curves):
        sec.text("Skipped: no frozen/finetune pairs, single-layer or partial:k runs.")
        return sec
    if pairs:
        sec.table(
            ["task", "model", "budget", "finetune", "frozen (mix)", "finetune − frozen"],
            [[t, m, b, ft.text(), fr.text(), _signed(*_diff(ft, fr))] for t, m, b, ft, fr in pairs],
        )
    if singles:
        sec.table(
            [
                "task",
                "model",
                "budget",
                "frozen scalar mix",
                "best single layer",
                "its score",
                "mix − best",
            ],
            [
                [t, m, b, mix.text(), layer, one.text(), _signed(*_diff(mix, one))]
                for t, m, b, mix, layer, one in singles
            ],
        )
    if curves:
        sec.table(
            ["task", "model", "budget", "k (0 = scratch): accuracy"],
            [
                [*key, "; ".join(f"k={k}: {s.text()}" for k, s in pts)]
                for key, pts in sorted(curves.items())
            ],
        )
        fig = Figure(figsize=(5, 3.2))
        ax = fig.subplots()
        for (task, model, b), pts in sorted(curves.items()):
            ax.plot(
                [k for k, _ in pts],
                [s.mean for _, s in pts],
                marker="o",
                label=f"{task}/{model}/{b}",
            )
        ax.set_xlabel("pretrained layers loaded (k)")
        ax.set_ylabel("test accuracy")
        ax.legend(fontsize=6)
        sec.image(plots.save(fig, "partial_k"), "Accuracy vs pretrained layers loaded")
    return sec


def _masking_rows(data: Data) -> list[dict[str, Any]]:
    if not (data.has_results and data.has("runs", "params")):
        return []
    keys = "select run_id, run_id as key from bert_runs"
    if data.has("model_versions"):
        keys += (
            " union select run_id, unnest([name || '/' || version, "
            "'models:/' || name || '/' || version, name || ':' || version, "
            "cast(version as varchar)]) from model_versions "
            "where run_id in (select run_id from bert_runs)"
        )
    return data.rows(
        BASE
        + f""",
bert_runs as (
    select r.run_id, try_cast(p.value as double) as mrp from runs r
    join params p on p.run_id = r.run_id and p.key = '{MASK_PARAM}'
    where r.stage = 'pretrain' and r.family = 'bert'),
keys as (select distinct run_id, key from ({keys}))
select c.task, c.mode, c.b, br.mrp, count(*) as n, avg(c.value) as mean,
    stddev_samp(c.value) as sd
from chosen c join keys k on cast(c.model_version as varchar) = k.key
join bert_runs br on br.run_id = k.run_id
where c.family = 'bert' and c.split = 'test' and c.metric = 'accuracy' and c.layer is null
    and c.mode <> 'probe' and c.task <> 'polysemy'
group by all order by c.task, c.mode, c.b, br.mrp"""
    )


def section_masking(data: Data) -> tuple[Section, list[dict[str, Any]]]:
    sec = Section("6. Masking ablation (BERT mask_replace_prob)")
    rows = _masking_rows(data)
    if len({r["mrp"] for r in rows}) < 2:
        sec.text(
            "Skipped: needs two BERT model versions whose pretraining differs in "
            f"{MASK_PARAM}, both with transfer results."
        )
        return sec, []
    sec.table(
        ["task", "mode", "budget", "mask_replace_prob", "accuracy", "n", "vs baseline"],
        [
            [
                r["task"],
                r["mode"],
                r["b"],
                r["mrp"],
                Stat.of(r["mean"], r["sd"], r["n"]).text(),
                r["n"],
                data.against_baseline(r["task"], r["b"], Stat.of(r["mean"], r["sd"], r["n"])),
            ]
            for r in rows
        ],
    )
    return sec, rows


def _best_at_largest(data: Data, task: str, family: str) -> tuple[str, str, Stat] | None:
    b = data.budgets(task)[-1] if data.budgets(task) else None
    found = [
        (k[2], data.scores[k])
        for k in data.scores
        if k[0] == task
        and _family(k[1]) == family
        and k[3] == b
        and k[4] == "accuracy"
        and k[2] != "scratch"
    ]
    if not found:
        return None
    mode, stat = max(found, key=lambda ms: (ms[1].mean, ms[0] == "finetune"))
    return mode, b, stat


def section_equal_budget(data: Data, plots: Plots) -> Section:
    sec = Section("7. Families side by side at equal pretraining budget")
    pre = _pretrain_rows(data)
    tasks = sorted({c[0] for c in data.cells()})
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
        best = [(t, _best_at_largest(data, t, r["family"])) for t in tasks]
        cells = [f"{x[2].mean:.3f} ({x[0]}, {x[1]})" if x else "–" for _, x in best]
        rows.append([r["family"], r["run_name"], r["tokens_seen"], r["flops"], r["wall_s"], *cells])
        points += [(t, r["family"], r["flops"], x[2].mean) for t, x in best if x and r["flops"]]
    sec.table(
        [
            "family",
            "run",
            "tokens seen",
            "FLOPs",
            "wall s",
            *[f"{t}: best pretrained mode" for t in tasks],
        ],
        rows,
    )
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


def _polysemy_rows(data: Data) -> list[dict[str, Any]]:
    if not data.has_results:
        return []
    return data.rows(
        BASE + "select model, coalesce(layer, 0) as layer, "
        "avg(value) filter (where metric = 'same_sense_sim') as same, "
        "avg(value) filter (where metric = 'diff_sense_sim') as diff, count(*) as n "
        "from res where task = 'polysemy' and metric in ('same_sense_sim', 'diff_sense_sim') "
        "group by all order by model, layer"
    )


def section_polysemy(data: Data, plots: Plots) -> tuple[Section, list[dict[str, Any]]]:
    sec = Section("8. Polysemy: same-sense vs different-sense similarity")
    rows = [r for r in _polysemy_rows(data) if r["same"] is not None and r["diff"] is not None]
    if not rows:
        sec.text("Skipped: no polysemy rows (task 'polysemy').")
        return sec, []
    sec.text(
        "Cosine similarity of an ambiguous word's representation across two sentences; a "
        "model that separates senses has same > different."
    )
    sec.table(
        ["model", "layer", "same sense", "different sense", "separation"],
        [[r["model"], r["layer"], r["same"], r["diff"], r["same"] - r["diff"]] for r in rows],
    )
    fig = Figure(figsize=(5, 3.2))
    ax = fig.subplots()
    for model in sorted({r["model"] for r in rows}):
        pts = [r for r in rows if r["model"] == model]
        ax.plot(
            [r["layer"] for r in pts], [r["same"] - r["diff"] for r in pts], marker="o", label=model
        )
    ax.axhline(0, color="k", linewidth=0.8)
    ax.set_xlabel("layer")
    ax.set_ylabel("same − different similarity")
    ax.legend(fontsize=7)
    sec.image(plots.save(fig, "polysemy"), "Sense separation per family and layer")
    return sec, rows


# ------------------------------------------------------------------------------------ claims


def claim_few_labels(data: Data) -> Claim:
    name = "Pretrained beats scratch when labels are few"
    pairs = _pairs(data, "finetune", "scratch")
    if not pairs:
        return Claim(name, NOT_MEASURED, f"{name}: not measured (no finetune/scratch pairs).")
    small = [p for p in pairs if p[2] == data.budgets(p[0])[0]]
    large = [p for p in pairs if p[2] == data.budgets(p[0])[-1] and p[2] != data.budgets(p[0])[0]]
    hits = sum(_above(*_diff(ft, sc)) for _, _, _, ft, sc in small)
    verdict = _overall(hits, len(small))

    def detail(ps: list) -> str:
        return "; ".join(
            f"{m}/{t} {ft.mean:.3f} vs {sc.mean:.3f}, {_signed(*_diff(ft, sc))}"
            f"{', below baseline' if 'below' in data.against_baseline(t, b, ft) else ''}"
            for t, m, b, ft, sc in ps
        )

    budgets = "/".join(sorted({p[2] for p in small}, key=_budget_key))
    line = f"{name}: {verdict} at {budgets} labels ({detail(small)})"
    if large:
        line += f"; at {'/'.join(sorted({p[2] for p in large}, key=_budget_key))}: {detail(large)}"
    return Claim(name, verdict, line + ".")


def claim_convergence(epochs: dict[tuple[str, str, str, str], Stat], unit: str) -> Claim:
    name = "Pretrained converges faster"
    pairs = [
        (k, s, epochs[(k[0], k[1], "scratch", k[3])])
        for k, s in sorted(epochs.items())
        if k[2] == "finetune" and (k[0], k[1], "scratch", k[3]) in epochs
    ]
    if not pairs:
        return Claim(name, NOT_MEASURED, f"{name}: not measured (no finetune and scratch curves).")
    hits = sum(ft.mean < sc.mean for _, ft, sc in pairs)
    verdict = _overall(hits, len(pairs))
    detail = "; ".join(
        f"{k[1]}/{k[0]}@{k[3]} {ft.mean:.1f} vs {sc.mean:.1f} {unit}" for k, ft, sc in pairs
    )
    return Claim(
        name,
        verdict,
        f"{name} ({unit} to 95% of final dev accuracy, finetune vs scratch): {verdict} ({detail}).",
    )


def _pairs_claim(
    name: str, pairs: list[tuple[str, str, str, Stat, Stat]], what: str = "", where: str = ""
) -> Claim:
    """Supported where the first score of each (task, model, budget, a, b) pair beats the
    second beyond their intervals; the line gives every pair's numbers."""
    hits = sum(_above(*_diff(a, b)) for *_, a, b in pairs)
    verdict = _overall(hits, len(pairs))
    detail = "; ".join(
        f"{m}/{t}@{budget} {a.mean:.3f} vs {b.mean:.3f}, {_signed(*_diff(a, b))}"
        for t, m, budget, a, b in pairs
    )
    return Claim(name, verdict, f"{name}{what}: {verdict}{where} ({detail}).")


def claim_frozen_finetune(data: Data) -> Claim:
    name = "Fine-tuning beats frozen features"
    pairs = [p for p in _pairs(data, "finetune", "frozen") if p[2] == data.budgets(p[0])[-1]]
    if not pairs:
        return Claim(name, NOT_MEASURED, f"{name}: not measured (no frozen/finetune pairs).")
    return _pairs_claim(name, pairs, where=" at the largest budget")


def claim_adaptation(data: Data) -> Claim:
    """ULMFiT's middle stage: the model adapted on the task's text vs its parent, fine-tuned."""
    name = "Domain adaptation helps"
    pairs = [
        (t, m, b, data.score(t, m, mode, b), parent)
        for t, m, mode, b in data.cells()
        if mode == "finetune" and m.endswith("+adapt")
        and (parent := data.score(t, m.removesuffix("+adapt"), mode, b))
    ]
    if not pairs:
        why = "no <family>+adapt runs; see transfer.adapt"
        return Claim(name, NOT_MEASURED, f"{name}: not measured ({why}).")
    return _pairs_claim(name, pairs, what=" (finetune, adapted vs parent)")


def claim_partial(data: Data) -> Claim:
    name = "Loading more pretrained layers helps (partial:k)"
    curves = {k: v for k, v in _partial_curves(data).items() if len(v) >= 2}
    if not curves:
        return Claim(
            name,
            NOT_MEASURED,
            f"{name}: not measured (needs partial:k and scratch or two values of k).",
        )
    hits = 0
    parts = []
    for (task, model, b), pts in sorted(curves.items()):
        means = [s.mean for _, s in pts]
        rising = means[-1] > means[0]
        if rising and len(pts) >= 3:  # and no worse than flat overall
            rising = stats.spearmanr([k for k, _ in pts], means).statistic > 0
        hits += rising
        parts.append(f"{model}/{task}@{b} " + ", ".join(f"k={k} {s.mean:.3f}" for k, s in pts))
    verdict = _overall(hits, len(curves))
    return Claim(name, verdict, f"{name}: {verdict} ({'; '.join(parts)}).")


def claim_lower_layers(best: dict[tuple[str, str], int]) -> Claim:
    name = "Lower layers are more general (best probe layer for POS below WiC's)"
    pos = {m: layer for (t, m), layer in best.items() if "pos" in t.lower()}
    wic = {m: layer for (t, m), layer in best.items() if "wic" in t.lower()}
    both = sorted(set(pos) & set(wic))
    if not both:
        return Claim(
            name,
            NOT_MEASURED,
            f"{name}: not measured (needs probes on a POS and a WiC task for the same model).",
        )
    hits = sum(pos[m] < wic[m] for m in both)
    verdict = _overall(hits, len(both))
    detail = "; ".join(f"{m} POS layer {pos[m]} vs WiC layer {wic[m]}" for m in both)
    return Claim(name, verdict, f"{name}: {verdict} ({detail}).")


def claim_word2vec_wic(data: Data, polysemy: list[dict[str, Any]]) -> Claim:
    name = "Static word2vec is at chance on WiC"
    wic = sorted({t for t, *_ in data.cells() if "wic" in t.lower()})
    found = [(t, _best_at_largest(data, t, "word2vec")) for t in wic]
    found = [(t, x) for t, x in found if x]
    if not found:
        return Claim(
            name, NOT_MEASURED, f"{name}: not measured (no word2vec result on a WiC task)."
        )
    hits = 0
    parts = []
    for task, (mode, b, stat) in found:
        band = max(CHANCE_BAND, 0.0 if math.isnan(stat.ci) else stat.ci)
        hits += abs(stat.mean - WIC_CHANCE) <= band
        parts.append(
            f"{task}@{b} best mode {mode} {stat.text()} vs chance {WIC_CHANCE:.2f}, "
            f"{data.against_baseline(task, b, stat)}"
        )
    sep = [r["same"] - r["diff"] for r in polysemy if _family(r["model"]) == "word2vec"]
    if sep:
        parts.append(f"polysemy separation {sep[0]:+.3f}")
    verdict = _overall(hits, len(found))
    return Claim(name, verdict, f"{name}: {verdict} ({'; '.join(parts)}).")


def claim_scalar_mix(data: Data) -> Claim:
    name = "Scalar mix ≥ best single layer (frozen)"
    singles = _single_layers(data)
    if not singles:
        return Claim(
            name, NOT_MEASURED, f"{name}: not measured (no frozen:layer=N runs beside frozen)."
        )
    hits = sum(mix.mean >= one.mean for *_, mix, _, one in singles)
    verdict = _overall(hits, len(singles))
    detail = "; ".join(
        f"{m}/{t}@{b} mix {mix.mean:.3f} vs layer {layer} {one.mean:.3f}, "
        f"{_signed(*_diff(mix, one))}"
        for t, m, b, mix, layer, one in singles
    )
    return Claim(name, verdict, f"{name}: {verdict} ({detail}).")


def claim_masking(data: Data, rows: list[dict[str, Any]]) -> Claim:
    name = "BERT's masking mix matters"
    cells: dict[tuple[str, str, str], list[tuple[float, Stat]]] = {}
    for r in rows:
        cells.setdefault((r["task"], r["mode"], r["b"]), []).append(
            (r["mrp"], Stat.of(r["mean"], r["sd"], r["n"]))
        )
    cells = {k: sorted(v, key=lambda x: x[0]) for k, v in cells.items() if len(v) >= 2}
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
        (lo, a), (hi, c) = variants[0], variants[-1]
        diff, ci = _diff(c, a)
        hits += _above(abs(diff), ci)
        parts.append(
            f"{task}/{mode}@{b} mask {hi:g}: {c.mean:.3f} vs {lo:g}: {a.mean:.3f}, "
            f"{_signed(diff, ci)}"
        )
    verdict = _overall(hits, len(cells))
    return Claim(name, verdict, f"{name}: {verdict} ({'; '.join(parts)}).")


# ----------------------------------------------------------------------------------- render


def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(headers), line(["---"] * len(headers)), *map(line, rows)])


def render_markdown(title: str, claims: list[Claim], sections: list[Section]) -> str:
    out = [f"# {title}", "", "## Claims", ""]
    out += [f"- **{c.verdict}** — {c.line}" for c in claims]
    for sec in sections:
        out += ["", f"## {sec.title}", ""]
        for block in sec.blocks:
            if block[0] == "text":
                out += [block[1], ""]
            elif block[0] == "table":
                out += [_md_table(block[1], block[2]), ""]
            else:
                out += [f"![{block[2]}]({block[1].name})", ""]
    return "\n".join(out).rstrip() + "\n"


def _inline(text: str) -> str:
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(text))


def render_html(title: str, claims: list[Claim], sections: list[Section]) -> str:
    """One self-contained page: the PNGs are embedded as base64."""
    out = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;"
        "max-width:1100px;margin:auto}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><h2>Claims</h2><ul>",
        *[
            f"<li><strong>{html.escape(c.verdict)}</strong> — {html.escape(c.line)}</li>"
            for c in claims
        ],
        "</ul>",
    ]
    for sec in sections:
        out.append(f"<h2>{html.escape(sec.title)}</h2>")
        for block in sec.blocks:
            if block[0] == "text":
                out.append(f"<p>{_inline(block[1])}</p>")
            elif block[0] == "table":
                head = "".join(f"<th>{html.escape(h)}</th>" for h in block[1])
                body = "".join(
                    "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                    for row in block[2]
                )
                out.append(f"<table><tr>{head}</tr>{body}</table>")
            else:
                data = base64.b64encode(block[1].read_bytes()).decode("ascii")
                out.append(
                    f"<figure><img alt='{html.escape(block[2])}' "
                    f"src='data:image/png;base64,{data}'><figcaption>"
                    f"{html.escape(block[2])}</figcaption></figure>"
                )
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# -------------------------------------------------------------------------------------- build


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
    convergence, reached, unit = section_convergence(data, plots)
    probes, best_layers = section_probes(data, plots)
    masking, mask_rows = section_masking(data)
    polysemy, poly_rows = section_polysemy(data, plots)
    sections = [
        section_pretraining(data, plots),
        section_budget(data, plots),
        convergence,
        probes,
        section_modes(data, plots),
        masking,
        section_equal_budget(data, plots),
        polysemy,
    ]
    claims = [
        claim_few_labels(data),
        claim_convergence(reached, unit),
        claim_frozen_finetune(data),
        claim_partial(data),
        claim_lower_layers(best_layers),
        claim_word2vec_wic(data, poly_rows),
        claim_scalar_mix(data),
        claim_masking(data, mask_rows),
        claim_adaptation(data),
    ]
    md = write_bytes(out_dir / "report.md", render_markdown(title, claims, sections).encode())
    page = write_bytes(out_dir / "report.html", render_html(title, claims, sections).encode())
    return ReportResult(md, page, list(plots.paths), claims)
