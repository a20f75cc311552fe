"""Which MLflow runs an experiment holds, read cheaply: the report stage's cache key needs it on
every `pretrainlab run`, including the fast path that answers without starting Prefect, so a
SQLite store is read with sqlite3 (read-only) and MLflow is imported only for a server."""

from __future__ import annotations

import sqlite3
import urllib.parse
from contextlib import closing
from pathlib import Path


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///…` URI (SQLAlchemy form), None for other schemes."""
    if not uri.startswith("sqlite:///"):
        return None
    path = urllib.parse.unquote(uri[len("sqlite:///") :].split("?", 1)[0])
    return Path(path) if path and path != ":memory:" else None


REPORT_STAGE = "report"  # the `stage` tag of the report stage's own runs
RUNS_OF_EXPERIMENT = """
select r.run_uuid, r.lifecycle_stage, r.status from runs r
join experiments e on e.experiment_id = r.experiment_id
where (e.name = ? or e.name like ? escape '\\')
  and not exists (select 1 from tags t
                  where t.run_uuid = r.run_uuid and t.key = 'stage' and t.value = 'report')
order by r.run_uuid
"""


def experiment_runs(uri: str, experiment: str) -> list[list[str]]:
    """(run id, lifecycle stage, status) of every run of `experiment` and its sub-experiments
    (`<experiment>/transfer/<task>`), deleted ones included: what a report built from the
    catalog depends on. The report's own runs are left out: it records one each time it is
    built, which would change the key of the next, unchanged build.
    Read straight from a SQLite store (no MLflow start-up), else through
    the client."""
    db_path = sqlite_path(uri)
    prefix = experiment.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "/%"
    if db_path is not None:
        if not db_path.is_file():
            return []
        with closing(sqlite3.connect(f"{db_path.as_uri()}?mode=ro", uri=True)) as con:
            try:
                rows = con.execute(RUNS_OF_EXPERIMENT, (experiment, prefix)).fetchall()
            except sqlite3.Error:  # an empty database MLflow has not initialised yet
                return []
        return [list(row) for row in rows]
    import mlflow  # only for a tracking server: a SQLite store is read without it

    client = mlflow.MlflowClient(uri)
    names = [e for e in client.search_experiments(view_type=mlflow.entities.ViewType.ALL)
             if e.name == experiment or e.name.startswith(experiment + "/")]
    runs = [run for e in names for run in client.search_runs(
        [e.experiment_id], run_view_type=mlflow.entities.ViewType.ALL, max_results=50_000)]
    return sorted([r.info.run_id, r.info.lifecycle_stage, r.info.status] for r in runs
                  if r.data.tags.get("stage") != REPORT_STAGE)
