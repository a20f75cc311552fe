"""MLflow glue shared by every stage task: one run per stage, the spec as params, a summary."""

from __future__ import annotations

from typing import Any

import mlflow
from prefect.artifacts import create_markdown_artifact

from pretrainlab.config import Spec
from storage import tracking
from storage.layout import Layout


def open_tracking(spec: Spec) -> str:
    """Point MLflow at the spec's tracking URI and make sure the experiment exists."""
    layout = Layout.at(spec.store)
    uri = spec.tracking_uri()
    tracking.configure(uri, layout.mlflow_artifacts)
    return tracking.ensure_experiment(spec.experiment, layout.mlflow_artifacts)


def _markdown(stage: str, run_name: str, metrics: dict[str, float], run_id: str) -> str:
    rows = "\n".join(f"| {key} | {value:,.4g} |" for key, value in sorted(metrics.items()))
    return (
        f"# {stage}: {run_name}\n\nMLflow run `{run_id}`\n\n| metric | value |\n|---|---|\n{rows}\n"
    )


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
    create_markdown_artifact(
        key=f"{stage}-summary",
        markdown=_markdown(stage, run_name, metrics, run_id),
        description=f"{stage} summary",
    )
    return run_id
