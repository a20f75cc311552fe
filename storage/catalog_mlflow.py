"""The catalog's MLflow tables: experiments, runs, params, metric histories and the registry,
copied through MLflow's client (metric histories of a SQLite store read directly: see
`metric_history`)."""

from __future__ import annotations

import math
import os
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
from mlflow import MlflowClient
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException

from storage.layout import Layout
from storage.tracking import TrackingUnavailable, check_tracking_reachable, sqlite_path

# Tags the tasks set that deserve their own column in `runs` (all tags stay in the `tags` map).
TAG_COLUMNS = (
    "stage",
    "family",
    "task",
    "mode",
    "corpus_id",
    "tokenizer_id",
    "config_hash",
    "git_sha",
    "pretrain_run_id",
)
MLFLOW_TABLES = ("experiments", "runs", "params", "metrics", "model_versions", "registered_models")
PAGE = 1000

TS = pa.timestamp("ms")
TAGS = pa.map_(pa.string(), pa.string())


def resolve_tracking_uri(layout: Layout, tracking_uri: str | None) -> str | None:
    """The URI to read: the given one, else $MLFLOW_TRACKING_URI, else the store's SQLite file
    when it exists (the same order as Spec.tracking_uri()); None means no MLflow tables."""
    if tracking_uri:
        return tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return layout.default_tracking_uri if layout.mlflow_db.is_file() else None


def _ms(value: int | None) -> int | None:
    return None if value is None else int(value)


def _pages(search: Any, **kwargs: Any) -> Iterator[Any]:
    """Every item of a paginated MLflow search."""
    token = None
    while True:
        page = search(page_token=token, **kwargs)
        yield from page
        token = page.token
        if not token:
            return


EXPERIMENTS = pa.schema(
    [
        ("experiment_id", pa.string()),
        ("name", pa.string()),
        ("artifact_location", pa.string()),
        ("lifecycle_stage", pa.string()),
        ("creation_time", TS),
        ("last_update_time", TS),
        ("tags", TAGS),
    ]
)
RUNS = pa.schema(
    [
        ("run_id", pa.string()),
        ("experiment_id", pa.string()),
        ("experiment", pa.string()),
        ("run_name", pa.string()),
        ("status", pa.string()),
        ("start_time", TS),
        ("end_time", TS),
        ("duration_s", pa.float64()),
        ("artifact_uri", pa.string()),
        ("user_id", pa.string()),
        ("parent_run_id", pa.string()),
    ]
    + [(tag, pa.string()) for tag in TAG_COLUMNS]
    + [("tags", TAGS)]
)
PARAMS = pa.schema([("run_id", pa.string()), ("key", pa.string()), ("value", pa.string())])
METRICS = pa.schema(
    [
        ("run_id", pa.string()),
        ("key", pa.string()),
        ("value", pa.float64()),
        ("step", pa.int64()),
        ("timestamp", TS),
    ]
)
MODEL_VERSIONS = pa.schema(
    [
        ("name", pa.string()),
        ("version", pa.int64()),
        ("run_id", pa.string()),
        ("model_id", pa.string()),
        ("source", pa.string()),
        ("status", pa.string()),
        ("aliases", pa.list_(pa.string())),
        ("tags", TAGS),
        ("description", pa.string()),
        ("creation_time", TS),
        ("last_updated_time", TS),
    ]
)
REGISTERED_MODELS = pa.schema(
    [
        ("name", pa.string()),
        ("description", pa.string()),
        ("aliases", TAGS),
        ("tags", TAGS),
        ("creation_time", TS),
        ("last_updated_time", TS),
    ]
)


def _experiment_rows(client: MlflowClient) -> list[dict[str, Any]]:
    experiments = _pages(
        client.search_experiments, view_type=ViewType.ACTIVE_ONLY, max_results=PAGE
    )
    return [
        {
            "experiment_id": e.experiment_id,
            "name": e.name,
            "artifact_location": e.artifact_location,
            "lifecycle_stage": e.lifecycle_stage,
            "creation_time": _ms(e.creation_time),
            "last_update_time": _ms(e.last_update_time),
            "tags": dict(e.tags),
        }
        for e in experiments
    ]


def _run_row(run: Any, experiment_names: dict[str, str]) -> dict[str, Any]:
    info, tags = run.info, run.data.tags
    ended = info.end_time is not None and info.start_time is not None
    row = {
        "run_id": info.run_id,
        "experiment_id": info.experiment_id,
        "experiment": experiment_names.get(info.experiment_id),
        "run_name": info.run_name,
        "status": info.status,
        "start_time": _ms(info.start_time),
        "end_time": _ms(info.end_time),
        "duration_s": (info.end_time - info.start_time) / 1000 if ended else None,
        "artifact_uri": info.artifact_uri,
        "user_id": info.user_id,
        "parent_run_id": tags.get("mlflow.parentRunId"),
        "tags": dict(tags),
    }
    row.update({tag: tags.get(tag) for tag in TAG_COLUMNS})
    return row


def client_metric_points(client: MlflowClient, run: Any) -> list[tuple[Any, ...]]:
    """The full history of every metric of a run through the client: one call per key."""
    run_id = run.info.run_id
    return [
        (run_id, m.key, m.value, m.step, _ms(m.timestamp))
        for key in sorted(run.data.metrics)
        for m in client.get_metric_history(run_id, key)
    ]


