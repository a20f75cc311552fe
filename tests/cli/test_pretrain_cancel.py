"""A cancel (SIGTERM) or a Ctrl-C (SIGINT to the process group) mid-pretraining keeps its
checkpoint and exits promptly; a re-run resumes the same MLflow run from that checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import mlflow
import yaml
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "pretrainlab.cli"]
MAX_STEPS = 400
CTRL_C_LIMIT_S = 10.0  # issue 14: Ctrl-C exits within 10 s (scaled up on an overloaded machine)


def _write_spec(tmp_path: Path, experiment: str) -> Path:
    """GPT alone, tiny but MAX_STEPS deep: pretraining lasts long enough to be interrupted."""
    loop = {
        "max_steps": MAX_STEPS,
        "batch_size": 4,
        "eval_every": 100,
        "eval_batches": 1,
        "checkpoint_every": 5,
        "log_every": 5,
        "warmup_steps": 1,
    }
    spec = tmp_path / f"{experiment}.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "experiment": experiment,
                "store": str(tmp_path / "store"),
                "corpus": {
                    "sources": [{"dataset": "lee-news", "limit": 80}],
                    "valid_fraction": 0.2,
                },
                "tokenizers": {"gpt": {"vocab_size": 400}},
                "pretrain": {
                    "families": ["gpt"],
                    "gpt": {
                        "n_layer": 1,
                        "n_head": 2,
                        "n_embd": 32,
                        "block_size": 16,
                        "loop": loop,
                    },
                },
            }
        )
    )
    return spec


def _env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("PREFECT_API_URL", None)  # the run's own temporary API, as for a new user
    return env


def _start_and_wait_for_checkpoint(tmp_path: Path, spec: Path) -> subprocess.Popen:
    """`pretrainlab run SPEC` as a terminal starts it: the leader of its own process group."""
    process = subprocess.Popen(
        [*CLI, "run", str(spec)],
        env=_env(tmp_path),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    checkpoints: list[Path] = []
    while time.monotonic() < deadline and not checkpoints and process.poll() is None:
        checkpoints = list((tmp_path / "store").glob("models/gpt/*/work/checkpoints/*"))
        time.sleep(0.1)
    assert checkpoints, "no checkpoint was written"
    return process


def _pretrain_run(store: Path, experiment: str):
    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    (run,) = mlflow.search_runs(
        experiment_names=[experiment],
        filter_string="tags.stage = 'pretrain'",
        output_format="list",
    )
    return run


def _rerun_resumes(tmp_path: Path, spec: Path, experiment: str) -> None:
    """The interrupted MLflow run is KILLED with a loss history that stops early; the same
    command finishes it: same run, every step trained exactly once (resumed_from > 0)."""
    cancelled = _pretrain_run(tmp_path / "store", experiment)
    client = MlflowClient()  # after _pretrain_run: on the store's tracking database
    assert cancelled.info.status == "KILLED"
    stopped_at = max(m.step for m in client.get_metric_history(cancelled.info.run_id, "loss"))
    assert 0 < stopped_at < MAX_STEPS

    rerun_started_ms = time.time() * 1000
    done = subprocess.run(
        [*CLI, "run", str(spec)],
        env=_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = _pretrain_run(tmp_path / "store", experiment)
    assert resumed.info.run_id == cancelled.info.run_id
    assert resumed.info.status == "FINISHED"
    history = client.get_metric_history(resumed.info.run_id, "loss")
    steps = [m.step for m in history]
    assert max(steps) == MAX_STEPS and min(steps) == 5
    assert set(Counter(steps).values()) == {1}, "a step was trained twice: no resume"
    first_new_step = min(m.step for m in history if m.timestamp >= rerun_started_ms)
    assert first_new_step > stopped_at > 0  # the re-run started from the checkpoint
    version = client.get_model_version_by_alias(f"{experiment}-gpt", "candidate")
    assert version.run_id == resumed.info.run_id


def test_sigterm_checkpoints_and_rerun_resumes_same_run(tmp_path: Path) -> None:
    spec = _write_spec(tmp_path, "cancel")
    process = _start_and_wait_for_checkpoint(tmp_path, spec)
    process.send_signal(signal.SIGTERM)  # the CLI alone, as a worker or `kill` cancels it
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2, stderr[-3000:]
    assert "re-run to resume" in stderr
    _rerun_resumes(tmp_path, spec, "cancel")


def _descendants(pid: int) -> set[int]:
    """Every live process below `pid` (the temporary Prefect API among them), from /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parents[int(entry.name)] = int(fields[1])
    found, frontier = set(), [pid]
    while frontier:
        below = [child for child, parent in parents.items() if parent == frontier[-1]]
        frontier.pop()
        found.update(below)
        frontier.extend(below)
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


def test_ctrl_c_checkpoints_exits_promptly_and_rerun_resumes(tmp_path: Path) -> None:
    spec = _write_spec(tmp_path, "ctrlc")
    process = _start_and_wait_for_checkpoint(tmp_path, spec)
    children = _descendants(process.pid)
    assert children, "the run's temporary Prefect API should be running"
    load = os.getloadavg()[0] / (os.cpu_count() or 1)
    limit = CTRL_C_LIMIT_S * min(max(load, 1.0), 3.0)
    interrupted = time.monotonic()
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    _, stderr = process.communicate(timeout=120)
    seconds = time.monotonic() - interrupted
    print(f"Ctrl-C to exit: {seconds:.1f} s (limit {limit:.0f} s, load/core {load:.2f})")
    assert process.returncode == 2, stderr[-3000:]
    assert seconds <= limit, f"Ctrl-C took {seconds:.1f} s to exit:\n{stderr[-3000:]}"
    assert f"resume with: pretrainlab run {spec}" in " ".join(stderr.split()), stderr[-3000:]
    assert "(sigint)" in stderr
    assert not _alive(children), "a process of the run (its Prefect API?) outlived it"
    _rerun_resumes(tmp_path, spec, "ctrlc")
