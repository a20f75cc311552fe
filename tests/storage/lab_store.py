"""A small real lab store for the versions and gc tests, built the way the stages build it:
a real MLflow (SQLite in the store) with pretrain runs, registered versions and transfer runs,
result rows in Parquet, and output directories with manifests. Runs can be back-dated (MLflow's
own `create_run(start_time=...)`) so "recent" can be tested without waiting a week."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from storage import registry, tracking
from storage.atomic import write_json, write_manifest, write_parquet
from storage.catalog import RESULT_SCHEMA
from storage.layout import Layout

DAY = 86_400
EXPERIMENT = "lab"


@dataclass
class Lab:
    store: Path
    uri: str
    client: MlflowClient
    age_s: float = 30 * DAY  # how far back runs are dated
    versions: dict[str, str] = field(default_factory=dict)  # run id -> version
    experiment: str = EXPERIMENT

    @property
    def layout(self) -> Layout:
        return Layout.at(self.store)

    def _experiment(self, name: str) -> str:
        return tracking.ensure_experiment(name, self.layout.mlflow_artifacts)

    def _run(self, experiment: str, name: str, tags: dict[str, str]) -> str:
        started = int((time.time() - self.age_s) * 1000)
        run = self.client.create_run(
            self._experiment(experiment), start_time=started, tags=tags, run_name=name
        )
        self.client.set_terminated(run.info.run_id, "FINISHED", end_time=started + 1000)
        return run.info.run_id

    def pretrain(
        self,
        family: str,
        params: dict[str, str],
        metrics: dict[str, float],
        corpus_id: str = "corpusA",
        tokenizer_id: str = "tokA",
        model_key: str | None = None,
        register: bool = True,
        extra_tags: dict[str, str] | None = None,
        alias: str = registry.CANDIDATE,
    ) -> str:
        """A pretrain run with the tags pretrain logs; registered as lab-<family> if asked."""
        tags = {
            "stage": "pretrain",
            "family": family,
            "corpus_id": corpus_id,
            "tokenizer_id": tokenizer_id,
            "config_hash": "c" + str(len(self.versions)),
            "git_sha": "abc",
            "model_key": model_key or f"key{len(self.versions)}",
        }
        tags.update(extra_tags or {})
        run_id = self._run(self.experiment, f"pretrain-{family}", tags)
        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
            params=[Param(k, v) for k, v in params.items()],
        )
        self.client.log_text(run_id, "{}", "model/config.json")
        if register:
            name = registry.registered_name(self.experiment, family)
            version = registry.register(name, run_id, "model", tags=tags, alias=alias)
            self.versions[run_id] = version.version
        return run_id

    def transfer(
        self,
        pretrain_run: str,
        family: str,
        task: str,
        mode: str,
        scores: list[float],
        metric: str = "accuracy",
        budget: str = "all",
        headline: bool = True,
    ) -> str:
        """One transfer run per seed and its result rows (a dev row too, which never counts);
        `headline` flags `metric` as the task's headline metric, as the transfer stage does."""
        version = self.versions.get(pretrain_run, "0")
        last = ""
        for seed, score in enumerate(scores):
            tags = {
                "stage": "transfer",
                "task": task,
                "family": family,
                "mode": mode,
                "pretrain_run_id": pretrain_run,
                "model_version": version,
                "registered_name": registry.registered_name(self.experiment, family),
            }
            last = self._run(f"{self.experiment}/transfer/{task}", f"{family}-{mode}/{task}", tags)
            base = {
                "run_id": last,
                "task": task,
                "family": family,
                "model_version": version,
                "mode": mode,
                "budget": budget,
                "seed": seed,
                "lr": 1e-3,
                "epoch": 1,
                "layer": None,
                "task_fingerprint": f"fp-{task}",
                "headline": headline,
                "point": None,
            }
            rows = [
                {**base, "split": "test", "metric": metric, "value": score},
                {**base, "split": "dev", "metric": metric, "value": 1.0},
            ]
            path = self.layout.results / task / f"{last}.parquet"
            write_parquet(path, pa.Table.from_pylist(rows, schema=RESULT_SCHEMA))
        return last


def make_lab(tmp_path: Path, age_days: float = 30) -> Lab:
    store = tmp_path / "store"
    layout = Layout.at(store)
    uri = layout.default_tracking_uri
    tracking.configure(uri, layout.mlflow_artifacts)
    return Lab(layout.store, uri, MlflowClient(uri, registry_uri=uri), age_days * DAY)


# ------------------------------------------------------------------------------- store outputs


def output_dir(path: Path, files: dict[str, bytes], manifest: dict | None) -> Path:
    """A directory output: its files, then (if complete) its manifest, written last."""
    path.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    if manifest is not None:
        write_manifest(path, manifest)
    return path


def index_entry(layout: Layout, key: str, corpus_id: str, tokenizer_id: str) -> Path:
    return write_json(
        layout.tokenizer_index(key), {"corpus_id": corpus_id, "tokenizer_id": tokenizer_id}
    )


def age(path: Path, days: float) -> None:
    """Back-date a file or a whole tree (mtimes), as if written `days` ago."""
    stamp = time.time() - days * DAY
    for root, dirs, files in os.walk(path) if path.is_dir() else [(path.parent, [], [path.name])]:
        for name in dirs + files:
            os.utime(Path(root, name), (stamp, stamp), follow_symlinks=False)
    os.utime(path, (stamp, stamp), follow_symlinks=False)
