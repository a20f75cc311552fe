"""MLflow glue shared by every stage task: one run per stage, the spec as params, a summary."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import duckdb
import mlflow
import pyarrow as pa
import pyarrow.parquet as pq
from mlflow import MlflowClient
from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from pretrainlab.config import PretrainlabError, Spec
from storage import tracking
from storage.layout import Layout
from storage.scores import score_sql


def transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry what the outside world may fix by itself (a tracking server's hiccup, a network
    blip), never a mistake the user must fix: that fails at once, with its message."""
    try:
        state.result()
    except PretrainlabError:
        return False
    except Exception:
        return True
    return False


# For the steps that talk to servers (MLflow, the Prefect API, object storage) and nothing else:
# computing steps are not retried, their failures are bugs or bad input.
OUTSIDE_WORLD: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": 5,
    "retry_condition_fn": transient,
}


def open_tracking(spec: Spec) -> str:
    """Point MLflow at the spec's tracking URI and make sure the experiment exists."""
    layout = Layout.at(spec.store)
    uri = spec.tracking_uri()
    tracking.configure(uri, layout.mlflow_artifacts)
    return tracking.ensure_experiment(spec.experiment, layout.mlflow_artifacts)


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes): `pretrain`, `bert` -> ..."""
    return re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")[:120] or "stage"


def mlflow_run_link(run_id: str, experiment_id: str | None = None) -> str:
    """Where to open the run: its page in the MLflow UI with a server, else its `runs:/` URI."""
    uri = mlflow.get_tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return f"runs:/{run_id}"
    if experiment_id is None:
        experiment_id = MlflowClient().get_run(run_id).info.experiment_id
    return f"{tracking.redact(uri).rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def _number(value: float) -> str:
    return f"{value:,.4g}" if isinstance(value, float) else f"{value:,}"


def publish_stage_artifacts(
    key: str,
    title: str,
    run_id: str,
    metrics: Mapping[str, float],
    lines: tuple[str, ...] = (),
) -> str:
    """The stage in the Prefect UI: a markdown summary, a metrics table, a link to its MLflow run.

    The three artifacts share `key` (suffixed -summary, -metrics, -mlflow-run), so the UI keeps
    one history per stage across runs. Returns the MLflow link.
    """
    link = mlflow_run_link(run_id)
    numbers = {k: v for k, v in sorted(metrics.items()) if isinstance(v, int | float)}
    rows = "\n".join(f"| {k} | {_number(v)} |" for k, v in numbers.items())
    body = "\n".join(f"- {line}" for line in lines)
    opened = f"[{run_id}]({link})" if link.startswith("http") else f"`{link}`"
    create_markdown_artifact(
        key=f"{key}-summary",
        markdown=f"# {title}\n\n{body}\n\nMLflow run: {opened}\n\n"
        f"| metric | value |\n|---|---|\n{rows}\n",
        description=f"{title}: summary",
    )
    create_table_artifact(
        key=f"{key}-metrics",
        table=[{"metric": k, "value": v} for k, v in numbers.items()],
        description=f"{title}: key metrics",
    )
    create_link_artifact(
        key=f"{key}-mlflow-run", link=link, link_text=f"MLflow run {run_id}",
        description=f"{title}: the MLflow run",
    )  # fmt: skip
    return link


def record_stage(
    spec: Spec,
    stage: str,
    run_name: str,
    tags: dict[str, str],
    metrics: dict[str, float],
    summary: dict[str, Any],
) -> str:
    """Log a finished stage to MLflow and publish its summary as a Prefect artifact."""
    open_tracking(spec)
    with tracking.start_stage_run(spec.experiment, run_name, tags={"stage": stage, **tags}) as run:
        tracking.log_spec(spec.model_dump(mode="json"))
        tracking.log_metrics_safe(metrics)
        mlflow.log_dict(tracking.redact(summary), f"{stage}_summary.json")
        run_id = run.info.run_id
    publish_stage_artifacts(artifact_key(stage), f"{stage}: {run_name}", run_id, metrics)
    return run_id


def publish_pretrain_artifacts(spec: Spec, model: Mapping[str, Any]) -> str:
    """One family's pretraining in the Prefect UI (also when its model came from the cache)."""
    open_tracking(spec)
    summary = model.get("summary", {})
    state = "reused from cache" if model.get("cache_hit") else "trained"
    lines = (
        f"registered model **{model['registered_name']}** version **{model['version']}** "
        f"({state})",
        f"{summary.get('headline_metric', 'headline')}: {summary.get('headline_value')}",
        f"weights: `{model['model_dir']}`",
    )
    return publish_stage_artifacts(
        artifact_key("pretrain", model["family"]),
        f"pretrain {model['family']}: {model['registered_name']} v{model['version']}",
        model["run_id"],
        {k: v for k, v in summary.items() if not isinstance(v, bool)},
        lines,
    )


