"""Ingest flow: raw sources -> deduplicated, split Parquet corpus, recorded in MLflow."""

from __future__ import annotations

from typing import Any

from prefect import flow

from pretrainlab.config import Spec
from tasks.ingest import build_corpus, plan_corpus, record_corpus


@flow(name="ingest", flow_run_name="ingest/{spec.experiment}")
def ingest(spec: Spec) -> dict[str, Any]:
    """Fingerprint the sources, build (or reuse) the corpus, record it."""
    plan = plan_corpus(spec)
    manifest = build_corpus(spec, plan)
    manifest["mlflow_run_id"] = record_corpus(spec, manifest)
    return manifest
