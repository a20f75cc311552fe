"""Registered versions side by side: spec differences, pretraining numbers, downstream scores.

Read from the catalog: spec differences from `params` and identity tags, pretraining numbers
from `metrics_latest`, downstream scores from `version_scores`; each with its delta vs the first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from storage import catalog
from storage.versions import (
    Version,
    VersionError,
    all_versions,
    catalog_rows,
    has,
    resolve_refs,
    sql_list,
    tracking_for,
)

# Tags of a version that say what it was built from: compared like spec params.
IDENTITY_TAGS = ("family", "corpus_id", "tokenizer_id", "config_hash", "git_sha", "model_key")
DOWNSTREAM = "downstream"
COLUMNS = ("section", "task", "mode", "budget", "key", "version", "value", "delta", "seeds")


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
    runs = sql_list([v.run_id for v in versions])
    sql = f"select run_id, key, value from params where run_id in ({runs})"
    found = catalog_rows(store, sql, uri)
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
    runs = sql_list([v.run_id for v in versions])
    found = catalog_rows(
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
    if not has(store, "version_scores", uri):
        return []
    names = sql_list(sorted({v.name for v in versions}))
    where = " and headline" if headline_only else ""
    return catalog_rows(
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
