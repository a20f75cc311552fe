"""Registered model versions side by side, and the `champion` alias moved by a stated rule.

Everything is read from the DuckDB catalog (`storage.catalog`): versions from `model_versions`,
spec differences from `params`, pretraining numbers from `metrics_latest`, downstream scores from
`version_scores` (result rows -> transfer run -> pretrain run -> version). Only `promote` and
`publish_downstream` write, and only to MLflow: an alias, tags that say why, summary metrics.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pretrainlab.config import PretrainlabError
from storage import catalog
from storage.layout import Layout
from storage.registry import CHAMPION

# Tags of a version that say what it was built from: compared like spec params.
IDENTITY_TAGS = ("family", "corpus_id", "tokenizer_id", "config_hash", "git_sha", "model_key")
# Pretraining numbers worth a column in `models list` (when the family logs them).
LIST_METRICS = ("valid_loss", "valid_ppl", "tokens_per_s", "wall_s")
DOWNSTREAM = "downstream"
REASON_TAG = "champion_reason"
CHECK_TAG = "promotion_last_check"
_REF = re.compile(
    r"^(?:models:/)?(?P<name>[A-Za-z0-9][A-Za-z0-9_.+-]*)"
    r"(?:@v?(?P<number>\d+)|/(?P<version>\d+)|@(?P<alias>[A-Za-z][A-Za-z0-9_-]*))?$"
)
_METRIC_CHARS = re.compile(r"[^\w.\- /]")  # what MLflow allows, minus ":" (as storage.tracking)
COLUMNS = ("section", "task", "mode", "budget", "key", "version", "value", "delta", "seeds")


class VersionError(PretrainlabError, LookupError):
    """A version reference or rule that cannot be answered; the message lists what exists."""


@dataclass(frozen=True)
class Version:
    name: str
    version: int
    run_id: str
    aliases: tuple[str, ...]
    tags: dict[str, str]
    created: datetime | None

    @property
    def label(self) -> str:
        return f"{self.name}@v{self.version}"

    @property
    def family(self) -> str:
        return self.tags.get("family", "")


# ------------------------------------------------------------------------------------ reading


def tracking_for(store: Path, tracking_uri: str | None) -> str:
    """The MLflow to read and write: the given URI, $MLFLOW_TRACKING_URI, or <store>/mlflow.db."""
    uri = catalog.resolve_tracking_uri(Layout.at(store), tracking_uri)
    if uri is None:
        raise VersionError(
            f"no MLflow tracking for {store} (no mlflow.db there, no MLFLOW_TRACKING_URI): give "
            "--spec, or run the pretrain stage first"
        )
    return uri


def _rows(store: Path, sql: str, tracking_uri: str | None) -> list[dict[str, Any]]:
    return catalog.query(store, sql, tracking_uri=tracking_uri, refresh_first=False).to_pylist()


def _has(store: Path, relation: str, tracking_uri: str | None) -> bool:
    return any(name == relation for name, _, _ in catalog.list_relations(store, tracking_uri))


def _sql_list(values: list[str]) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values) or "NULL"


def all_versions(store: Path, tracking_uri: str | None = None) -> list[Version]:
    """Every registered version the catalog holds (refresh it first for the latest)."""
    if not _has(store, "model_versions", tracking_uri):
        raise VersionError(
            "no MLflow registry in the catalog: run the pretrain stage first, or give the "
            "tracking URI (--spec, or MLFLOW_TRACKING_URI)"
        )
    rows = _rows(
        store,
        "select name, version, run_id, aliases, tags, creation_time from model_versions "
        "order by name, version",
        tracking_uri,
    )
    return [
        Version(
            r["name"],
            int(r["version"]),
            r["run_id"] or "",
            tuple(r["aliases"] or ()),
            dict(r["tags"] or []),
            r["creation_time"],
        )
        for r in rows
    ]


def list_versions(store: Path, tracking_uri: str | None = None, refresh: bool = True) -> pa.Table:
    """One row per registered version: aliases, family, creation time, key pretraining numbers."""
    tracking_uri = tracking_for(store, tracking_uri)
    if refresh:
        catalog.refresh(store, tracking_uri)
    all_versions(store, tracking_uri)  # a clear error when there is no registry yet
    picks = ", ".join(
        f"max(m.value) filter (where m.key = '{key}') as {key}" for key in LIST_METRICS
    )
    sql = (
        "select mv.name, mv.version, array_to_string(mv.aliases, ',') as aliases, "
        "mv.tags['family'] as family, mv.creation_time as created, "
        "mv.tags['headline_metric'] as headline_metric, "
        "try_cast(mv.tags['headline_value'] as double) as headline_value, "
        f"{picks}, mv.run_id "
        "from model_versions mv left join metrics_latest m on m.run_id = mv.run_id "
        "group by all order by mv.name, mv.version"
    )
    return catalog.query(store, sql, tracking_uri=tracking_uri, refresh_first=False)


def _known(versions: list[Version]) -> str:
    labels = [v.label + (f" ({','.join(v.aliases)})" if v.aliases else "") for v in versions]
    return ", ".join(labels) or "none yet (run the pretrain stage)"


def resolve_refs(refs: list[str], versions: list[Version]) -> list[Version]:
    """`NAME@v2`, `NAME@2`, `NAME/2`, `NAME@champion`, `models:/NAME@candidate`, or `NAME`
    (every version of it) -> the versions, in the order given, without repeats."""
    chosen: list[Version] = []
    for ref in refs:
        match = _REF.match(ref.strip())
        if not match:
            raise VersionError(f"{ref!r}: expected NAME, NAME@vN, NAME/N or NAME@alias")
        of_name = [v for v in versions if v.name == match["name"]]
        number = match["number"] or match["version"]
        if number is not None:
            found = [v for v in of_name if v.version == int(number)]
        elif match["alias"]:
            found = [v for v in of_name if match["alias"] in v.aliases]
        else:
            found = of_name
        if not found:
            raise VersionError(f"{ref}: no such registered version; registered: {_known(versions)}")
        chosen += [v for v in found if v not in chosen]
    return chosen


# ------------------------------------------------------------------------------------ compare


@dataclass
class Comparison:
    """Tidy rows (COLUMNS): section spec | pretrain | downstream, one row per item x version;
    `delta` is the difference to the first version (numbers only)."""

    versions: list[Version]
    rows: list[dict[str, Any]]

    def table(self) -> pa.Table:
        schema = pa.schema(
            [(c, pa.string()) for c in COLUMNS[:6]]
            + [("value", pa.string()), ("delta", pa.float64()), ("seeds", pa.int64())]
        )
        return pa.Table.from_pylist(
            [{**r, "value": None if r["value"] is None else str(r["value"])} for r in self.rows],
            schema=schema,
        )


def _row(section: str, key: str, version: Version, value: Any, first: Any, **extra: Any) -> dict:
    numeric = isinstance(value, int | float) and isinstance(first, int | float)
    delta = value - first if numeric and math.isfinite(value) and math.isfinite(first) else None
    base = dict.fromkeys(COLUMNS)
    return {
        **base,
        "section": section,
        "key": key,
        "version": version.label,
        "value": value,
        "delta": delta,
        **extra,
    }


def _spec_rows(store: Path, versions: list[Version], uri: str | None) -> list[dict[str, Any]]:
    """Params and identity tags whose values differ between the versions."""
    runs = _sql_list([v.run_id for v in versions])
    found = _rows(store, f"select run_id, key, value from params where run_id in ({runs})", uri)
    values: dict[str, dict[str, Any]] = {}
    for r in found:
        values.setdefault(r["key"], {})[r["run_id"]] = r["value"]
    for tag in IDENTITY_TAGS:
        values[f"tag.{tag}"] = {v.run_id: v.tags.get(tag) for v in versions}
    rows = []
    for key in sorted(values):
        per_run = [values[key].get(v.run_id) for v in versions]
        if len(set(per_run)) > 1:
            rows += [
                _row("spec", key, v, value, None)
                for v, value in zip(versions, per_run, strict=True)
            ]
    return rows


def _pretrain_rows(store: Path, versions: list[Version], uri: str | None) -> list[dict[str, Any]]:
    runs = _sql_list([v.run_id for v in versions])
    found = _rows(
        store,
        f"select run_id, key, value from metrics_latest where run_id in ({runs}) "
        f"and key not like '{DOWNSTREAM}/%' order by key",
        uri,
    )
    values: dict[str, dict[str, float]] = {}
    for r in found:
        values.setdefault(r["key"], {})[r["run_id"]] = r["value"]
    rows = []
    for key, per_run in values.items():
        first = per_run.get(versions[0].run_id)
        rows += [_row("pretrain", key, v, per_run.get(v.run_id), first) for v in versions]
    return rows


def _scores(store: Path, versions: list[Version], uri: str | None, headline_only: bool) -> list:
    if not _has(store, "version_scores", uri):
        return []
    names = _sql_list(sorted({v.name for v in versions}))
    where = " and headline" if headline_only else ""
    return _rows(
        store,
        "select name, version, task, mode, budget, metric, seeds, mean from version_scores "
        f"where name in ({names}){where} order by task, mode, budget, metric",
        uri,
    )


def _downstream_rows(
    store: Path, versions: list[Version], uri: str | None, headline_only: bool
) -> list[dict[str, Any]]:
    """Test scores (mean over seeds) per task x mode x budget x metric, delta vs the first."""
    by_item: dict[tuple[str, str, str, str], dict[tuple[str, int], dict]] = {}
    for r in _scores(store, versions, uri, headline_only):
        item = (r["task"], r["mode"], r["budget"], r["metric"])
        by_item.setdefault(item, {})[(r["name"], int(r["version"]))] = r
    rows = []
    for (task, mode, budget, metric), per_version in by_item.items():
        cells = [per_version.get((v.name, v.version)) for v in versions]
        if not any(cells):
            continue
        first = cells[0]["mean"] if cells[0] else None
        for v, cell in zip(versions, cells, strict=True):
            rows.append(
                _row(
                    "downstream",
                    metric,
                    v,
                    cell["mean"] if cell else None,
                    first,
                    task=task,
                    mode=mode,
                    budget=budget,
                    seeds=cell["seeds"] if cell else None,
                )
            )
    return rows


def compare(
    store: Path,
    refs: list[str],
    tracking_uri: str | None = None,
    headline_only: bool = True,
    refresh: bool = True,
) -> Comparison:
    """Spec differences, pretraining metrics and downstream scores of the referenced versions
    (of one family, or across families), each with its delta vs the first."""
    if not refs:
        raise VersionError("name at least one version, e.g. demo-bert@v1 demo-bert@v2")
    tracking_uri = tracking_for(store, tracking_uri)
    if refresh:
        catalog.refresh(store, tracking_uri)
    versions = resolve_refs(refs, all_versions(store, tracking_uri))
    rows = (
        _spec_rows(store, versions, tracking_uri)
        + _pretrain_rows(store, versions, tracking_uri)
        + _downstream_rows(store, versions, tracking_uri, headline_only)
    )
    return Comparison(versions, rows)


# ------------------------------------------------------------------------------------ promote


@dataclass(frozen=True)
class Rule:
    """Which version deserves `champion`: the best `aggregate` (mean or worst case) over tasks of
    the test score (mean over seeds) in one transfer mode at one label budget, and only if it
    beats the current champion by more than `margin`."""

    mode: str = "finetune"
    budget: str = "all"
    tasks: tuple[str, ...] = ()
    metric: str | None = None
    aggregate: Literal["mean", "min"] = "mean"
    margin: float = 0.0

    def describe(self) -> str:
        metric = self.metric or "headline metric"
        tasks = ", ".join(self.tasks) or "every scored task"
        return (
            f"{self.aggregate} over tasks ({tasks}) of test {metric}, mode {self.mode}, "
            f"budget {self.budget}; must beat the champion by more than {self.margin:g}"
        )


@dataclass
class Decision:
    name: str
    rule: Rule
    tasks: list[str]
    scores: dict[int, float]  # eligible version -> aggregate score
    per_task: dict[int, dict[str, float]]
    ineligible: dict[int, str]  # version -> why it was not ranked
    best: int | None
    champion: int | None  # before the decision
    promote: bool
    reason: str
    decided_at: str
    applied: bool = False

    def record(self) -> dict[str, Any]:
        """What is stored with the alias: the rule, the numbers and the time."""
        return {
            "rule": asdict(self.rule),
            "rule_text": self.rule.describe(),
            "tasks": self.tasks,
            "scores": {str(k): round(v, 6) for k, v in self.scores.items()},
            "best": self.best,
            "previous_champion": self.champion,
            "promoted": self.promote,
            "reason": self.reason,
            "decided_at": self.decided_at,
        }


def _score_table(
    store: Path, name: str, rule: Rule, uri: str | None
) -> dict[int, dict[str, float]]:
    """version -> task -> test score (mean over seeds) under the rule's mode, budget, metric."""
    if not _has(store, "version_scores", uri):
        return {}
    metric = "headline" if rule.metric is None else f"metric = {_sql_list([rule.metric])}"
    rows = _rows(
        store,
        f"select version, task, mean from version_scores where name = {_sql_list([name])} "
        f"and mode = {_sql_list([rule.mode])} and budget = {_sql_list([rule.budget])} "
        f"and {metric}",
        uri,
    )
    table: dict[int, dict[str, float]] = {}
    for r in rows:
        table.setdefault(int(r["version"]), {})[r["task"]] = float(r["mean"])
    return table


