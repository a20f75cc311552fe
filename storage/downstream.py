"""Downstream scores logged onto each version's pretrain run, for MLflow's compare view."""

from __future__ import annotations

import re
import time
from pathlib import Path

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from storage import catalog
from storage.version_compare import DOWNSTREAM
from storage.versions import catalog_rows, has, tracking_for

_METRIC_CHARS = re.compile(r"[^\w.\- /]")  # what MLflow allows, minus ":" (as storage.tracking)


def metric_name(*parts: str) -> str:
    """`downstream/polarity/partial_1/all/accuracy`: "/" groups the charts in MLflow's UI."""
    return "/".join(_METRIC_CHARS.sub("_", part) for part in parts)


def downstream_metrics(store: Path, tracking_uri: str | None = None) -> dict[str, dict[str, float]]:
    """pretrain run id -> {metric name: value}: every headline test score (mean over seeds) of
    the run's version, and per mode x budget the mean over tasks."""
    if not has(store, "version_scores", tracking_uri):
        return {}
    rows = catalog_rows(
        store,
        "select mv.run_id, s.task, s.mode, s.budget, s.metric, s.mean from version_scores s "
        "join model_versions mv using (name, version) where s.headline",
        tracking_uri,
    )
    out: dict[str, dict[str, float]] = {}
    groups: dict[tuple[str, str, str], list[float]] = {}
    for r in rows:
        name = metric_name(DOWNSTREAM, r["task"], r["mode"], r["budget"], r["metric"])
        out.setdefault(r["run_id"], {})[name] = float(r["mean"])
        groups.setdefault((r["run_id"], r["mode"], r["budget"]), []).append(float(r["mean"]))
    for (run_id, mode, budget), values in groups.items():
        name = metric_name(DOWNSTREAM, "mean", mode, budget, "headline")
        out[run_id][name] = sum(values) / len(values)
    return out


def publish_downstream(store: Path, tracking_uri: str | None = None, refresh: bool = True) -> int:
    """Log downstream summaries on each version's pretrain run, so selecting runs in MLflow's
    compare view shows what each model is worth next to its pretraining numbers. Only values
    that changed are logged (re-running adds no history); returns how many were logged."""
    tracking_uri = tracking_for(store, tracking_uri)
    if refresh:
        catalog.refresh(store, tracking_uri)
    wanted = downstream_metrics(store, tracking_uri)
    if not wanted:
        return 0
    current = {
        (r["run_id"], r["key"]): r["value"]
        for r in catalog_rows(
            store,
            f"select run_id, key, value from metrics_latest where key like '{DOWNSTREAM}/%'",
            tracking_uri,
        )
    }
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    now, logged = int(time.time() * 1000), 0
    for run_id, metrics in wanted.items():
        fresh = [
            Metric(key, value, now, 0)
            for key, value in sorted(metrics.items())
            if current.get((run_id, key)) is None or abs(current[(run_id, key)] - value) > 1e-12
        ]
        if fresh:
            client.log_batch(run_id, metrics=fresh)
            logged += len(fresh)
    return logged