HEADLINE_METRICS = ("accuracy", "span_f1")


def transfer_scores(spec: Spec, run_ids: Iterable[str]) -> list[dict[str, Any]]:
    """Mean test headline score per task x model x mode x budget over the result rows of these
    transfer runs (one flow's, cached or new), by the score definition the report also uses."""
    files = Layout.at(spec.store).result_files()
    wanted = pa.table({"run_id": sorted(set(run_ids))}, schema=pa.schema([("run_id", pa.string())]))
    if not files or wanted.num_rows == 0:
        return []
    rows = pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")
    con = duckdb.connect()
    con.register("rows", rows)
    con.register("wanted", wanted)
    metrics = ", ".join(f"'{m}'" for m in HEADLINE_METRICS)
    cell = ("task", "family", "model_version", "mode", "budget", "metric")
    scores = score_sql(
        "(select * from rows semi join wanted using (run_id))", cell, f"metric in ({metrics})"
    )
    return con.sql(
        f"""
        with scores as ({scores})
        select task, family, model_version as version, mode, budget, metric,
               round(mean, 4) as mean, n as seeds
        from scores order by task, family, mode, budget
        """
    ).to_arrow_table().to_pylist()


@task(name="publish-transfer-summary", cache_policy=NO_CACHE, **OUTSIDE_WORLD)
def publish_transfer_summary(spec: Spec, run_ids: list[str]) -> int:
    """The transfer stage in the Prefect UI: mean test scores of the flow's runs per task, model
    and mode, and links to each task's MLflow experiment (its compare view). Returns the rows."""
    open_tracking(spec)
    scores = transfer_scores(spec, run_ids)
    links = {}
    for name in sorted({row["task"] for row in scores}):
        experiment = MlflowClient().get_experiment_by_name(f"{spec.experiment}/transfer/{name}")
        if experiment is not None:
            links[name] = _experiment_link(experiment.experiment_id)
    versions = sorted({f"{r['family']} v{r['version']}" for r in scores if r["version"]})
    header = "| task | model | version | mode | budget | metric | mean | seeds |\n" + "|---" * 8
    body = "\n".join("| " + " | ".join(str(v) for v in row.values()) + " |" for row in scores)
    experiments = "\n".join(f"- {name}: {link}" for name, link in links.items())
    create_markdown_artifact(
        key=artifact_key(spec.experiment, "transfer-summary"),
        markdown=f"# transfer: {spec.experiment}\n\nModel versions: {', '.join(versions)}\n\n"
        f"MLflow experiments (select runs, then Compare):\n{experiments}\n\n"
        f"Mean test score over seeds:\n\n{header}|\n{body}\n",
        description="transfer: summary",
    )
    create_table_artifact(
        key=artifact_key(spec.experiment, "transfer-metrics"),
        table=scores,
        description="transfer: mean test score per task, model, mode and budget",
    )
    if links:
        first = next(iter(links))
        create_link_artifact(
            key=artifact_key(spec.experiment, "transfer-mlflow"),
            link=links[first],
            link_text=f"MLflow experiment {spec.experiment}/transfer/{first}",
            description="transfer: the MLflow experiment",
        )
    return len(scores)


def _experiment_link(experiment_id: str) -> str:
    uri = mlflow.get_tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return f"experiment {experiment_id} in {tracking.redact(uri)}"
    return f"{tracking.redact(uri).rstrip('/')}/#/experiments/{experiment_id}"
