"""The DuckDB catalog: every question about the lab is one SQL query.

`<store>/catalog.duckdb` is a rebuildable cache. It holds views over the complete Parquet
outputs (a directory counts only once its `_manifest.json` exists) and tables copied from MLflow
through its client API (metric histories of a SQLite store excepted: see `metric_history`).
DuckDB allows one writing process, so nothing holds the file open: a refresh builds a new
database next to it and renames it into place, so a reader never sees a half-built catalog and
two refreshers never write the same file. Queries open it read-only.

Relations (views only exist when their files do; MLflow tables whenever MLflow was read):
  corpus        documents of every complete corpus, with `corpus_id`
  rejects       rejected records of every complete corpus, with `corpus_id`
  tokens        token shards of every tokenizer, with `family`, `tokenizer_id`, `encoding_id`
                and `corpus_id` (from the output's manifest)
  tokens_<f>    the same for one family: tokens_bert, tokens_gpt, tokens_word
  results       transfer result rows under <store>/results
  outputs       one row per complete corpus/token output, its manifest as JSON text
  tokenizers    one row per complete tokenizer: id, family, kind, vocab size, corpus, manifest
  experiments, runs, params, metrics (full history), metrics_latest (view),
  model_versions (with `aliases`), registered_models       copied from MLflow
  version_scores  test scores of each registered version per task x mode x budget x metric
                (mean over seeds), joined result rows -> transfer run -> pretrain run -> version;
                `headline` marks each task's headline metric (span_f1 for BIO tags, else accuracy)
  catalog_info  when and from where this catalog was built
  remote_corpus, remote_tokens, remote_results   the complete outputs of the store's mirror
                (storage.remote), as Arrow datasets registered for the queries that name them
"""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from mlflow import MlflowClient
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException

from pretrainlab.config import PretrainlabError
from storage.atomic import is_complete, read_manifest
from storage.layout import Layout
from storage.remote import store_mirror
from storage.tracking import TrackingUnavailable, check_tracking_reachable, redact, sqlite_path

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
# A tokenizer's family is in its _manifest.json; older ones only say their kind in the meta file.
TOKENIZER_META = "tokenizer_meta.json"
FAMILY_BY_KIND = {"wordpiece": "bert", "bpe": "gpt", "wordlevel": "word"}
MLFLOW_TABLES = ("experiments", "runs", "params", "metrics", "model_versions", "registered_models")
PAGE = 1000

TS = pa.timestamp("ms")
TAGS = pa.map_(pa.string(), pa.string())


# A result row's run is a transfer run whose `pretrain_run_id` tag names the run of a registered
# version: that chain (not family + version number, which repeat across experiments) links them.
SCORE_COLUMNS = {"run_id", "task", "family", "mode", "budget", "seed", "split", "metric", "value"}
VERSION_SCORES_SQL = """
create view version_scores as
with scored as (
    select mv.name, mv.version, r.family, r.task, r.mode, r.budget, r.metric, r.seed, r.value
    from results r
    join runs t on t.run_id = r.run_id
    join model_versions mv on mv.run_id = t.pretrain_run_id
    where r.split = 'test' and r.layer is null
),
heads as (
    select task, case when bool_or(metric = 'span_f1') then 'span_f1' else 'accuracy' end as metric
    from scored group by task
)
select s.name, s.version, s.family, s.task, s.mode, s.budget, s.metric,
    s.metric = h.metric as headline, count(distinct s.seed) as seeds, avg(s.value) as mean,
    stddev_samp(s.value) as std, min(s.value) as min, max(s.value) as max
from scored s join heads h using (task)
group by all
"""


class CatalogError(PretrainlabError, RuntimeError):
    """A query the catalog cannot answer; the message lists what exists and what to run."""


# ------------------------------------------------------------------------- Parquet outputs


def _visible_dirs(parent: Path) -> list[Path]:
    """Sub-directories, minus atomic_dir temporaries (hidden; they may already hold a manifest)."""
    if not parent.is_dir():
        return []
    return sorted(p for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))


def _complete_dirs(parent: Path) -> list[Path]:
    return [d for d in _visible_dirs(parent) if is_complete(d)]


def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _read_parquet(files: Iterable[Path]) -> str:
    listed = ", ".join(_sql_str(f.as_posix()) for f in files)
    return f"read_parquet([{listed}], union_by_name = true, filename = '_file')"


