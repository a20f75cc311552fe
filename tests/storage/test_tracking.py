"""storage.tracking against a real MLflow (SQLite under tmp) and real HTTP sockets."""

from __future__ import annotations

import http.server
import math
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from mlflow import MlflowClient

from storage import tracking
from storage.tracking import (
    MASK,
    TrackingUnavailable,
    check_tracking_reachable,
    configure,
    ensure_experiment,
    flatten_params,
    is_secret_key,
    log_metrics_safe,
    log_spec,
    redact,
    start_stage_run,
)


@pytest.fixture(scope="module")
def tracking_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite tracking database per module: creating one runs migrations (~2 s)."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'db' / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()  # creates the schema
    return uri


@pytest.fixture
def tracked(tracking_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Configure tracking for one test; restore MLflow's global URI and active runs after."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(tracking, "_configured_artifact_root", None)
    artifacts = tmp_path / "artifacts"
    configure(tracking_db, artifacts)
    yield artifacts
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


@pytest.fixture
def experiment(request: pytest.FixtureRequest) -> str:
    """An experiment of this test only: its artifact location is this test's tmp dir."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)


# ------------------------------------------------------------------------------------ redact


@pytest.mark.parametrize(
    "key",
    ["password", "token", "api_key", "apiKey", "aws_secret_access_key", "HF_TOKEN",
     "db_password", "credentials", "AWSAccessKeyId", "private_key", "secret"],
)  # fmt: skip
def test_secret_key_names_are_recognised(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key",
    ["tokens", "tokenizer", "tokenizers", "max_sentence_tokens", "vocab_size", "keyboard",
     "monkey", "secretary", "model_key", "cache_key", "min_count", "text_field"],
)  # fmt: skip
def test_ordinary_key_names_are_kept(key: str) -> None:
    assert not is_secret_key(key)


def test_redact_masks_urls_and_secret_keys_without_mutating() -> None:
    spec = {
        "tracking": {"uri": "postgresql://bob:hunter2@db.example:5432/mlflow"},
        "sources": [
            {"path": "s3://AKIA:wJal/rXU@bucket/x"},
            {"path": "https://host/data.txt?token=abc123&page=2"},
        ],
        "api_key": "sk-123",
        "aws": {"aws_secret_access_key": "wJalrXUtnFEMI", "region": "eu-west-1"},
        "tokenizers": {"max_sentence_tokens": 256, "vocab_size": 8000},
        "password": None,
    }
    clean = redact(spec)
    text = repr(clean)
    for secret in ("hunter2", "wJal", "abc123", "sk-123", "wJalrXUtnFEMI"):
        assert secret not in text
    assert clean["tracking"]["uri"] == "postgresql://bob:***@db.example:5432/mlflow"
    assert clean["sources"][1]["path"] == "https://host/data.txt?token=***&page=2"
    assert clean["api_key"] == MASK and clean["aws"]["region"] == "eu-west-1"
    assert clean["tokenizers"] == {"max_sentence_tokens": 256, "vocab_size": 8000}
    assert clean["password"] is None  # nothing to hide; None stays visible
    assert spec["api_key"] == "sk-123"  # the input is untouched


def test_redact_handles_a_password_containing_at_sign() -> None:
    assert redact("mysql://u:p@ss@h:3306/db") == "mysql://u:***@h:3306/db"
    assert redact("http://h:5000/a@b") == "http://h:5000/a@b"  # no userinfo: unchanged


# ------------------------------------------------------------------------------ flatten_params


def test_flatten_params_dots_indexes_truncates_and_redacts() -> None:
    flat = flatten_params(
        {
            "corpus": {"sources": [{"path": "a.txt"}, {"dataset": "lee"}], "min_chars": 1},
            "tracking": {"uri": "http://u:pw@h:5000"},
            "empty": {},
            "none": [],
            "long": "x" * 7000,
            "flag": True,
            "limit": None,
        }
    )
    assert flat["corpus.sources.0.path"] == "a.txt"
    assert flat["corpus.sources.1.dataset"] == "lee"
    assert flat["corpus.min_chars"] == "1"
    assert flat["tracking.uri"] == "http://u:***@h:5000"
    assert flat["empty"] == "{}" and flat["none"] == "[]"
    assert flat["flag"] == "True" and flat["limit"] == "None"
    assert len(flat["long"]) == 6000 and flat["long"].endswith("[truncated]")
    assert all(isinstance(v, str) for v in flat.values())
    assert flatten_params({"a": 1}, prefix="spec") == {"spec.a": "1"}


# ------------------------------------------------------------------ configure and experiments


def test_configure_creates_sqlite_parent_and_sets_uri(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'deep' / 'er' / 'mlflow.db'}"
    try:
        configure(uri, tmp_path / "art")
        assert mlflow.get_tracking_uri() == uri
        assert (tmp_path / "deep" / "er").is_dir() and (tmp_path / "art").is_dir()
    finally:
        mlflow.set_tracking_uri(None)


def test_ensure_experiment_puts_artifacts_under_the_root(tracked: Path) -> None:
    experiment_id = ensure_experiment("transfer/polarity", tracked)
    assert ensure_experiment("transfer/polarity", tracked) == experiment_id
    location = MlflowClient().get_experiment(experiment_id).artifact_location
    assert location == (tracked.resolve() / "transfer_polarity").as_uri()


def test_ensure_experiment_restores_a_deleted_experiment(tracked: Path) -> None:
    client = MlflowClient()
    experiment_id = ensure_experiment("deleted-once", tracked)
    client.delete_experiment(experiment_id)
    assert ensure_experiment("deleted-once", tracked) == experiment_id
    assert client.get_experiment(experiment_id).lifecycle_stage == "active"


def test_ensure_experiment_is_safe_when_two_callers_race(tracked: Path) -> None:
    """Two clients create the same experiments at the same moment (a barrier per name); the
    loser hits SQLite's unique constraint (seen in 6 of 10 names here) and must get the id."""
    barrier = threading.Barrier(2)
    ids: list[list[str]] = [[], []]
    errors: list[BaseException] = []

    def create_all(slot: int) -> None:
        try:
            for index in range(10):
                barrier.wait(timeout=60)
                ids[slot].append(ensure_experiment(f"race-{index}", tracked))
        except BaseException as error:
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=create_all, args=(slot,)) for slot in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert ids[0] == ids[1] and len(set(ids[0])) == 10
    names = {e.name for e in MlflowClient().search_experiments(max_results=1000)}
    assert {f"race-{index}" for index in range(10)} <= names


