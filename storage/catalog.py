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
  results       transfer result rows under <store>/results (a file of an older row schema
                fails the refresh, naming the file and how to re-run transfer)
  predictions   per test item of each transfer run: gold, predicted label and whether correct
  probe_layers  per task x model x layer: probe accuracy, control accuracy, selectivity (or the
                majority/shuffled-label floor), relative depth, means over probe seeds
  contamination per task: test examples sharing an n-gram with the pretraining corpus, verbatim
                ones, and the models adapted on the task's text (tasks/audit.py)
  outputs       one row per complete corpus/token output, its manifest as JSON text
  tokenizers    one row per complete tokenizer: id, family, kind, vocab size, corpus, manifest
  experiments, runs, params, metrics (full history), metrics_latest (view),
  model_versions (with `aliases`), registered_models       copied from MLflow
  version_scores  test scores of each registered version per task x mode x budget x metric
                (`storage.scores`: mean over seeds, each at the rate it chose on dev), joined
                result rows -> transfer run -> pretrain run -> version; `headline` is the
                rows' own flag (the task's headline metric, as the transfer stage judged it)
  point_scores, break_even, label_equivalents   pretraining points (`storage.catalog_points`)
  catalog_info  when and from where this catalog was built
  remote_corpus, remote_tokens, remote_results   the complete outputs of the store's mirror
                (storage.remote), as Arrow datasets registered for the queries that name them

What the views read is in `storage.catalog_files`, what is copied from MLflow in
`storage.catalog_mlflow`; a score is `storage.scores`' one definition.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from pretrainlab.config import PretrainlabError
from storage.catalog_files import (
    AUDIT_SCHEMA,
    PREDICTION_SCHEMA,
    RESULT_SCHEMA,
    StaleResultsError,
    View,
    audit_views,
    corpus_views,
    output_rows,
    result_views,
    token_views,
    tokenizer_family,
    tokenizer_rows,
)
from storage.catalog_mlflow import (
    MLFLOW_TABLES,
    client_metric_points,
    mlflow_tables,
    read_mlflow,
    resolve_tracking_uri,
    sqlite_metric_points,
)
from storage.catalog_points import POINT_SCORES_SQL, reading_views
from storage.layout import Layout
from storage.remote import store_mirror
from storage.scores import cell_stats, chosen_rows, labelled_tasks
from storage.tracking import redact

# Re-exported: what the stages and tests import from the catalog.
__all__ = [
    "AUDIT_SCHEMA",
    "PREDICTION_SCHEMA",
    "RESULT_SCHEMA",
    "CatalogError",
    "StaleResultsError",
    "client_metric_points",
    "list_relations",
    "query",
    "read_mlflow",
    "refresh",
    "resolve_tracking_uri",
    "sqlite_metric_points",
    "tokenizer_family",
]


# A result row's run is a transfer run whose `pretrain_run_id` tag names the run of a registered
# version: that chain (not family + version number, which repeat across experiments) links them.
SCORE_COLUMNS = {
    "run_id", "task", "family", "mode", "budget", "seed", "split", "metric", "value", "headline"
}
VERSION = ("name", "version", "family", "task", "mode", "budget")
VERSION_SCORES_SQL = f"""
create view version_scores as
with scored as (
    select mv.name, mv.version, r.*
    from ({labelled_tasks("results")}) r
    join runs t on t.run_id = r.run_id
    join model_versions mv on mv.run_id = t.pretrain_run_id and mv.tags['point'] is null
    where r.point is null  -- pretraining points share the run: theirs are in point_scores
),
{chosen_rows("scored", VERSION)},
cells as ({cell_stats("chosen", (*VERSION, "metric", "headline"))})
select c.name, c.version, c.family, c.task, c.mode, c.budget, c.metric,
    c.headline, c.seeds, c.mean, c.sd as std, c.min, c.max
from cells c
"""


class CatalogError(PretrainlabError, RuntimeError):
    """A query the catalog cannot answer; the message lists what exists and what to run."""


# ------------------------------------------------------------------------------------ build


@dataclass
class Contents:
    views: list[View]
    tables: dict[str, pa.Table]
    info: dict[str, Any]


def _collect(layout: Layout, tracking_uri: str | None) -> Contents:
    views = corpus_views(layout) + token_views(layout) + result_views(layout) + audit_views(layout)
    views += reading_views(layout)
    tables = {"outputs": output_rows(layout), "tokenizers": tokenizer_rows(layout)}
    uri = resolve_tracking_uri(layout, tracking_uri)
    copied, status = mlflow_tables(uri)
    tables.update(copied)
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
                if "metrics" in contents.tables and "point" in columns:
                    con.execute(POINT_SCORES_SQL)
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
    tmp = layout.catalog_build(uuid.uuid4().hex[:8])
    try:
        _build(tmp, contents)
        # a stale log would replay onto the new file
        Layout.duckdb_wal(final).unlink(missing_ok=True)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
        Layout.duckdb_wal(tmp).unlink(missing_ok=True)
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
