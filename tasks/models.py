"""A model in the store: built under one MLflow run, registered, recorded in its manifest.

Pretraining, domain adaptation and importing a user's checkpoint end the same way, so they share
this: the model directory `models/<family>/<key>/` gets its weights in `model/` (written
atomically), its MLflow run id in `work/run.json` (a killed run resumes that run and its
checkpoints), and `_manifest.json` last, naming the registered version (a `ModelRef`).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow

from pipelines.training.points import PointInfo, read_points
from pretrainlab.config import PretrainlabError, Spec
from storage import registry, tracking
from storage.atomic import atomic_dir, read_manifest, write_json, write_manifest
from storage.layout import Layout
from storage.registry import ModelRef
from tasks import mlflow_model
from tasks.tracking import open_tracking

INTERRUPTED = ("sigterm", "sigint", "stop_at_step", "stop_after_epoch")
Train = Callable[[str, Path, Path], dict[str, Any]]  # (run id, work dir, weights dir) -> summary


class PretrainInterrupted(PretrainlabError, RuntimeError):
    """Training stopped before its budget (a cancel): the checkpoint is kept for a resume."""


def git_sha() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent,
        check=False,
    )
    return done.stdout.strip() or "unknown"


def model_hit(out: Path) -> ModelRef | None:
    """The registered model a complete directory records, at its path in this store."""
    manifest = read_manifest(out)
    if manifest is None:
        return None
    return ModelRef.from_dict(manifest, Layout.weights_of(out)).with_hit(True)


def _resumed_run(out: Path) -> str | None:
    try:
        return json.loads(Layout.run_record_of(out).read_text())["run_id"]
    except (OSError, ValueError, KeyError):
        return None


@dataclass(frozen=True)
class ModelRun:
    """How one model is recorded: its MLflow run, and the registered version it becomes."""

    family: str  # the name it runs under in transfer (gpt, gpt+adapt, a checkpoint's name)
    architecture: str
    run_name: str
    tags: dict[str, str]
    registered_name: str
    alias: str = registry.CANDIDATE
    tokenizer_id: str | None = None
    resumable: bool = True  # a killed run continues its MLflow run (and its checkpoints)
    log_spec: bool = False
    version_tags: Callable[[dict[str, Any]], dict[str, str]] = lambda summary: {}
    lineage: dict[str, str] = field(default_factory=dict)  # extra manifest entries
    points: Path | None = None  # where training kept its pretraining points (snapshots)


def _point_tags(info: PointInfo) -> dict[str, str]:
    """What a point's version says it is (tags and logged-model params alike)."""
    return {
        "point": info.point,
        "pretrain_step": str(info.pretrain_step),
        "tokens_seen": str(info.tokens_seen),
        "flops": f"{info.flops:.6g}",
        "schedule": info.schedule,
        "cooldown_steps": str(info.cooldown_steps),
    }


def _publish_points(
    spec: Spec, out: Path, plan: ModelRun, run_id: str
) -> list[ModelRef]:
    """Register each kept point as a version of the model's registered name, with NO alias
    (`candidate` stays on the final model; promotion skips versions tagged `point`)."""
    if plan.points is None:
        return []
    refs = []
    for info, weights in read_points(plan.points):
        tags = {**plan.tags, **_point_tags(info)}
        version = mlflow_model.publish(
            spec, plan.registered_name, plan.architecture, weights, tags=tags, metrics={},
            alias=None,
        )  # fmt: skip
        if version.model_id:  # not run metrics: those stay the final model's
            mlflow.log_model_params(_point_tags(info), model_id=version.model_id)
        refs.append(ModelRef(
            family=plan.family, architecture=plan.architecture, registered_name=version.name,
            version=version.version, run_id=run_id, model_key=f"{out.name}@{info.point}",
            path=weights, tokenizer_id=plan.tokenizer_id, model_id=version.model_id,
            summary=asdict(info), point=info.point,
        ))  # fmt: skip
    return refs


def point_models(model: ModelRef) -> list[ModelRef]:
    """The pretraining points `model`'s directory records (none for most models), each at its
    path in this store, in step order."""
    manifest = read_manifest(model.path.parent) or {}
    points = Layout.points_of(model.path.parent)
    return [
        ModelRef.from_dict(entry, Layout.weights_of(points / entry["point"]))
        for entry in manifest.get("points") or []
    ]


def _train_logged(
    spec: Spec, out: Path, plan: ModelRun, train: Train
) -> tuple[str, dict, registry.RegisteredModel, list[ModelRef]]:
    """Run `train` into `out/model` inside the model's MLflow run; publish it as an MLflow
    Model (weights logged once, metrics on the model, the card as its description)."""
    work, weights = Layout.work_of(out), Layout.weights_of(out)
    open_tracking(spec)
    resumed = None
    if plan.resumable:
        work.mkdir(parents=True, exist_ok=True)
        resumed = _resumed_run(out)
    with tracking.start_stage_run(spec.experiment, plan.run_name, plan.tags, run_id=resumed) as run:
        if plan.resumable:
            write_json(Layout.run_record_of(out), {"run_id": run.info.run_id})
        if plan.log_spec and resumed is None:
            tracking.log_spec(spec.model_dump(mode="json"))
        with atomic_dir(weights) as model_tmp:
            summary = train(run.info.run_id, work, model_tmp)
            if summary.get("stopped_reason") in INTERRUPTED:
                mlflow.end_run(status="KILLED")  # resumable: the next run continues this one
                raise PretrainInterrupted(
                    f"{plan.family}: stopped ({summary['stopped_reason']}) at its checkpoint in "
                    f"{work}; re-run to resume"
                )
            write_manifest(model_tmp, {"family": plan.architecture})
        if "learned_little" in summary:
            mlflow.set_tag("learned_little", str(summary["learned_little"]).lower())
        version = mlflow_model.publish(
            spec,
            plan.registered_name,
            plan.architecture,
            weights,
            tags={**plan.tags, **plan.version_tags(summary)},
            metrics={k: v for k, v in summary.items() if k != "resumed_from"},
            alias=plan.alias,
        )
        points = _publish_points(spec, out, plan, run.info.run_id)
        return run.info.run_id, summary, version, points


def build_model(spec: Spec, out: Path, plan: ModelRun, train: Train) -> ModelRef:
    """Train (or resume, or import) into `out`, register the version, write the manifest last."""
    run_id, summary, version, points = _train_logged(spec, out, plan, train)
    ref = ModelRef(
        family=plan.family,
        architecture=plan.architecture,
        registered_name=version.name,
        version=version.version,
        run_id=run_id,
        model_key=out.name,
        path=Layout.weights_of(out),
        tokenizer_id=plan.tokenizer_id,
        model_id=version.model_id,
        summary=summary,
    )
    recorded = {"points": [p.manifest() for p in points]} if points else {}
    write_manifest(out, {**ref.manifest(), **plan.lineage, **recorded})
    return ref