# ------------------------------------------------------------------------------------- runs


def test_stage_run_finishes_and_keeps_artifacts_out_of_the_cwd(
    tracked: Path, experiment: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    with start_stage_run(experiment, "ingest", {"stage": "ingest", "db_password": "x"}) as run:
        mlflow.log_text("hello", "notes.txt")
    got = MlflowClient().get_run(run.info.run_id)
    assert got.info.status == "FINISHED"
    assert got.data.tags["stage"] == "ingest" and got.data.tags["db_password"] == MASK
    assert got.info.artifact_uri.startswith(tracked.resolve().as_uri())
    assert list(tracked.rglob("notes.txt"))
    assert not (workdir / "mlruns").exists() and not (workdir / "mlflow.db").exists()


def test_stage_run_marks_failures_and_reraises(tracked: Path, experiment: str) -> None:
    with pytest.raises(ValueError, match="boom"), start_stage_run(experiment, "bad") as run:
        raise ValueError("boom")
    assert MlflowClient().get_run(run.info.run_id).info.status == "FAILED"
    assert mlflow.active_run() is None


def test_stage_run_marks_a_cancel_killed(tracked: Path, experiment: str) -> None:
    with pytest.raises(KeyboardInterrupt), start_stage_run(experiment, "cancelled") as run:
        raise KeyboardInterrupt
    assert MlflowClient().get_run(run.info.run_id).info.status == "KILLED"


def test_stage_run_resumes_by_id(tracked: Path, experiment: str) -> None:
    with start_stage_run(experiment, "pretrain") as run:
        log_metrics_safe({"loss": 3.0}, step=0)
    with pytest.raises(RuntimeError), start_stage_run(experiment, run_id=run.info.run_id):
        log_metrics_safe({"loss": 2.0}, step=1)
        raise RuntimeError("killed mid-way")
    with start_stage_run(experiment, run_id=run.info.run_id, tags={"resumed": 1}) as again:
        log_metrics_safe({"loss": 1.0}, step=2)
    client = MlflowClient()
    assert again.info.run_id == run.info.run_id
    final = client.get_run(run.info.run_id)
    assert final.info.status == "FINISHED" and final.data.tags["resumed"] == "1"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
    assert sorted(steps) == [0, 1, 2]


def test_stage_run_without_configure_says_what_to_call(
    tracking_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tracking, "_configured_artifact_root", None)
    with pytest.raises(TrackingUnavailable, match="configure"), start_stage_run("x"):
        pass


def test_log_spec_logs_redacted_params_and_file(tracked: Path, experiment: str) -> None:
    spec = {
        "experiment": "lab",
        "tracking": {"uri": "https://alice:hunter2@mlflow.example"},
        "corpus": {"sources": [{"path": "/data/a.txt"}]},
        "hf_token": "hf_abc",
    }
    with start_stage_run(experiment, "spec") as run:
        logged = log_spec(spec)
    stored = MlflowClient().get_run(run.info.run_id)
    assert stored.data.params == logged
    assert stored.data.params["corpus.sources.0.path"] == "/data/a.txt"
    assert stored.data.params["hf_token"] == MASK
    assert "hunter2" not in repr(stored.data.params)
    (spec_file,) = tracked.rglob("spec.yaml")
    saved = yaml.safe_load(spec_file.read_text())
    assert saved["tracking"]["uri"] == "https://alice:***@mlflow.example"
    assert "hunter2" not in spec_file.read_text()


def test_log_metrics_safe_keeps_only_finite_numbers(tracked: Path, experiment: str) -> None:
    values = {
        "loss": 1.5,
        "tokens": 10,
        "np": np.float32(0.25),
        "np0d": np.array(2.0),
        "nan": math.nan,
        "inf": float("inf"),
        "none": None,
        "text": "3",
        "flag": True,
        "vector": np.array([1.0, 2.0]),
    }
    with start_stage_run(experiment, "metrics") as run:
        logged = log_metrics_safe(values, step=3)
    assert logged == {"loss": 1.5, "tokens": 10.0, "np": 0.25, "np0d": 2.0}
    metrics = MlflowClient().get_run(run.info.run_id).data.metrics
    assert metrics == logged


# ------------------------------------------------------------------------------ reachability


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        ok = self.path == "/prefix/health"
        self.send_response(200 if ok else 404)
        self.end_headers()
        self.wfile.write(b"OK" if ok else b"no")

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def health_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_tracking_that_answers_health_is_reachable(health_server: str) -> None:
    check_tracking_reachable(f"{health_server}/prefix", timeout=2)
    check_tracking_reachable(health_server.replace("http://", "http://u:pw@") + "/prefix/")


def test_http_tracking_without_health_is_refused(health_server: str) -> None:
    with pytest.raises(TrackingUnavailable, match="HTTP 404"):
        check_tracking_reachable(health_server, timeout=2)


def test_closed_port_fails_fast_naming_the_uri_and_the_fix() -> None:
    uri = f"http://alice:hunter2@127.0.0.1:{_free_port()}"
    started = time.perf_counter()
    with pytest.raises(TrackingUnavailable) as caught:
        check_tracking_reachable(uri, timeout=2)
    assert time.perf_counter() - started < 2.5
    message = str(caught.value)
    assert "127.0.0.1" in message and "make up" in message and "MLFLOW_TRACKING_URI" in message
    assert "hunter2" not in message


def test_sqlite_location_must_be_creatable(tmp_path: Path) -> None:
    check_tracking_reachable(f"sqlite:///{tmp_path / 'new' / 'dir' / 'mlflow.db'}")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(TrackingUnavailable, match="a-file"):
        check_tracking_reachable(f"sqlite:///{blocker / 'mlflow.db'}")


def test_file_store_is_refused_unless_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(TrackingUnavailable, match="sqlite"):
        check_tracking_reachable(tmp_path.as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    check_tracking_reachable(tmp_path.as_uri())
