"""A cancel (SIGTERM) mid-pretraining keeps its checkpoint; a re-run resumes the same MLflow run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import yaml
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "pretrainlab.cli"]


def test_sigterm_checkpoints_and_rerun_resumes_same_run(tmp_path: Path) -> None:
    store = tmp_path / "store"
    spec = tmp_path / "gpt.yaml"
    loop = {
        "max_steps": 400,
        "batch_size": 4,
        "eval_every": 100,
        "eval_batches": 1,
        "checkpoint_every": 5,
        "log_every": 5,
        "warmup_steps": 1,
    }
    spec.write_text(
        yaml.safe_dump(
            {
                "experiment": "cancel",
                "store": str(store),
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
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    process = subprocess.Popen(
        [*CLI, "run", str(spec)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    checkpoints: list[Path] = []
    while time.monotonic() < deadline and not checkpoints:
        checkpoints = list(store.glob("models/gpt/*/work/checkpoints/*"))
        time.sleep(0.1)
    assert checkpoints, "no checkpoint was written"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2, stderr[-3000:]
    assert "re-run to resume" in stderr

    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    client = MlflowClient()
    (cancelled,) = mlflow.search_runs(
        experiment_names=["cancel"], filter_string="tags.stage = 'pretrain'", output_format="list"
    )
    assert cancelled.info.status == "KILLED"
    stopped_at = max(m.step for m in client.get_metric_history(cancelled.info.run_id, "loss"))
    assert 0 < stopped_at < 400

    done = subprocess.run(
        [*CLI, "run", str(spec)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (resumed,) = mlflow.search_runs(
        experiment_names=["cancel"], filter_string="tags.stage = 'pretrain'", output_format="list"
    )
    assert resumed.info.run_id == cancelled.info.run_id
    assert resumed.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(resumed.info.run_id, "loss")]
    assert max(steps) == 400 and min(steps) == 5
    version = client.get_model_version_by_alias("cancel-gpt", "candidate")
    assert version.run_id == resumed.info.run_id
