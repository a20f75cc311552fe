"""Local services without starting the servers: settings, a busy port, status, and stopping
exactly the process group a pid file names (the real servers run in tests/e2e/test_operate.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pretrainlab import services


@pytest.fixture
def settings(tmp_path: Path) -> services.Settings:
    return services.Settings(
        run_dir=tmp_path / "run", store=tmp_path / "store",
        prefect_port=_free_port(), mlflow_port=_free_port(),
    )  # fmt: skip


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((services.HOST, 0))
        return sock.getsockname()[1]


@pytest.fixture
def listener() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind((services.HOST, 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_settings_come_from_the_environment(tmp_path: Path) -> None:
    env = {"PRETRAINLAB_STORE": str(tmp_path / "s"), "PRETRAINLAB_PREFECT_PORT": "14200"}
    settings = services.Settings.from_env(env)
    assert settings.run_dir == tmp_path / "s" / "run"
    assert (settings.prefect_port, settings.mlflow_port, settings.pool) == (
        14200, 5000, "pretrainlab",
    )  # fmt: skip
    assert settings.client_env() == {
        "PREFECT_API_URL": "http://127.0.0.1:14200/api",
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
    }
    with pytest.raises(services.ServiceError, match=r"PRETRAINLAB_MLFLOW_PORT='50o0'.*port"):
        services.Settings.from_env({"PRETRAINLAB_MLFLOW_PORT": "50o0"})


def test_a_busy_port_is_refused_before_anything_starts(
    settings: services.Settings, listener: int
) -> None:
    busy = services.Settings(settings.run_dir, settings.store, listener, settings.mlflow_port)
    with pytest.raises(services.ServiceError) as error:
        services.start(busy)
    message = str(error.value)
    assert f"port {listener} on 127.0.0.1 is already in use" in message
    assert "PRETRAINLAB_PREFECT_PORT=<port> make up" in message
    assert list(settings.run_dir.glob("*.pid")) == []  # mlflow was not started either


def test_status_when_nothing_runs(settings: services.Settings) -> None:
    states = {s.name: s for s in services.status(settings)}
    assert set(states) == {"mlflow", "prefect", "worker"}
    assert not any(s.running or s.healthy for s in states.values())
    assert states["prefect"].url == f"http://127.0.0.1:{settings.prefect_port}"
    assert states["worker"].detail == "Prefect server not reachable"
    assert services.stop(settings) == []


def _group(command: str) -> subprocess.Popen:
    return subprocess.Popen(["bash", "-c", command], start_new_session=True)


def test_stop_ends_the_named_process_group_and_nothing_else(settings: services.Settings) -> None:
    settings.run_dir.mkdir(parents=True)
    # Like the worker: children in its group, and one in a session of its own (a flow run).
    ours = _group("sleep 61 & setsid sleep 62 & wait")
    bystander = subprocess.Popen(["sleep", "63"])
    try:
        pid_file = settings.run_dir / "worker.pid"
        pid_file.write_text(json.dumps({"pid": ours.pid, "marker": "sleep 61"}))
        time.sleep(0.5)
        family = services._descendants(ours.pid)
        assert len(family) == 2 and services._group_alive(ours.pid)
        assert [s.running for s in services.status(settings)] == [False, False, True]
        assert services.stop(settings) == ["worker"]
        ours.wait(timeout=5)
        assert not services._live(ours.pid, family)  # the group and the other session too
        assert bystander.poll() is None
        assert not pid_file.exists()
    finally:
        bystander.kill()
        bystander.wait()
        if ours.poll() is None:
            os.killpg(ours.pid, 9)


def test_a_stale_or_reused_pid_is_never_signalled(settings: services.Settings) -> None:
    settings.run_dir.mkdir(parents=True)
    stranger = subprocess.Popen(["sleep", "64"], start_new_session=True)
    try:
        # The pid file names a live process that is not what we started (pid reused).
        (settings.run_dir / "mlflow.pid").write_text(
            json.dumps({"pid": stranger.pid, "marker": "server --backend-store-uri"})
        )
        assert services.stop(settings) == []
        assert stranger.poll() is None
        assert not (settings.run_dir / "mlflow.pid").exists()
    finally:
        stranger.kill()
        stranger.wait()


def test_cli_up_status_down_say_what_is_wrong(
    settings: services.Settings, listener: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from pretrainlab.cli import app

    monkeypatch.setenv("PRETRAINLAB_STORE", str(settings.store))
    monkeypatch.setenv("PRETRAINLAB_PREFECT_PORT", str(settings.prefect_port))
    monkeypatch.setenv("PRETRAINLAB_MLFLOW_PORT", str(listener))
    runner = CliRunner()
    up = runner.invoke(app, ["up"])
    assert up.exit_code == 2
    assert f"port {listener} on 127.0.0.1 is already in use" in " ".join(up.output.split())
    status = runner.invoke(app, ["status"])
    assert status.exit_code == 0
    assert "down" in status.output and "Prefect server not reachable" in status.output
    assert f"port {listener} is held by a process not started from" in " ".join(
        status.output.split()
    )
    down = runner.invoke(app, ["down"])
    assert down.exit_code == 0 and "nothing was running" in down.output
    monkeypatch.setenv("PRETRAINLAB_MLFLOW_PORT", "http")
    assert "expected a TCP port number" in runner.invoke(app, ["status"]).output


def test_run_refuses_a_down_tracking_server_before_prefect_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from pretrainlab.cli import app

    port = _free_port()
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"experiment: down\nstore: {tmp_path / 'store'}\ntracking: {{uri: 'http://127.0.0.1:{port}'}}\n"
        "corpus: {sources: [{dataset: lee-news, limit: 5}]}\n"
    )
    result = CliRunner().invoke(app, ["run", str(spec), "--until", "ingest"])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert f"MLflow tracking server http://127.0.0.1:{port} is not reachable" in text
    assert "Traceback" not in result.output
    assert not (tmp_path / "store" / "corpus").exists()