def _current_champion(name: str, uri: str | None) -> int | None:
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        aliases = client.get_registered_model(name).aliases
    except MlflowException as error:
        raise VersionError(f"{name}: cannot read the registered model: {error}") from None
    return int(aliases[CHAMPION]) if CHAMPION in aliases else None


def _aggregate(values: list[float], how: str) -> float:
    return min(values) if how == "min" else sum(values) / len(values)


def _verdict(
    rule: Rule,
    scores: dict[int, float],
    best: int | None,
    champion: int | None,
    ineligible: dict[int, str],
) -> tuple[bool, str]:
    if best is None:
        return False, "no version has test scores for every task under this rule"
    if champion is None:
        return True, f"no champion yet; v{best} scores {scores[best]:.4f}"
    if best == champion:
        return False, f"champion v{champion} is still the best ({scores[best]:.4f})"
    if champion not in scores:
        why = ineligible.get(champion, "it has no scores")
        return True, f"v{best} scores {scores[best]:.4f}; champion v{champion} is unranked ({why})"
    gain = scores[best] - scores[champion]
    if gain > rule.margin:
        return True, (
            f"v{best} scores {scores[best]:.4f}, beating champion v{champion} "
            f"({scores[champion]:.4f}) by {gain:.4f} > margin {rule.margin:g}"
        )
    return False, (
        f"best v{best} ({scores[best]:.4f}) beats champion v{champion} ({scores[champion]:.4f}) "
        f"by {gain:.4f}, not more than the margin {rule.margin:g}"
    )


