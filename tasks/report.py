"""Report task: the comparison built from DuckDB queries, attached to MLflow and to Prefect."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import mlflow
from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

import pipelines.report.report as report_lib
from pretrainlab.config import Spec
from storage import catalog, tracking
from storage.layout import Layout
from tasks.progress import stage_logger
from tasks.tracking import artifact_key, mlflow_run_link, open_tracking


@task(name="build-report", cache_policy=NO_CACHE)
def build_report(spec: Spec) -> dict[str, Any]:
    """Refresh the catalog, render report.md/.html + PNGs, attach them to an MLflow run."""
    layout = Layout.at(spec.store)
    catalog.refresh(layout.store, spec.tracking_uri())
    out_dir = layout.report(spec.experiment)
    result = report_lib.build_report(
        layout.store,
        out_dir,
        title=f"pretrainlab report: {spec.experiment}",
        experiment=spec.experiment,
    )
    open_tracking(spec)
    with tracking.start_stage_run(
        spec.experiment, f"report/{spec.experiment}", {"stage": "report"}
    ) as run:
        mlflow.log_artifacts(str(out_dir), artifact_path="report")
        for claim in result.claims:
            mlflow.set_tag("claim." + re.sub(r"[^\w. -]+", "_", claim.name), claim.verdict)
        run_id = run.info.run_id
    markdown = Path(result.markdown_path).read_text(encoding="utf-8")
    claims = "\n".join(f"- **{c.verdict}** — {c.line}" for c in result.claims)
    create_markdown_artifact(
        key="report",
        description=f"pretrainlab report: {spec.experiment}",
        markdown=f"# What is pretraining worth? ({spec.experiment})\n\n{claims}\n\n"
        f"Full report: `{result.html_path}` (MLflow run `{run_id}`)\n\n"
        + markdown.split("\n", 1)[-1][:50_000],
    )
    create_table_artifact(
        key=artifact_key(spec.experiment, "report-claims"),
        table=[{"claim": c.name, "verdict": c.verdict, "evidence": c.line} for c in result.claims],
        description=f"pretrainlab report: {spec.experiment}: claims and verdicts",
    )
    create_link_artifact(
        key=artifact_key(spec.experiment, "report-mlflow-run"),
        link=mlflow_run_link(run_id),
        link_text=f"MLflow run {run_id} (report files under artifacts/report)",
        description=f"pretrainlab report: {spec.experiment}: the MLflow run",
    )
    for claim in result.claims:
        stage_logger().info(f"{claim.verdict}: {claim.line}")
    return {
        "output": str(result.html_path),
        "cache_hit": False,
        "mlflow_run_id": run_id,
        "claims": {c.name: c.verdict for c in result.claims},
    }
