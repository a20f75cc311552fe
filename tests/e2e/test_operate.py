"""Operating the lab against real servers: `pretrainlab up` (Prefect server + process worker +
MLflow server on free 127.0.0.1 ports), `prefect deploy --all`, the nightly schedule read back
through the API, a pipeline run triggered through the API with a tiny spec, then what it left in
MLflow, in the Prefect UI (artifacts) and in the catalog; a bad parameter and a stopped MLflow
server each fail with a clear message. Every process is started and stopped by this test."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow import MlflowClient

from pretrainlab import services
from tests.flows.tiny_specs import tiny_spec_dict

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
FAMILIES = ["word2vec", "gpt"]
pytestmark = pytest.mark.timeout(420)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((services.HOST, 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.Settings]:
    """The three services, up for this module only, on ports nobody else uses."""
    root = tmp_path_factory.mktemp("operate")
    settings = services.Settings(
        run_dir=root / "run",
        store=root / "store",
        prefect_port=free_port(),
        mlflow_port=free_port(),
        extra_env={
            "PREFECT_WORKER_QUERY_SECONDS": "2",
            "PREFECT_WORKER_HEARTBEAT_SECONDS": "5",
            # The cron is checked through the API; no scheduled 02:00 run may start mid-test.
            "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
        },
    )
    try:
        began = time.monotonic()
        services.start(settings, timeout=240)
        print(f"services up in {time.monotonic() - began:.0f}s")
        yield settings
    finally:
        stopped = services.stop(settings)
        print(f"stopped {stopped}")
        assert not any(state.running for state in services.status(settings))


class RetryWhenBusy(httpx.HTTPTransport):
    """The Prefect server answers 503 while its database is busy (a loaded CI machine); its own
    client retries those, so this test's raw HTTP client does too."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for attempt in range(6):
            response = super().handle_request(request)
            if response.status_code != 503:
                return response
            response.close()
            time.sleep(0.5 * 2**attempt)
        return response


def api(settings: services.Settings) -> httpx.Client:
    return httpx.Client(
        base_url=settings.prefect_api_url, timeout=30, transport=RetryWhenBusy()
    )


def tiny_spec(store: Path) -> dict[str, Any]:
    sources = [{"dataset": "lee-news", "limit": 100}, {"dataset": "wordnet-glosses", "limit": 300}]
    spec = tiny_spec_dict(store.parent, "operate", sources, steps=4)
    spec["store"] = str(store)
    spec["pretrain"]["families"] = FAMILIES
    spec["transfer"] = {
        "tasks": [
            {"name": "polarity", "kind": "classify", "dataset": "polarity-sentences",
             "max_examples": 40},
        ],
        "modes": ["scratch", "finetune"],
        "budgets": ["all"],
        "seeds": [0],
        "lrs": {"scratch": [1e-3], "finetune": [1e-3]},
        "passes": 1, "min_steps": 10, "max_steps": 10, "evals": 10,
        "batch_size": 8,
        "max_len": 32,
    }  # fmt: skip
    return spec