def decide(
    store: Path, name: str, rule: Rule, tracking_uri: str | None = None, refresh: bool = True
) -> Decision:
    """Rank every version of `name` by the rule; say whether `champion` should move and why."""
    tracking_uri = tracking_for(store, tracking_uri)
    if refresh:
        catalog.refresh(store, tracking_uri)
    registered = all_versions(store, tracking_uri)
    versions = [v for v in registered if v.name == name]
    if not versions:
        raise VersionError(f"{name}: no such registered model; registered: {_known(registered)}")
    table = _score_table(store, name, rule, tracking_uri)
    scored_tasks = sorted({task for per_task in table.values() for task in per_task})
    tasks = list(rule.tasks) or scored_tasks
    missing = [t for t in tasks if t not in scored_tasks]
    if missing or not tasks:
        raise VersionError(
            f"{name}: no test scores for task(s) {', '.join(missing) or '(any)'} with mode "
            f"{rule.mode!r}, budget {rule.budget!r}, metric {rule.metric or 'headline'}; scored "
            f"tasks: {', '.join(scored_tasks) or 'none (run the transfer stage)'}"
        )
    scores, ineligible = {}, {}
    for v in versions:
        have = table.get(v.version, {})
        lacking = [t for t in tasks if t not in have]
        if v.tags.get("stage") == "adapt":  # tuned on one task's text: not a general model
            ineligible[v.version] = f"adapted on {v.tags.get('adapted_on', 'one task')}"
        elif lacking:
            ineligible[v.version] = f"no scores for {', '.join(lacking)}"
        else:
            scores[v.version] = _aggregate([have[t] for t in tasks], rule.aggregate)
    # Ties go to the newer version: the same score from fresher code and data.
    best = max(scores, key=lambda n: (scores[n], n)) if scores else None
    champion = _current_champion(name, tracking_uri)
    promote, reason = _verdict(rule, scores, best, champion, ineligible)
    return Decision(
        name,
        rule,
        tasks,
        scores,
        {n: dict(table.get(n, {})) for n in scores},
        ineligible,
        best,
        champion,
        promote,
        reason,
        datetime.now(UTC).isoformat(timespec="seconds"),
    )