def sqlite_metric_points(db_path: Path, run_ids: set[str]) -> list[tuple[Any, ...]]:
    """Every metric point of `run_ids` in one read-only SELECT on MLflow's SQLite file.

    MLflow stores NaN as value 0 with is_nan = 1; the client API turns it back into NaN.
    """
    with closing(sqlite3.connect(f"{db_path.as_uri()}?mode=ro", uri=True)) as con:
        found = con.execute(
            "select run_uuid, key, value, step, timestamp, is_nan from metrics "
            "order by run_uuid, key, step, timestamp"
        ).fetchall()
    return [
        (run, key, math.nan if is_nan else value, step, ts)
        for run, key, value, step, ts, is_nan in found
        if run in run_ids
    ]


def metric_history(client: MlflowClient, tracking_uri: str, runs: list[Any]) -> pa.Table:
    """The full history of every metric of `runs`.

    The client API costs one query per (run, key): 0.4-1.2 s for 50 runs x 10 metrics x 20
    steps and 22 s for 300 runs on SQLite (2 busy cores), paid on every `pretrainlab query`; one
    read-only SELECT takes 0.04 s and 0.8 s. So a SQLite store is read directly; should MLflow's
    schema change, the client path below still answers. Servers get 8 requests in flight.
    """
    db_path = sqlite_path(tracking_uri)
    rows: list[tuple[Any, ...]] | None = None
    if db_path is not None:
        try:
            rows = sqlite_metric_points(db_path, {r.info.run_id for r in runs})
        except sqlite3.Error:
            rows = None
    if rows is None:
        with ThreadPoolExecutor(max_workers=8) as pool:
            rows = [
                row
                for chunk in pool.map(partial(client_metric_points, client), runs)
                for row in chunk
            ]
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in METRICS.names]
    return pa.Table.from_arrays(
        [pa.array(column, type=f.type) for column, f in zip(columns, METRICS, strict=True)],
        schema=METRICS,
    )


def _model_rows(client: MlflowClient) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Registered models and their versions; aliases come from the models, because version
    searches "may not have aliases populated" (MLflow docs)."""
    models = list(_pages(client.search_registered_models, max_results=100))
    aliases: dict[tuple[str, str], list[str]] = {}
    for model in models:
        for alias, version in model.aliases.items():
            aliases.setdefault((model.name, str(version)), []).append(alias)
    model_rows = [
        {
            "name": m.name,
            "description": m.description,
            "aliases": {alias: str(version) for alias, version in m.aliases.items()},
            "tags": dict(m.tags),
            "creation_time": _ms(m.creation_timestamp),
            "last_updated_time": _ms(m.last_updated_timestamp),
        }
        for m in models
    ]
    version_rows = [
        {
            "name": v.name,
            "version": int(v.version),
            "run_id": v.run_id,
            "model_id": getattr(v, "model_id", None),
            "source": v.source,
            "status": v.status,
            "aliases": sorted(aliases.get((v.name, str(v.version)), [])),
            "tags": dict(v.tags),
            "description": v.description,
            "creation_time": _ms(v.creation_timestamp),
            "last_updated_time": _ms(v.last_updated_timestamp),
        }
        for v in _pages(client.search_model_versions, max_results=PAGE)
    ]
    return model_rows, version_rows


def read_mlflow(tracking_uri: str) -> dict[str, pa.Table]:
    """Copy MLflow's experiments, runs, params, metric histories and registry into Arrow."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiments = _experiment_rows(client)
    names = {e["experiment_id"]: e["name"] for e in experiments}
    runs = []
    if names:
        runs = list(_pages(client.search_runs, experiment_ids=list(names), max_results=PAGE))
    params = [
        {"run_id": r.info.run_id, "key": k, "value": v}
        for r in runs
        for k, v in sorted(r.data.params.items())
    ]
    models, versions = _model_rows(client)
    return {
        "experiments": pa.Table.from_pylist(experiments, schema=EXPERIMENTS),
        "runs": pa.Table.from_pylist([_run_row(r, names) for r in runs], schema=RUNS),
        "params": pa.Table.from_pylist(params, schema=PARAMS),
        "metrics": metric_history(client, tracking_uri, runs),
        "model_versions": pa.Table.from_pylist(versions, schema=MODEL_VERSIONS),
        "registered_models": pa.Table.from_pylist(models, schema=REGISTERED_MODELS),
    }


def mlflow_tables(tracking_uri: str | None) -> tuple[dict[str, pa.Table], str]:
    """MLflow's tables and a status line; an unusable backend leaves them out, saying why."""
    if tracking_uri is None:
        return {}, "not configured (no tracking URI, no <store>/mlflow.db)"
    db_path = sqlite_path(tracking_uri)
    if db_path is not None and not db_path.is_file():
        return {}, f"no MLflow database at {db_path} yet"
    try:
        check_tracking_reachable(tracking_uri, timeout=5)
        return read_mlflow(tracking_uri), "ok"
    except (TrackingUnavailable, MlflowException) as error:
        return {}, f"unavailable: {error}"
