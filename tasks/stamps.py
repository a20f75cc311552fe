"""Stage-level cache checks: one per stage, not one per task.

Every task already skips work whose output exists, but on an unchanged re-run Prefect's
per-task overhead (hundreds of transfer tasks) dominates. After a stage completes, the
pipeline records its result beside a key of everything it read: the spec, the upstream
stage's result, the task files and the source of the whole project. If the key matches and
the outputs it names still exist, the stage is skipped as a whole.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipelines.data.task_data import task_files
from pretrainlab.config import Spec
from storage import mlflow_runs
from storage.atomic import is_complete, write_json
from storage.hashing import sha256_file, source_tree_hash, stable_hash
from storage.layout import Layout

STAGES: tuple[str, ...] = ("ingest", "tokenize", "pretrain", "transfer", "report")
PACKAGES = ("pretrainlab", "flows", "tasks", "pipelines", "storage")
VOLATILE = {"cache_hit", "mlflow_run_id", "seconds", "output"}


def identity(result: Any) -> Any:
    """A stage result without what differs between a first run and a cache hit."""
    if isinstance(result, dict):
        return {k: identity(v) for k, v in result.items() if k not in VOLATILE}
    if isinstance(result, list):
        return [identity(v) for v in result]
    return result


def result_files(spec: Spec) -> list[str]:
    """Every transfer result file and contamination audit in the store: what the catalog and
    the report read."""
    layout = Layout.at(spec.store)
    return [str(p) for p in layout.result_files() + layout.visible_parquet(layout.audits)]


def stage_outputs(spec: Spec, stage: str, result: dict[str, Any]) -> list[str]:
    """The paths a completed stage's result stands for (checked before trusting it)."""
    if stage == "ingest":
        return [str(Layout.at(spec.store).corpus(result["corpus_id"]))]
    if stage == "tokenize":
        tokenizers = [Layout.at(spec.store).tokenizer_file(f["tokenizer_id"])
                      for f in result["families"].values()]
        return [f["tokens"] for f in result["families"].values()] + [str(t) for t in tokenizers]
    if stage == "pretrain":
        return [m["model_dir"] for m in result["families"].values()]
    if stage == "transfer":
        return result_files(spec)
    return [result["output"]]


def upstream(spec: Spec, stage: str, corpus_id: str, results: dict[str, Any]) -> Any:
    """What a stage consumes from the stages before it (the part of its key they decide)."""
    if stage in ("ingest", "tokenize"):
        return corpus_id
    if stage == "pretrain":
        return results["tokenize"]["families"]
    if stage == "transfer":
        return results["pretrain"]["families"]
    return {
        "models": results["pretrain"]["families"],
        "results": [_state(path) for path in result_files(spec)],
        # Runs deleted, restored or added in MLflow outside a pipeline run change what the
        # catalog (and so the report) holds: the report is rebuilt when they change.
        "runs": stable_hash(mlflow_runs.experiment_runs(spec.tracking_uri(), spec.experiment)),
    }


def stage_key(spec: Spec, stage: str, upstream: Any) -> str:
    """Hash of what a stage reads: the spec, the upstream result, task files and all code."""
    data_dir = Path(spec.data_dir) if spec.data_dir else None
    files = []
    if stage in ("transfer", "report"):
        paths = (path for task in spec.transfer.tasks for path in task_files(task, data_dir))
        files = [[str(path), sha256_file(path)] for path in paths]
    return stable_hash({
        "stage": stage,
        "spec": spec.model_dump(mode="json"),
        "tracking": spec.tracking_uri(),
        "upstream": identity(upstream),
        "task_files": files,
        "code": source_tree_hash(PACKAGES),
    })


def _state(output: str) -> list[Any]:
    """What must not change: a file's size and mtime; whether a directory is complete."""
    path = Path(output)
    if path.is_file():
        stat = path.stat()
        return [output, stat.st_size, stat.st_mtime_ns]
    return [output, is_complete(path)]


def cached_stage(spec: Spec, stage: str, key: str) -> dict[str, Any] | None:
    """The recorded result of this stage when its key matches and its outputs exist."""
    path = Layout.at(spec.store).stamp(stage, spec.experiment)
    try:
        stamp = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    recorded = stamp.get("outputs", [])
    if stamp.get("key") != key or recorded != [_state(o[0]) for o in recorded]:
        return None
    return {**stamp["result"], "cache_hit": True}


def record_stage(spec: Spec, stage: str, key: str, result: dict[str, Any],
                 outputs: Iterable[str]) -> None:
    """Remember a completed stage's result (written atomically, last)."""
    write_json(Layout.at(spec.store).stamp(stage, spec.experiment),
               {"key": key, "result": result, "outputs": [_state(o) for o in sorted(set(outputs))]})


def up_to_date(spec: Spec, stages: Iterable[str], corpus_id: str) -> dict[str, Any] | None:
    """Every stage's recorded result when all of them would be skipped, else None: lets the
    CLI answer an unchanged re-run without starting an orchestrator at all."""
    results: dict[str, Any] = {}
    for stage in stages:
        key = stage_key(spec, stage, upstream(spec, stage, corpus_id, results))
        if (hit := cached_stage(spec, stage, key)) is None:
            return None
        results[stage] = hit
    return results