def apply(decision: Decision, tracking_uri: str) -> Decision:
    """Move the alias (when the decision says so) and record why on the version and the model."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    record = json.dumps(decision.record(), sort_keys=True)
    client.set_registered_model_tag(decision.name, CHECK_TAG, record)
    if decision.promote and decision.best is not None:
        client.set_registered_model_alias(decision.name, CHAMPION, str(decision.best))
        client.set_model_version_tag(decision.name, str(decision.best), REASON_TAG, record)
        client.set_registered_model_tag(decision.name, REASON_TAG, record)
        decision.applied = True
    return decision


def promote(
    store: Path,
    name: str,
    rule: Rule,
    tracking_uri: str | None = None,
    dry_run: bool = False,
    refresh: bool = True,
) -> Decision:
    """Decide by the rule and, unless a dry run, move `champion` and record the reason."""
    tracking_uri = tracking_for(store, tracking_uri)
    decision = decide(store, name, rule, tracking_uri, refresh=refresh)
    return decision if dry_run else apply(decision, tracking_uri)


# ------------------------------------------------------------------------- MLflow compare view


def metric_name(*parts: str) -> str:
    """`downstream/polarity/partial_1/all/accuracy`: "/" groups the charts in MLflow's UI."""
    return "/".join(_METRIC_CHARS.sub("_", part) for part in parts)