@dataclass
class View:
    name: str
    sql: str
    files: int


def _corpus_views(layout: Layout) -> list[View]:
    corpora = _complete_dirs(layout.corpora)
    parts = [f for d in corpora for f in sorted(d.glob("part-*.parquet"))]
    rejects = [d / "rejects.parquet" for d in corpora if (d / "rejects.parquet").is_file()]
    corpus_id = "parse_filename(parse_dirpath(_file)) as corpus_id"
    views = []
    for name, files in (("corpus", parts), ("rejects", rejects)):
        if files:
            sql = f"select {corpus_id}, * exclude (_file) from {_read_parquet(files)}"
            views.append(View(name, sql, len(files)))
    return views


def tokenizer_family(layout: Layout, tokenizer_id: str) -> str:
    """The model family a tokenizer serves: its manifest's "family", else its kind's family."""
    directory = layout.tokenizer(tokenizer_id)
    manifest = read_manifest(directory) or {}
    if manifest.get("family"):
        return str(manifest["family"])
    meta = _read_json(directory / TOKENIZER_META)
    kind = meta.get("kind") if isinstance(meta, dict) else None
    return FAMILY_BY_KIND.get(kind, "unknown")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _view_name(family: str) -> str:
    return "tokens_" + (re.sub(r"[^a-z0-9_]+", "_", family.lower()).strip("_") or "unknown")


def _token_output_sql(output: Path) -> str:
    """One complete token output with its ids: the corpus comes from its manifest, because the
    directory is named by encoding id (corpus, settings and code), not by corpus."""
    corpus_id = (read_manifest(output) or {}).get("corpus_id")
    ids = (
        f"{_sql_str(output.parent.name)} as tokenizer_id, {_sql_str(output.name)} as encoding_id, "
        f"{'null' if corpus_id is None else _sql_str(str(corpus_id))}::varchar as corpus_id"
    )
    files = sorted(output.glob("part-*.parquet"))
    return f"select {ids}, * exclude (_file) from {_read_parquet(files)}" if files else ""


def _token_views(layout: Layout) -> list[View]:
    by_family: dict[str, list[tuple[str, int]]] = {}
    for tokenizer_dir in _visible_dirs(layout.store / "tokens"):
        family = tokenizer_family(layout, tokenizer_dir.name)
        for output in _complete_dirs(tokenizer_dir):
            sql = _token_output_sql(output)
            if sql:
                n_files = len(list(output.glob("part-*.parquet")))
                by_family.setdefault(family, []).append((sql, n_files))
    views = []
    for family, outputs in sorted(by_family.items()):
        sql = " union all by name ".join(select for select, _ in outputs)
        views.append(View(_view_name(family), sql, sum(n for _, n in outputs)))
    if views:
        union = " union all by name ".join(
            f"select {_sql_str(v.name.removeprefix('tokens_'))} as family, * from {v.name}"
            for v in views
        )
        views.append(View("tokens", union, sum(v.files for v in views)))
    return views


# The columns of a transfer result row: what tasks/transfer.py writes and `results` reads.
RESULT_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("task", pa.string()), ("family", pa.string()),
    ("model_version", pa.string()), ("mode", pa.string()), ("budget", pa.string()),
    ("seed", pa.int32()), ("lr", pa.float64()), ("epoch", pa.int32()), ("split", pa.string()),
    ("metric", pa.string()), ("value", pa.float64()), ("layer", pa.int32()),
])


def _result_views(layout: Layout) -> list[View]:
    """Result rows: every visible Parquet file under results/ (written atomically, so whole)."""
    root = layout.results
    found = root.rglob("*.parquet") if root.is_dir() else []
    files = sorted(
        f for f in found if not any(p.startswith(".") for p in f.relative_to(root).parts)
    )
    if not files:
        return []
    return [View("results", f"select * exclude (_file) from {_read_parquet(files)}", len(files))]


def _output_rows(layout: Layout) -> pa.Table:
    rows: list[dict[str, Any]] = []
    for directory in _complete_dirs(layout.corpora):
        rows.append(_output_row("corpus", directory.name, directory))
    for tokenizer_dir in _visible_dirs(layout.store / "tokens"):
        for directory in _complete_dirs(tokenizer_dir):
            rows.append(_output_row("tokens", f"{tokenizer_dir.name}/{directory.name}", directory))
    schema = pa.schema(
        [
            ("kind", pa.string()),
            ("output_id", pa.string()),
            ("path", pa.string()),
            ("manifest", pa.string()),
        ]
    )
    return pa.Table.from_pylist(rows, schema=schema)


