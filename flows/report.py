"""Report flow: the answer to "what is pretraining worth?", from the catalog alone."""

from __future__ import annotations

from typing import Any

from prefect import flow

from pretrainlab.config import Spec
from tasks.report import build_report


@flow(name="report", flow_run_name="report/{spec.experiment}")
def report(spec: Spec) -> dict[str, Any]:
    """Render the comparison report and publish it to MLflow and the Prefect UI."""
    return build_report(spec)
