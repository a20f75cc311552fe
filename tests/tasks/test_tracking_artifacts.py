"""Stage artifacts in the Prefect UI (summary, metrics table, MLflow link), the transfer score
table built from result rows, and the pipeline's fail-fast on a tracking server that is down."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import mlflow
import pyarrow as pa
import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from flows.pipeline import pipeline
from pretrainlab.config import Spec, spec_from_dict
from storage.atomic import write_parquet
from storage.catalog import RESULT_SCHEMA
from storage.layout import Layout
from storage.tracking import TrackingUnavailable
from tasks import tracking as tracking_tasks

pytestmark = pytest.mark.usefixtures("prefect_harness")


def spec_at(tmp_path: Path, **extra) -> Spec:
    return spec_from_dict(
        {"experiment": "arts", "store": str(tmp_path / "store"),
         "corpus": {"sources": [{"dataset": "lee-news", "limit": 5}]}, **extra}
    )  # fmt: skip


def read_artifacts(keys: list[str]) -> dict[str, object]:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys))
        )
    return {a.key: a for a in sorted(found, key=lambda a: a.created)}  # the newest per key


def test_record_stage_publishes_summary_metrics_and_link(tmp_path: Path) -> None:
    spec = spec_at(tmp_path)

    @flow
    def stage() -> str:
        return tracking_tasks.record_stage(
            spec, "ingest", "ingest/corpus-1234", {"corpus_id": "1234"},
            {"docs_written": 42, "mb_per_s": 1.5}, {"corpus_id": "1234"},
        )  # fmt: skip

    run_id = stage()
    found = read_artifacts(["ingest-summary", "ingest-metrics", "ingest-mlflow-run"])
    assert found["ingest-summary"].type == "markdown"
    assert "| docs_written | 42 |" in found["ingest-summary"].data
    assert found["ingest-metrics"].type == "table"
    assert '"metric": "mb_per_s"' in str(found["ingest-metrics"].data).replace("'", '"')
    assert f"runs:/{run_id}" in found["ingest-mlflow-run"].data  # no server: the runs:/ URI


def test_mlflow_link_points_into_the_server_ui() -> None:
    previous = mlflow.get_tracking_uri()
    try:
        mlflow.set_tracking_uri("http://user:secret@127.0.0.1:5000")
        link = tracking_tasks.mlflow_run_link("abc", experiment_id="7")
    finally:
        mlflow.set_tracking_uri(previous)
    assert link == "http://user:***@127.0.0.1:5000/#/experiments/7/runs/abc"
    assert tracking_tasks.artifact_key("pretrain", "BERT+adapt") == "pretrain-bert-adapt"


def _rows(run: str, family: str, version: str, mode: str, values: list[float]) -> pa.Table:
    rows = [
        {"run_id": run, "task": "polarity", "family": family, "model_version": version,
         "mode": mode, "budget": "all", "seed": seed, "lr": 0.001, "epoch": 1, "split": split,
         "metric": "accuracy", "value": value, "layer": None, "task_fingerprint": "fp",
         "headline": True, "point": None}
        for seed, value in enumerate(values) for split in ("dev", "test")
    ]  # fmt: skip
    return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)


def test_transfer_scores_cover_exactly_the_flows_runs(tmp_path: Path) -> None:
    spec = spec_at(tmp_path)
    results = Layout.at(spec.store).results / "polarity"
    write_parquet(results / "a.parquet", _rows("r1", "gpt", "2", "finetune", [0.6, 0.8]))
    write_parquet(results / "b.parquet", _rows("r2", "gpt", "1", "finetune", [0.1]))  # older
    write_parquet(results / "c.parquet", _rows("r3", "baseline", "", "tfidf_logreg", [0.5]))
    scores = tracking_tasks.transfer_scores(spec, ["r1", "r3", "elsewhere"])  # not r2: older
    assert [(s["family"], s["version"], s["mean"], s["seeds"]) for s in scores] == [
        ("baseline", "", 0.5, 1), ("gpt", "2", 0.7, 2),
    ]  # fmt: skip
    assert tracking_tasks.transfer_scores(spec, []) == []

    @flow
    def publish() -> int:
        return tracking_tasks.publish_transfer_summary(spec, ["r1", "r3"])

    assert publish() == 2
    found = read_artifacts(["arts-transfer-summary", "arts-transfer-metrics"])
    assert "Model versions: gpt v2" in found["arts-transfer-summary"].data
    assert found["arts-transfer-metrics"].type == "table"


def test_pipeline_fails_fast_when_the_tracking_server_is_down(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    spec = spec_at(tmp_path, tracking={"uri": f"http://127.0.0.1:{port}"})
    started = time.monotonic()
    with pytest.raises(TrackingUnavailable) as error:
        pipeline(spec)
    assert f"MLflow tracking server http://127.0.0.1:{port} is not reachable" in str(error.value)
    assert "make up" in str(error.value)
    assert time.monotonic() - started < 30
    assert not (Path(spec.store) / "corpus").exists()  # no stage ran


def test_outside_world_steps_retry_hiccups_but_not_user_errors() -> None:
    from prefect import task

    from pretrainlab.config import PretrainlabError
    from tasks.tracking import OUTSIDE_WORLD

    calls = {"blip": 0, "mistake": 0}

    @task(**{**OUTSIDE_WORLD, "retry_delay_seconds": 0})
    def blip() -> str:
        calls["blip"] += 1
        if calls["blip"] < 3:
            raise ConnectionError("tracking server restarting")
        return "logged"

    @task(**{**OUTSIDE_WORLD, "retry_delay_seconds": 0})
    def mistake() -> None:
        calls["mistake"] += 1
        raise PretrainlabError("promote.mode: no scores for this mode")

    @flow
    def stage() -> str:
        return blip()

    @flow
    def refused() -> None:
        mistake()

    assert stage() == "logged" and calls["blip"] == 3  # two retries, then success
    with pytest.raises(PretrainlabError, match="no scores"):
        refused()
    assert calls["mistake"] == 1  # a user's mistake is not retried
