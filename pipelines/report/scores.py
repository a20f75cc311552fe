"""The catalog read into typed cell statistics: what every section and claim of the report reads.

Every number comes from a DuckDB query over `<store>/catalog.duckdb` (the `results` rows and the
MLflow tables copied there). `pipelines/` may not import MLflow, even through
`storage.catalog`, so this module does not refresh the catalog: its caller refreshes it
(`storage.catalog.refresh(store, tracking_uri)`) or passes its own `query` function.
A score is `storage.scores`' one definition (test rows, the rate each seed chose on dev, mean
over seeds); confidence intervals are 95% Student-t intervals over seeds (mean ± t·sd/√n).
Claims and rankings read each task's headline metric (the rows' `headline` flag); the per-seed
scores and per-item predictions here are what the paired verdicts (`verdicts`) compare.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
from scipy import stats

from pretrainlab.config import Mode, ModeError, PretrainlabError, parse_mode
from storage.layout import Layout
from storage.scores import cell_stats, chosen_rows, labelled_tasks

QueryFn = Callable[[str], pa.Table]

# The catalog's tables and views by name (a store may lack some: each section checks).
RELATIONS = (
    "select table_name as name from duckdb_tables() union "
    "select view_name from duckdb_views() where not internal"
)
# `model` is the family, or family@model_version when a family has several versions (ablations);
# `task` is the task, or task [fingerprint] when rows of several task settings exist (so they
# never pool); `chosen` keeps, per (task, model, mode, budget, seed), the rate best on dev.
# Only the final models' rows (`point` null): a family's pretraining points are the break-even
# section's (`sections_points`), so every other section sees one model per family.
CELL = ("task", "model", "mode", "b")
BASE = f"""
with final as (select * from results where point is null),
labelled as ({labelled_tasks("final")}),
versions as (
    select family, count(distinct model_version) as n from labelled group by family),
res as (
    select r.*,
        cast(r.budget as varchar) as b,
        case when v.n > 1 then r.family || '@' || coalesce(cast(r.model_version as varchar), '?')
             else r.family end as model
    from labelled r join versions v using (family)),
{chosen_rows("res", CELL)}
"""
# A neural score the report tabulates: not a probe, not a similarity; the headline or macro-F1.
SCORED = (
    "mode <> 'probe' and task <> 'polysemy' and (headline or metric in ('accuracy', 'macro_f1'))"
)
HEADLINES = (
    "select task, any_value(metric) as metric from res where headline and split = 'test' "
    "and layer is null group by task"
)
SEED_SCORES = (
    "select task, model, mode, b, metric, seed, avg(value) as value from chosen "
    f"where split = 'test' and layer is null and headline and {SCORED} group by all"
)
UNCONVERGED = (
    "select distinct task, model, mode, b from chosen where split = 'test' "
    "and metric = 'converged' and layer is null and value < 0.5"
)
ITEMS = """,
tested as (select distinct run_id, task, model, mode, b, seed from chosen
    where split = 'test' and layer is null and mode <> 'probe')
select t.task, t.model, t.mode, t.b, t.seed, p.run_id,
    list(cast(p.correct as integer) order by p.item) as correct