def _output_row(kind: str, output_id: str, directory: Path) -> dict[str, Any]:
    manifest = read_manifest(directory)
    return {
        "kind": kind,
        "output_id": output_id,
        "path": str(directory),
        "manifest": json.dumps(manifest, sort_keys=True, default=str),
    }


def _tokenizer_rows(layout: Layout) -> pa.Table:
    """Every complete tokenizer (the index/ directory has no manifest, so it is skipped)."""
    rows = []
    for directory in _complete_dirs(layout.store / "tokenizers"):
        meta = _read_json(directory / TOKENIZER_META)
        meta = meta if isinstance(meta, dict) else {}
        manifest = read_manifest(directory) or {}
        rows.append(
            {
                "tokenizer_id": directory.name,
                "family": tokenizer_family(layout, directory.name),
                "kind": meta.get("kind"),
                "vocab_size": meta.get("vocab_size"),
                "corpus_id": manifest.get("corpus_id"),
                "path": str(directory),
                "manifest": json.dumps(manifest, sort_keys=True, default=str),
            }
        )
    schema = pa.schema(
        [
            ("tokenizer_id", pa.string()),
            ("family", pa.string()),
            ("kind", pa.string()),
            ("vocab_size", pa.int64()),
            ("corpus_id", pa.string()),
            ("path", pa.string()),
            ("manifest", pa.string()),
        ]
    )
    return pa.Table.from_pylist(rows, schema=schema)


# ------------------------------------------------------------------------------------ MLflow


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


def _mlflow_tables(tracking_uri: str | None) -> tuple[dict[str, pa.Table], str]:
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


# ------------------------------------------------------------------------------------ build


@dataclass
class Contents:
    views: list[View]
    tables: dict[str, pa.Table]
    info: dict[str, Any]


def _collect(layout: Layout, tracking_uri: str | None) -> Contents:
    views = _corpus_views(layout) + _token_views(layout) + _result_views(layout)
    tables = {"outputs": _output_rows(layout), "tokenizers": _tokenizer_rows(layout)}
    uri = resolve_tracking_uri(layout, tracking_uri)
    mlflow_tables, status = _mlflow_tables(uri)
    tables.update(mlflow_tables)
    info = {
        "refreshed_at": datetime.now(UTC).replace(tzinfo=None),
        "store": str(layout.store),
        "tracking_uri": None if uri is None else redact(uri),
        "mlflow_status": status,
    }
    return Contents(views, tables, info)


def _build(path: Path, contents: Contents) -> None:
    with duckdb.connect(str(path)) as con:
        for name, table in contents.tables.items():
            con.register("_arrow_source", table)
            con.execute(f'create table "{name}" as select * from _arrow_source')
            con.unregister("_arrow_source")
        if "metrics" in contents.tables:
            con.execute(
                "create view metrics_latest as select * from metrics "
                "qualify row_number() over (partition by run_id, key "
                "order by step desc, timestamp desc, value desc) = 1"
            )
        for view in contents.views:
            try:
                con.execute(f'create view "{view.name}" as {view.sql}')
            except duckdb.Error as error:  # e.g. a damaged Parquet file inside a complete output
                raise CatalogError(f"cannot build view {view.name}: {error}") from error
        if "model_versions" in contents.tables and any(v.name == "results" for v in contents.views):
            columns = {row[0] for row in con.execute("describe results").fetchall()}
            if columns >= SCORE_COLUMNS | {"layer"}:  # result rows as tasks/transfer.py writes
                con.execute(VERSION_SCORES_SQL)
        info = pa.Table.from_pylist([contents.info])
        con.register("_arrow_source", info)
        con.execute("create table catalog_info as select * from _arrow_source")
        con.unregister("_arrow_source")
        con.execute("checkpoint")