def deploy(settings: services.Settings) -> None:
    env = {**os.environ, "PREFECT_API_URL": settings.prefect_api_url,
           "PREFECT_HOME": str(settings.run_dir / "cli-home")}  # fmt: skip
    done = subprocess.run(
        [str(BIN / "prefect"), "--no-prompt", "deploy", "--all"],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def wait_final(client: httpx.Client, run_id: str, timeout: float, log: Path) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.get(f"/flow_runs/{run_id}").raise_for_status().json()
        if run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        time.sleep(2)
    raise AssertionError(f"flow run {run_id} still {run['state_type']} after {timeout}s:\n"
                         f"{tail(log)}")  # fmt: skip


def tail(log: Path, lines: int = 60) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def artifacts(client: httpx.Client, flow_run_ids: list[str]) -> dict[str, dict[str, Any]]:
    body = {"flow_runs": {"id": {"any_": flow_run_ids}}, "limit": 200}
    found = client.post("/artifacts/filter", json=body).raise_for_status().json()
    return {a["key"]: a for a in found if a["key"]}


def subflow_ids(client: httpx.Client, parent: str) -> list[str]:
    """The pipeline run and every flow run below it (stages are subflows)."""
    ids, frontier = [parent], [parent]
    while frontier:
        tasks = client.post(
            "/task_runs/filter", json={"flow_runs": {"id": {"any_": frontier}}, "limit": 200}
        ).json()
        subflow_task_ids = [t["id"] for t in tasks]
        children = client.post(
            "/flow_runs/filter",
            json={"flow_runs": {"parent_task_run_id": {"any_": subflow_task_ids}}, "limit": 200},
        ).json()
        frontier = [c["id"] for c in children if c["id"] not in ids]
        ids += frontier
    return ids


def test_scheduled_deployments_run_track_and_fail_clearly(lab: services.Settings) -> None:
    client = api(lab)
    states = {s.name: s for s in services.status(lab)}
    assert all(s.running and s.healthy for s in states.values()), states
    assert "workers: pretrainlab-local" in states["worker"].detail
    # A pool nobody serves is named as such (its runs would wait forever).
    client.post("/work_pools/", json={"name": "idle", "type": "process"}).raise_for_status()
    idle = services.pool_state(dataclasses.replace(lab, pool="idle"))
    assert "work pool 'idle'" in idle and "no worker online, so runs stay Scheduled" in idle

    began = time.monotonic()
    deploy(lab)
    print(f"deploy --all took {time.monotonic() - began:.0f}s")
    nightly = client.get("/deployments/name/pipeline/nightly").raise_for_status().json()
    [schedule] = nightly["schedules"]
    assert schedule["active"] and schedule["schedule"]["cron"] == "0 2 * * *"
    assert schedule["schedule"]["timezone"] == "UTC"
    assert nightly["work_pool_name"] == lab.pool
    for stage in ("ingest", "tokenize", "pretrain", "transfer", "report"):
        stage_run = client.get(f"/deployments/name/pipeline/{stage}").raise_for_status().json()
        assert stage_run["parameters"]["until"] == stage

    # A wrong parameter is refused by the server before any run exists, naming the field.
    spec = tiny_spec(lab.store)
    bad = client.post(
        f"/deployments/{nightly['id']}/create_flow_run",
        json={"parameters": {"spec": {**spec, "corpus": {**spec["corpus"], "valid_fraction": 2}}}},
    )
    assert bad.status_code in (409, 422), bad.text
    assert "Validation failed for field 'spec.corpus.valid_fraction'" in bad.text, bad.text

    started = time.monotonic()
    run = client.post(
        f"/deployments/{nightly['id']}/create_flow_run", json={"parameters": {"spec": spec}}
    ).raise_for_status().json()
    final = wait_final(client, run["id"], 300, lab.run_dir / "worker.log")
    assert final["state_type"] == "COMPLETED", (final["state"], tail(lab.run_dir / "worker.log"))
    print(f"pipeline run completed in {time.monotonic() - started:.0f}s")

    # MLflow server: a new registered version per family, transfer runs linked to it.
    mlflow = MlflowClient(tracking_uri=lab.mlflow_url, registry_uri=lab.mlflow_url)
    versions = {f: mlflow.search_model_versions(f"name='operate-{f}'") for f in FAMILIES}
    assert all(len(v) == 1 for v in versions.values()), versions
    transfer_exp = mlflow.get_experiment_by_name("operate/transfer/polarity")
    transfer_runs = mlflow.search_runs([transfer_exp.experiment_id])
    for family, [version] in versions.items():
        linked = [
            r for r in transfer_runs
            if r.data.tags.get("registered_name") == version.name
            and r.data.tags.get("model_version") == version.version
            and r.data.tags.get("pretrain_run_id") == version.run_id
        ]  # fmt: skip
        assert {r.data.tags["mode"] for r in linked} == {"scratch", "finetune"}, family

    # Prefect artifacts: every stage's summary, metrics table and link to its MLflow run.
    found = artifacts(client, subflow_ids(client, run["id"]))
    for key in ("ingest", "tokenize", "pretrain-word2vec", "pretrain-gpt"):
        assert found[f"{key}-summary"]["type"] == "markdown", sorted(found)
        assert found[f"{key}-metrics"]["type"] == "table"
        link = found[f"{key}-mlflow-run"]
        assert f"({lab.mlflow_url}/#/experiments/" in link["data"], link  # a markdown link
    assert "operate-gpt" in found["pretrain-gpt-summary"]["data"]
    assert "operate-report-claims" in found and "operate-report-mlflow-run" in found
    assert "operate-transfer-summary" in found and "operate-transfer-metrics" in found

    # The catalog answers a comparison of the versions this run trained.
    sql = (
        "select family, name, version, mode, round(mean, 3) as score from version_scores "
        "where headline and task = 'polarity' order by family, mode"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": lab.mlflow_url}
    answer = subprocess.run(
        [str(BIN / "pretrainlab"), "query", sql, "--store", str(lab.store), "--format", "json"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert answer.returncode == 0, answer.stderr
    rows = json.loads(answer.stdout)
    assert {(r["family"], r["mode"]) for r in rows} == {
        (f, m) for f in FAMILIES for m in ("finetune", "scratch")
    }
    assert {r["version"] for r in rows} == {1}
    assert all(0.0 <= r["score"] <= 1.0 for r in rows)

    # MLflow server down: the next run fails at once, before any stage, saying what to do.
    assert services.stop(lab, ["mlflow"]) == ["mlflow"]
    again = client.post(
        f"/deployments/{nightly['id']}/create_flow_run", json={"parameters": {"spec": spec}}
    ).raise_for_status().json()
    failed = wait_final(client, again["id"], 120, lab.run_dir / "worker.log")
    assert failed["state_type"] == "FAILED", failed["state"]
    message = failed["state"]["message"]
    assert f"MLflow tracking server {lab.mlflow_url} is not reachable" in message, message
    assert "make up" in message
    assert subflow_ids(client, again["id"]) == [again["id"]]  # no stage started
