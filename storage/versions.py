"""Registered model versions read from the catalog, and the `champion` alias read and moved.

Everything is read from the DuckDB catalog (`storage.catalog`): versions from `model_versions`,
scores from `version_scores` (result rows -> transfer run -> pretrain run -> version). Which
version deserves `champion` is not decided here (`pipelines.report.promotion` holds the rule);
this module reads the scores the rule needs and writes the alias and the tags that say why.
Side by side comparison: `storage.version_compare`; summaries on MLflow runs:
`storage.downstream`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pretrainlab.config import PretrainlabError
from storage import catalog
from storage.layout import Layout
from storage.registry import CHAMPION

# Pretraining numbers worth a column in `models list` (when the family logs them).
LIST_METRICS = ("valid_loss", "valid_ppl", "tokens_per_s", "wall_s")
REASON_TAG = "champion_reason"
CHECK_TAG = "promotion_last_check"
_REF = re.compile(
    r"^(?:models:/)?(?P<name>[A-Za-z0-9][A-Za-z0-9_.+-]*)"
    r"(?:@v?(?P<number>\d+)|/(?P<version>\d+)|@(?P<alias>[A-Za-z][A-Za-z0-9_-]*))?$"
)


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


def catalog_rows(store: Path, sql: str, tracking_uri: str | None) -> list[dict[str, Any]]:
    return catalog.query(store, sql, tracking_uri=tracking_uri, refresh_first=False).to_pylist()


def has(store: Path, relation: str, tracking_uri: str | None) -> bool:
    return any(name == relation for name, _, _ in catalog.list_relations(store, tracking_uri))


def sql_list(values: list[str]) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values) or "NULL"


def all_versions(store: Path, tracking_uri: str | None = None) -> list[Version]:
    """Every registered version the catalog holds (refresh it first for the latest)."""
    if not has(store, "model_versions", tracking_uri):
        raise VersionError(
            "no MLflow registry in the catalog: run the pretrain stage first, or give the "
            "tracking URI (--spec, or MLFLOW_TRACKING_URI)"
        )
    rows = catalog_rows(
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
    """One row per registered version: aliases, family, creation time, key pretraining numbers
    (the run's: a pretraining point's own amount is in its tags), and its `point` if it is one."""
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
        f"{picks}, mv.run_id, mv.tags['point'] as point "
        "from model_versions mv left join metrics_latest m on m.run_id = mv.run_id "
        "group by all order by mv.name, mv.version"
    )
    return catalog.query(store, sql, tracking_uri=tracking_uri, refresh_first=False)


def known(versions: list[Version]) -> str:
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
            raise VersionError(f"{ref}: no such registered version; registered: {known(versions)}")
        chosen += [v for v in found if v not in chosen]
    return chosen


# ------------------------------------------------------------------------------------ champion


def score_table(
    store: Path, name: str, mode: str, budget: str, metric: str | None, uri: str | None
) -> dict[int, dict[str, float]]:
    """version -> task -> test score (mean over seeds) of `name` in one mode at one budget, for
    `metric` (None: each task's headline metric)."""
    if not has(store, "version_scores", uri):
        return {}
    which = "headline" if metric is None else f"metric = {sql_list([metric])}"
    found = catalog_rows(
        store,
        f"select version, task, mean from version_scores where name = {sql_list([name])} "
        f"and mode = {sql_list([mode])} and budget = {sql_list([budget])} and {which}",
        uri,
    )
    table: dict[int, dict[str, float]] = {}
    for r in found:
        table.setdefault(int(r["version"]), {})[r["task"]] = float(r["mean"])
    return table


def current_champion(name: str, uri: str | None) -> int | None:
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        aliases = client.get_registered_model(name).aliases
    except MlflowException as error:
        raise VersionError(f"{name}: cannot read the registered model: {error}") from None
    return int(aliases[CHAMPION]) if CHAMPION in aliases else None


def record_promotion(name: str, record: str, champion: int | None, tracking_uri: str) -> None:
    """Store a decision's `record` (JSON) on the model; with `champion`, move the alias there and
    store the record as its reason on that version and the model too."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    client.set_registered_model_tag(name, CHECK_TAG, record)
    if champion is not None:
        client.set_registered_model_alias(name, CHAMPION, str(champion))
        client.set_model_version_tag(name, str(champion), REASON_TAG, record)
        client.set_registered_model_tag(name, REASON_TAG, record)
