"""The transfer sweep on every runner: a 2-worker local Dask cluster and a local Ray cluster give
the same result rows (keys and values) as the thread runner, under the determinism contract; a
cell whose worker dies is submitted again and the sweep completes; `--dry-run` counts cells."""

from __future__ import annotations

import csv
import shutil
import time
from pathlib import Path
from typing import Any

import mlflow
import pyarrow.parquet as pq
import pytest

from flows.pipeline import plan
from flows.transfer import transfer
from pretrainlab.config import Spec, spec_from_dict
from tasks.transfer import FAULT_ENV
from tests.pipelines.hf_checkpoints import save_bert_checkpoint, sentences

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.slow]
TASK = "has-the"


def _spec_dict(root: Path) -> dict[str, Any]:
    """One task, a tiny BERT checkpoint, frozen (features upstream) and finetune (dropout draws
    from the cell's generators): 2 modes x 2 seeds = 4 cells."""
    short = [s for s in sentences() if 5 <= len(s.split()) <= 20][:60]
    task_file = root / "has_the.csv"
    with task_file.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows([s, "yes" if " the " in s else "no"] for s in short)
    return {
        "experiment": "sweep",
        "store": str(root / "store"),
        "corpus": {"sources": [{"dataset": "lee-news", "limit": 120}], "rows_per_shard": 30},
        "pretrain": {"families": ["gpt"]},
        "tokenizers": {"gpt": {"vocab_size": 600}},
        "transfer": {
            "tasks": [{"name": TASK, "kind": "classify", "train": str(task_file)}],
            "checkpoints": [{"name": "mybert", "path": str(save_bert_checkpoint(root / "ckpt"))}],
            "families": ["gpt"],
            "modes": ["frozen", "finetune"],
            "budgets": [20],
            "seeds": [0, 1],
            "lrs": {"frozen": [1e-2], "finetune": [1e-3]},
            "passes": 2,
            "min_steps": 10,
            "max_steps": 20,
            "evals": 10,
            "batch_size": 8,
            "max_len": 32,
        },
    }


def _with(data: dict[str, Any], **compute: Any) -> Spec:
    return spec_from_dict({**data, "compute": compute})


def _rows(spec: Spec) -> list[tuple]:
    """Every result row of the cells (baselines aside), without the MLflow run id."""
    rows = []
    for path in sorted((Path(spec.store) / "results" / TASK).glob("*.parquet")):
        for row in pq.read_table(path).to_pylist():
            row.pop("run_id")
            if row["family"] != "baseline":
                rows.append((path.name, *sorted(row.items())))
    return sorted(rows, key=repr)


def _forget_results(spec: Spec) -> None:
    """Drop the result files (the model and its features stay): every cell runs again."""
    for name in ("results", "predictions"):
        shutil.rmtree(Path(spec.store) / name, ignore_errors=True)


@pytest.fixture(scope="module")
def serial(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], list[tuple]]:
    """The sweep on the thread runner: the rows every other runner must reproduce."""
    data = _spec_dict(tmp_path_factory.mktemp("sweep"))
    spec = _with(data)
    result = transfer(spec, {})
    rows = _rows(spec)
    assert result["computed"] >= 4 and len({r[0] for r in rows}) == 4  # 4 cells, 4 files
    assert transfer(spec, {})["computed"] == 0  # stored cells are never submitted again
    return data, rows


def _plant_fault(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The first cell to start on a worker finds this marker and kills its own process."""
    marker = tmp_path / "die-once"
    marker.touch()
    monkeypatch.setenv(FAULT_ENV, str(marker))
    return marker


def test_dask_cluster_gives_the_serial_rows_and_survives_a_killed_worker(
    serial: tuple[dict[str, Any], list[tuple]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dask

    data, expected = serial
    spec = _with(data, runner="dask", dask={"n_workers": 2})
    _forget_results(spec)
    marker = _plant_fault(tmp_path, monkeypatch)
    # Dask gives up on a task at once when its worker dies: only the flow's resubmission can
    # finish the sweep.
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        result = transfer(spec, {})
    assert not marker.exists(), "no worker died: the fault was never injected"
    assert result["computed"] >= 4
    assert _rows(spec) == expected


def test_ray_cluster_encodes_shards_and_gives_the_serial_rows(
    serial: tuple[dict[str, Any], list[tuple]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray
    from prefect_ray.context import remote_options

    from flows.ingest import ingest
    from flows.tokenization import tokenization

    data, expected = serial
    spec = _with(data, runner="ray", ray={"gpus_per_cell": 1})
    _forget_results(spec)
    marker = _plant_fault(tmp_path, monkeypatch)
    started_ms = int(time.time() * 1000)
    ray.init(
        address="local",
        include_dashboard=False,
        num_cpus=2,
        num_gpus=2,  # declared, not real: Ray assigns them to the cells that ask all the same
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", FAULT_ENV: str(marker)}},
    )
    try:
        corpus_id = ingest(spec)["corpus_id"]
        encoded = tokenization(spec, corpus_id)
        tokens = Path(encoded["families"]["gpt"]["tokens"])
        assert len(list(tokens.glob("part-*.parquet"))) == 4  # 4 corpus parts, 4 Ray tasks
        with remote_options(max_retries=0):  # Ray does not retry: the flow must
            result = transfer(spec, {})
    finally:
        ray.shutdown()
    assert not marker.exists(), "no worker died: the fault was never injected"
    assert result["computed"] >= 4
    assert _rows(spec) == expected
    # Each cell asked Ray for one GPU and saw only the one it was given.
    mlflow.set_tracking_uri(spec.tracking_uri())
    cells = mlflow.search_runs(experiment_names=[f"sweep/transfer/{TASK}"], output_format="list",
                               filter_string=f"tags.mode = 'finetune' and "
                               f"attributes.start_time >= {started_ms}")  # not the serial runs
    assert len(cells) == 2
    assert all(r.data.tags.get("cuda_visible_devices") in ("0", "1") for r in cells), [
        r.data.tags for r in cells]


def test_dry_run_counts_the_cells(tmp_path: Path) -> None:
    data = _spec_dict(tmp_path)
    data["transfer"] |= {"modes": ["scratch", "frozen", "partial:1"], "budgets": [20, "all"],
                         "lrs": {"scratch": [1e-3], "frozen": [1e-2], "partial": [1e-3]}}
    data["pretrain"]["families"] = ["word2vec", "gpt"]
    data["transfer"]["families"] = ["word2vec", "gpt"]
    (status,) = [s for s in plan(_with(data), "transfer") if s.stage == "transfer"]
    # word2vec: scratch, frozen (no partial); gpt: all three; x 2 budgets x 2 seeds.
    assert status.detail.startswith("20 cells (+ checkpoints/adapted models): 0 stored, 20 ")
    assert not status.cached