def downstream_metrics(store: Path, tracking_uri: str | None = None) -> dict[str, dict[str, float]]:
    """pretrain run id -> {metric name: value}: every headline test score (mean over seeds) of
    the run's version, and per mode x budget the mean over tasks."""
    if not _has(store, "version_scores", tracking_uri):
        return {}
    rows = _rows(
        store,
        "select mv.run_id, s.task, s.mode, s.budget, s.metric, s.mean from version_scores s "
        "join model_versions mv using (name, version) where s.headline",
        tracking_uri,
    )
    out: dict[str, dict[str, float]] = {}
    groups: dict[tuple[str, str, str], list[float]] = {}
    for r in rows:
        name = metric_name(DOWNSTREAM, r["task"], r["mode"], r["budget"], r["metric"])
        out.setdefault(r["run_id"], {})[name] = float(r["mean"])
        groups.setdefault((r["run_id"], r["mode"], r["budget"]), []).append(float(r["mean"]))
    for (run_id, mode, budget), values in groups.items():
        out[run_id][metric_name(DOWNSTREAM, "mean", mode, budget, "headline")] = _aggregate(
            values, "mean"
        )
    return out


def publish_downstream(store: Path, tracking_uri: str | None = None, refresh: bool = True) -> int:
    """Log downstream summaries on each version's pretrain run, so selecting runs in MLflow's
    compare view shows what each model is worth next to its pretraining numbers. Only values
    that changed are logged (re-running adds no history); returns how many were logged."""
    tracking_uri = tracking_for(store, tracking_uri)
    if refresh:
        catalog.refresh(store, tracking_uri)
    wanted = downstream_metrics(store, tracking_uri)
    if not wanted:
        return 0
    current = {
        (r["run_id"], r["key"]): r["value"]
        for r in _rows(
            store,
            f"select run_id, key, value from metrics_latest where key like '{DOWNSTREAM}/%'",
            tracking_uri,
        )
    }
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    now, logged = int(time.time() * 1000), 0
    for run_id, metrics in wanted.items():
        fresh = [
            Metric(key, value, now, 0)
            for key, value in sorted(metrics.items())
            if current.get((run_id, key)) is None or abs(current[(run_id, key)] - value) > 1e-12
        ]
        if fresh:
            client.log_batch(run_id, metrics=fresh)
            logged += len(fresh)
    return logged