def refresh(store: Path, tracking_uri: str | None = None) -> dict[str, Any]:
    """Rebuild `<store>/catalog.duckdb` from the outputs on disk and from MLflow.

    Built under a temporary name and renamed into place: readers keep the old file until then,
    and concurrent refreshers each finish their own file (the last rename wins).
    """
    started = time.perf_counter()
    layout = Layout.at(store)
    if not layout.store.is_dir():
        raise CatalogError(
            f"no store at {layout.store}: run `pretrainlab run SPEC` first, or point at the "
            "spec's store (--spec)"
        )
    contents = _collect(layout, tracking_uri)
    final = layout.catalog
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        _build(tmp, contents)
        Path(f"{final}.wal").unlink(missing_ok=True)  # a stale log would replay onto the new file
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
        Path(f"{tmp}.wal").unlink(missing_ok=True)
    return {
        "catalog": str(final),
        "views": {v.name: v.files for v in contents.views},
        "tables": {name: t.num_rows for name, t in contents.tables.items()},
        "mlflow": contents.info["mlflow_status"],
        "tracking_uri": contents.info["tracking_uri"],
        "seconds": round(time.perf_counter() - started, 3),
    }


# ------------------------------------------------------------------------------------ query


@contextmanager
def _open(store: Path, tracking_uri: str | None, refresh_first: bool) -> Iterator[Any]:
    layout = Layout.at(store)
    if refresh_first or not layout.catalog.is_file():
        refresh(layout.store, tracking_uri)
    with duckdb.connect(str(layout.catalog), read_only=True) as con:
        yield con


def _relations(con: Any) -> list[tuple[str, str, int]]:
    rows = con.execute(
        "select table_name, 'table', column_count from duckdb_tables() "
        "where not internal and schema_name = 'main' and database_name = current_database() "
        "union all "
        "select view_name, 'view', column_count from duckdb_views() "
        "where not internal and schema_name = 'main' and database_name = current_database() "
        "order by 1"
    ).fetchall()
    return [(str(name), str(kind), int(n)) for name, kind, n in rows]


def list_relations(store: Path, tracking_uri: str | None = None) -> list[tuple[str, str, int]]:
    """(name, 'table' | 'view', number of columns) of everything queryable, built if missing."""
    with _open(store, tracking_uri, refresh_first=False) as con:
        return _relations(con)


def query(
    store: Path, sql: str, tracking_uri: str | None = None, refresh_first: bool = True
) -> pa.Table:
    """Run one SQL query (or a script: the last statement's result) on a read-only catalog."""
    with _open(store, tracking_uri, refresh_first) as con:
        _register_remote(con, store, sql)
        try:
            relation = con.sql(sql)  # None for statements without rows (SET, PRAGMA ...)
            return relation.to_arrow_table() if relation is not None else pa.table({})
        except duckdb.Error as error:
            raise CatalogError(_explain(con, str(error), Layout.at(store))) from error


def _register_remote(con: Any, store: Path, sql: str) -> None:
    """The mirror's Parquet outputs as Arrow datasets (DuckDB's httpfs cannot be installed
    offline); only for queries that name them, since listing the mirror costs requests."""
    mirror = store_mirror(store) if "remote_" in sql.lower() else None
    for name, dataset in (mirror.datasets() if mirror else {}).items():
        con.register(name, dataset)


def _explain(con: Any, message: str, layout: Layout) -> str:
    relations = _relations(con)
    listing = ", ".join(f"{name} ({kind}, {n} cols)" for name, kind, n in relations)
    lines = [message.strip(), f"available: {listing or '(nothing)'}"]
    missing = re.search(r"Table with name (\S+) does not exist", message)
    if missing:
        status = con.execute("select mlflow_status from catalog_info").fetchall()[0][0]
        lines.append("hint: " + _hint(missing.group(1).strip('"'), layout, status))
    return "\n".join(lines)


def _hint(name: str, layout: Layout, mlflow_status: str) -> str:
    run = "run `pretrainlab run SPEC`"
    if name in ("corpus", "rejects"):
        return f"no complete corpus under {layout.corpora} yet: {run} (the ingest stage writes it)"
    if name.startswith("tokens"):
        return f"no complete token shards for {name} yet: {run} (the tokenize stage writes them)"
    if name == "results":
        return f"no result rows under {layout.results} yet: {run} (the transfer stage writes them)"
    if name.startswith("remote_"):
        return (
            f"no complete {name.removeprefix('remote_')} output on the store's mirror: set "
            f"storage.remote in the spec and {run} (it records the mirror in {layout.store})"
        )
    if name in (*MLFLOW_TABLES, "metrics_latest"):
        return (
            f"MLflow tables are missing (MLflow {mlflow_status}): give the tracking URI (--spec or "
            "MLFLOW_TRACKING_URI), start the server with `make up`, or run a stage first"
        )
    return f"no relation named {name}: the list above is everything the catalog holds"