from predictions p join tested t using (run_id) group by all order by all"""
DEFAULT_HEADLINE = "accuracy"  # a task with no headline rows (probes only, say)


class ReportError(PretrainlabError, RuntimeError):
    """The report cannot be built (no catalog); the message says what to run."""


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

    @classmethod
    def of_row(cls, row: dict[str, Any]) -> Stat:
        """From a query row with `mean`, `sd` and `n`."""
        return cls.of(row["mean"], row["sd"], row["n"])

    def text(self) -> str:
        return f"{self.mean:.3f}" + ("" if math.isnan(self.ci) else f" ±{self.ci:.3f}")


@dataclass(frozen=True)
class Diff:
    """a − b with a conservative half-width (the two intervals added in quadrature)."""

    value: float
    ci: float

    @classmethod
    def of(cls, a: Stat, b: Stat) -> Diff:
        both = not (math.isnan(a.ci) or math.isnan(b.ci))
        return cls(a.mean - b.mean, math.sqrt(a.ci**2 + b.ci**2) if both else math.nan)

    @property
    def above(self) -> bool:
        """Greater than zero beyond its interval (or plainly, with one seed)."""
        return self.value - (0.0 if math.isnan(self.ci) else self.ci) > 0

    def text(self) -> str:
        return f"{self.value:+.3f}" + ("" if math.isnan(self.ci) else f" ±{self.ci:.3f}")


def budget_order(budget: str) -> float:
    """Label budgets sort numerically; `all` last."""
    return float(budget) if budget.isdigit() else math.inf


def family_of(model: str) -> str:
    return model.split("@", 1)[0]


def mode_of(text: str) -> Mode | None:
    """The transfer mode a result row names, parsed by the transfer stage's own parser; None for
    what is not a transfer mode (a baseline's method, `probe`)."""
    try:
        return parse_mode(text)
    except ModeError:
        return None


@dataclass(frozen=True, order=True)
class ScoreKey:
    """One cell of the score table: a metric of a model in a transfer mode at a label budget."""

    task: str
    model: str  # family, or family@version when the family has several versions
    mode: str
    budget: str
    metric: str = "accuracy"

    @property
    def is_baseline(self) -> bool:
        return self.model == "baseline"

    def but(self, **changes: str) -> ScoreKey:
        return dataclasses.replace(self, **changes)

    def sort_key(self) -> tuple[str, str, str, float]:
        return (self.task, self.model, self.mode, budget_order(self.budget))


@dataclass(frozen=True)
class Baseline:
    """A task's best non-neural score at a budget and the method that made it."""

    method: str
    stat: Stat


@dataclass(frozen=True)
class BaselineGap:
    """A neural score read against the task's best non-neural baseline at its budget."""

    method: str
    baseline: float
    gap: float  # score − baseline

    @property
    def below(self) -> bool:
        return self.gap < 0 and not self.level

    @property
    def level(self) -> bool:
        return abs(self.gap) < 5e-4

    def text(self) -> str:
        where = "level with" if self.level else "below" if self.below else "above"
        return f"{where} baseline {self.baseline:.3f} ({self.method})"


def versus_baseline_text(gap: BaselineGap | None) -> str:
    return "no baseline" if gap is None else gap.text()


# ---------------------------------------------------------------------------------- catalog


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
    if "point_scores" in present:
        con.sql(
            f'create temp view point_scores as select * from "{db}".main.point_scores '
            "where run_id in (select run_id from runs)"
        )


class Data:
    """The catalog's relations and the scores every section shares."""

    def __init__(self, query: QueryFn) -> None:
        self.query = query
        names = query(RELATIONS).column("name")
        self.relations = set(names.to_pylist())
        self.has_results = "results" in self.relations and self._count("results") > 0
        self.headlines: dict[str, str] = {}
        self.seed_scores: dict[ScoreKey, dict[int, float]] = {}
        self.unconverged: set[ScoreKey] = set()
        self.scores = self._scores() if self.has_results else {}

    def _count(self, relation: str) -> int:
        return int(self.query(f"select count(*) as n from {relation}").column("n")[0].as_py())

    def rows(self, sql: str) -> list[dict[str, Any]]:
        return self.query(sql).to_pylist()

    def has(self, *relations: str) -> bool:
        return all(r in self.relations for r in relations)

    def _scores(self) -> dict[ScoreKey, Stat]:
        self.headlines = {r["task"]: r["metric"] for r in self.rows(BASE + HEADLINES)}
        found = self.rows(BASE + cell_stats("chosen", (*CELL, "metric"), SCORED))
        for r in self.rows(BASE + SEED_SCORES):
            key = ScoreKey(r["task"], r["model"], r["mode"], r["b"], r["metric"])
            self.seed_scores.setdefault(key, {})[int(r["seed"])] = float(r["value"])
        self.unconverged = {
            ScoreKey(r["task"], r["model"], r["mode"], r["b"], self.metric(r["task"]))
            for r in self.rows(BASE + UNCONVERGED)
        }
        return {
            ScoreKey(r["task"], r["model"], r["mode"], r["b"], r["metric"]): Stat.of_row(r)
            for r in found
        }

    def rates_per_mode(self) -> dict[str, set[int]]:
        """{mode kind (scratch, frozen, finetune, partial): the sizes of the learning-rate grids
        its runs searched on dev}, one size per (task, model, mode, budget, seed)."""
        if not self.has_results:
            return {}
        rows = self.rows(
            BASE + "select split_part(mode, ':', 1) as kind, count(distinct lr) as rates "
            f"from res where split = 'dev' and lr is not null and {SCORED} "
            "group by task, model, mode, b, seed"
        )
        found: dict[str, set[int]] = {}
        for r in rows:
            found.setdefault(r["kind"], set()).add(int(r["rates"]))
        return found

    def metric(self, task: str) -> str:
        """The task's headline metric: what its claims and rankings read."""
        return self.headlines.get(task, DEFAULT_HEADLINE)

    def key(self, task: str, model: str, mode: str, b: str) -> ScoreKey:
        """The headline cell of a task, model, mode and budget."""
        return ScoreKey(task, model, mode, b, self.metric(task))

    def score(self, task: str, model: str, mode: str, b: str) -> Stat | None:
        return self.scores.get(self.key(task, model, mode, b))

    def seeds(self, key: ScoreKey) -> dict[int, float]:
        """{seed: test score} of a headline cell, each seed at the rate it chose on dev."""
        return self.seed_scores.get(key, {})

    def items(self, key: ScoreKey) -> dict[int, np.ndarray] | None:
        """{seed: 0/1 correctness per test item} of a cell, from the predictions side table;
        None when the store has none for it, or the headline is not a mean over items."""
        if key.metric != "accuracy" or not self.has("predictions"):
            return None
        if not hasattr(self, "_items"):
            self._items: dict[tuple[str, str, str, str], dict[int, np.ndarray]] = {}
            for r in self.rows(BASE + ITEMS):
                found = self._items.setdefault((r["task"], r["model"], r["mode"], r["b"]), {})
                found.setdefault(int(r["seed"]), np.asarray(r["correct"], dtype=float))
        return self._items.get((key.task, key.model, key.mode, key.budget))

    def unseen_labels(self) -> dict[str, dict[str, int]]:
        """{task: {split: count}} of dev/test items whose label train never has (kept, always
        scored wrong); only tasks that have any."""
        if not self.has_results:
            return {}
        found: dict[str, dict[str, int]] = {}
        for r in self.rows(
            "select task, split, max(value) as n from results where metric = 'unseen_labels' "
            "group by all order by all"
        ):
            if r["n"]:
                found.setdefault(r["task"], {})[r["split"]] = int(r["n"])
        return found

    def cells(self) -> list[ScoreKey]:
        """The headline key of every neural score, sorted for tables."""
        keys = {k for k in self.scores if k.metric == self.metric(k.task) and not k.is_baseline}
        return sorted(keys, key=ScoreKey.sort_key)

    def baseline_keys(self) -> list[ScoreKey]:
        return sorted(k for k in self.scores if k.is_baseline and k.metric == self.metric(k.task))

    def budgets(self, task: str) -> list[str]:
        return sorted({k.budget for k in self.scores if k.task == task}, key=budget_order)

    def baseline(self, task: str, b: str) -> Baseline | None:
        """The best baseline mode at this budget, else at the task's largest baseline budget."""
        rows = [(k, s) for k, s in self.scores.items() if k.task == task and k.is_baseline
                and k.metric == self.metric(task)]  # fmt: skip
        if not rows:
            return None
        largest = max((k.budget for k, _ in rows), key=budget_order)
        pool = [(k, s) for k, s in rows if k.budget == b] or [
            (k, s) for k, s in rows if k.budget == largest
        ]
        key, stat = max(pool, key=lambda ks: ks[1].mean)
        return Baseline(key.mode, stat)

    def against_baseline(self, task: str, b: str, stat: Stat) -> BaselineGap | None:
        base = self.baseline(task, b)
        if base is None:
            return None
        return BaselineGap(base.method, base.stat.mean, stat.mean - base.stat.mean)
