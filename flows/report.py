"""Report flow: the answer to "what is pretraining worth?", from the catalog alone; then the
downstream scores go onto each model version, and `champion` moves if the spec says so."""

from __future__ import annotations

from typing import Any

from prefect import flow

from pretrainlab.config import Spec
from tasks.promote import promote_versions
from tasks.report import build_report


@flow(name="report", flow_run_name="report/{spec.experiment}")
def report(spec: Spec, families: list[str] | None = None) -> dict[str, Any]:
    """Render the comparison report, publish it to MLflow and the Prefect UI, rank versions."""
    result = build_report(spec)
    result["promote"] = promote_versions(spec, families)
    return result
