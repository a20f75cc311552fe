"""Pretrain tasks: one MLflow run and one registered model version per family.

A model's directory is keyed by everything that computes it (family settings, budget, the token
shards and tokenizer, and the family's code). Its `work/` holds checkpoints and the MLflow run id,
so a killed run resumes both; the model counts as done only once `_manifest.json` exists.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import mlflow
from prefect import task
from prefect.cache_policies import NO_CACHE

import pipelines.training.adaptation as adaptation
import pipelines.training.pretraining as pretraining
from pretrainlab.config import PretrainlabError, Spec
from storage import registry, remote, tracking
from storage.atomic import atomic_dir, exclusive, read_manifest, write_json, write_manifest
from storage.hashing import code_hash, stable_hash
from storage.layout import Layout
from tasks import launch
from tasks.progress import stage_logger
from tasks.tracking import open_tracking

MODEL_SUBDIR = "model"
PROGRESS_KEYS = ("loss", "valid_loss", "tokens_per_s", "words_per_s", "loss_per_word")
INTERRUPTED = ("sigterm", "sigint", "stop_at_step", "stop_after_epoch")


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


def config_hash(spec: Spec, family: str) -> str:
    """The family's resolved settings plus the shared budget (and word2vec's min_count)."""
    settings: dict[str, Any] = {
        "family": getattr(spec.pretrain, family).model_dump(mode="json"),
        "budget": spec.pretrain.budget.model_dump(mode="json"),
    }
    if family == "word2vec":
        settings["min_count"] = spec.tokenizers.word.min_count
    return stable_hash(settings)


def model_key(spec: Spec, family: str, tokenizer_id: str, tokens_dir: str) -> str:
    return stable_hash(
        {
            "config": config_hash(spec, family),
            "tokenizer_id": tokenizer_id,
            "tokens": Path(tokens_dir).name,
            "code": code_hash(pretraining.CODE[family]),
        }
    )


def model_dir(spec: Spec, family: str, tokenizer_id: str, tokens_dir: str) -> Path:
    return Layout.at(spec.store).model(family, model_key(spec, family, tokenizer_id, tokens_dir))


def _run_id(work: Path) -> str | None:
    try:
        return json.loads((work / "run.json").read_text())["run_id"]
    except (OSError, ValueError, KeyError):
        return None


def _planned_steps(spec: Spec, family: str) -> int:
    section = getattr(spec.pretrain, family)
    return section.epochs if family == "word2vec" else section.loop.max_steps


def _metrics_logger(spec: Spec, family: str, planned: int | None = None):
    """Metrics to MLflow; a progress line (step, loss, throughput, ETA) to the run's log."""
    planned = _planned_steps(spec, family) if planned is None else planned
    started, logger = time.monotonic(), stage_logger()
    unit = "epoch" if family == "word2vec" else "step"

    def log(metrics: dict[str, float], step: int) -> None:
        tracking.log_metrics_safe(metrics, step=step)
        shown = {k: v for k, v in metrics.items() if k in PROGRESS_KEYS}
        if not shown:
            return
        elapsed = time.monotonic() - started
        eta = elapsed / max(step, 1) * max(planned - step, 0)
        values = ", ".join(f"{k} {v:,.4g}" for k, v in shown.items())
        logger.info(f"{family} {unit} {step}/{planned}: {values}, ETA {eta:.0f}s")

    return log


@task(
    name="pretrain", task_run_name="pretrain-{family}/corpus-{corpus_id:.8}", cache_policy=NO_CACHE
)
def pretrain_family(
    spec: Spec, family: str, corpus_id: str, tokenizer_id: str, tokens_dir: str
) -> dict[str, Any]:
    """Train (or resume, or reuse) one family, log it to MLflow and register the version."""
    launch.check_launch(spec)  # a world size this machine cannot run fails before any work
    out = model_dir(spec, family, tokenizer_id, tokens_dir)
    with exclusive(out, stage_logger().info):  # a concurrent run training it: wait, then reuse
        remote.sync(spec, out)  # a model another machine trained, from the store's mirror
        model = _pretrain_into(spec, family, corpus_id, tokenizer_id, tokens_dir, out)
        remote.sync(spec, out)  # ... and this one to it
        return model


def _pretrain_into(
    spec: Spec, family: str, corpus_id: str, tokenizer_id: str, tokens_dir: str, out: Path
) -> dict[str, Any]:
    cached = read_manifest(out)
    if cached is not None:
        stage_logger().info(f"{family}: model {out.name} is cached (version {cached['version']})")
        return {**cached, "model_dir": str(out / MODEL_SUBDIR), "cache_hit": True}  # this store
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    open_tracking(spec)
    tags = {
        "stage": "pretrain",
        "family": family,
        "corpus_id": corpus_id,
        "tokenizer_id": tokenizer_id,
        "config_hash": config_hash(spec, family),
        "git_sha": git_sha(),
        "model_key": out.name,
    }
    run_name = f"pretrain-{family}/corpus-{corpus_id[:8]}"
    resumed = _run_id(work)
    with tracking.start_stage_run(spec.experiment, run_name, tags, run_id=resumed) as run:
        write_json(work / "run.json", {"run_id": run.info.run_id})
        if resumed is None:
            tracking.log_spec(spec.model_dump(mode="json"))
        budget = spec.pretrain.budget
        with atomic_dir(out / MODEL_SUBDIR) as model_tmp:
            job = pretraining.PretrainJob(
                family,
                Path(tokens_dir),
                Layout.at(spec.store).tokenizer(tokenizer_id),
                work,
                model_tmp,
                budget.tokens,
                budget.minutes,
            )
            if launch.uses_torchrun(spec, family):  # rank 0 logs into this run
                summary = launch.run_torchrun(spec, job, run.info.run_id, spec.tracking_uri())
            else:
                summary = pretraining.pretrain(spec, job, _metrics_logger(spec, family))
            if summary["stopped_reason"] in INTERRUPTED:
                mlflow.end_run(status="KILLED")  # resumable: the next run continues this one
                raise PretrainInterrupted(
                    f"{family}: stopped ({summary['stopped_reason']}) at its checkpoint in "
                    f"{work}; re-run to resume"
                )
            write_manifest(model_tmp, {"family": family})
        tracking.log_metrics_safe({k: v for k, v in summary.items() if k != "resumed_from"})
        mlflow.set_tag("learned_little", str(summary["learned_little"]).lower())
        mlflow.log_artifacts(str(out / MODEL_SUBDIR), artifact_path=MODEL_SUBDIR)
        run_id = run.info.run_id
    version = registry.register(
        registry.registered_name(spec.experiment, family),
        run_id,
        MODEL_SUBDIR,
        tags={
            **tags,
            "headline_metric": summary["headline_metric"],
            "headline_value": f"{summary['headline_value']}",
        },
    )
    manifest = {
        "family": family,
        "model_key": out.name,
        "model_dir": str(out / MODEL_SUBDIR),
        "run_id": run_id,
        "registered_name": version.name,
        "version": version.version,
        "summary": summary,
        "output": str(out / MODEL_SUBDIR),
    }
    write_manifest(out, manifest)
    stage_logger().info(
        f"{family}: registered {version.name} v{version.version} "
        f"({summary['headline_metric']} = {summary['headline_value']})"
    )
    return {**manifest, "cache_hit": False}


# ----------------------------------------------------------------------------- domain adaptation


def architecture(model: dict[str, Any]) -> str:
    """The code paths a model runs through; a pretrained family's name is its architecture."""
    return model.get("architecture") or model["family"]


def adapt_key(spec: Spec, parent: dict[str, Any], texts: tuple[str, ...]) -> str:
    """Parent model + the task's texts + the adaptation settings + the code that trains."""
    arch = architecture(parent)
    settings = spec.transfer.adapt.model_dump(mode="json", exclude={"families", "tasks"})
    return stable_hash(
        {
            "parent": parent["model_key"],
            "texts": adaptation.texts_fingerprint(texts),
            "adapt": settings,
            "family": getattr(spec.pretrain, arch).model_dump(mode="json"),
            "max_sentence_tokens": spec.tokenizers.max_sentence_tokens,
            "code": code_hash([*pretraining.CODE[arch], adaptation]),
        }
    )


def adapted_alias(task_name: str) -> str:
    """`adapted-<task>`: a registry alias per task (MLflow aliases allow [A-Za-z0-9_-])."""
    return "adapted-" + re.sub(r"[^A-Za-z0-9_-]", "-", task_name)


@task(name="adapt", task_run_name="adapt-{name}/{data.name}", cache_policy=NO_CACHE)
def adapt_model(spec: Spec, data: Any, name: str, parent: dict[str, Any]) -> dict[str, Any]:
    """Continue `name`'s LM pretraining on the task's texts (ULMFiT), or reuse it; register the
    result as a new version of the parent's registered model, its parent recorded in tags."""
    texts = adaptation.task_texts(data)
    out = Layout.at(spec.store).model(f"{name}+adapt", adapt_key(spec, parent, texts))
    with exclusive(out, stage_logger().info):
        return _adapt_into(spec, data, name, parent, texts, out)


def _adapt_into(spec: Spec, data: Any, name: str, parent: dict[str, Any],
                texts: tuple[str, ...], out: Path) -> dict[str, Any]:
    arch = architecture(parent)
    cached = read_manifest(out)
    if cached is not None:
        stage_logger().info(f"{name}+adapt on {data.name}: cached (version {cached['version']})")
        return {**cached, "cache_hit": True}
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    open_tracking(spec)
    settings = spec.transfer.adapt
    tags = {
        "stage": "adapt",
        "family": f"{name}+adapt",
        "architecture": arch,
        "parent_family": name,
        "parent_version": parent["version"],
        "parent_run_id": parent["run_id"],
        "parent_model_key": parent["model_key"],
        "adapted_on": data.name,
        "task_texts": adaptation.texts_fingerprint(texts),
        "git_sha": git_sha(),
        "model_key": out.name,
    }
    resumed = _run_id(work)
    with tracking.start_stage_run(
        spec.experiment, f"adapt-{name}/{data.name}", tags, run_id=resumed
    ) as run:
        write_json(work / "run.json", {"run_id": run.info.run_id})
        with atomic_dir(out / MODEL_SUBDIR) as model_tmp:
            job = adaptation.AdaptJob(
                arch, Path(parent["model_dir"]), texts, work, model_tmp,
                settings.max_steps, settings.lr,
            )
            logger = _metrics_logger(spec, arch, planned=settings.max_steps)
            summary = adaptation.adapt(spec, job, logger)
            if summary["stopped_reason"] in INTERRUPTED:
                mlflow.end_run(status="KILLED")
                raise PretrainInterrupted(
                    f"{name}+adapt: stopped ({summary['stopped_reason']}) at its checkpoint in "
                    f"{work}; re-run to resume"
                )
            write_manifest(model_tmp, {"family": arch})
        tracking.log_metrics_safe({k: v for k, v in summary.items() if k != "resumed_from"})
        mlflow.log_artifacts(str(out / MODEL_SUBDIR), artifact_path=MODEL_SUBDIR)
        run_id = run.info.run_id
    version = registry.register(
        parent["registered_name"], run_id, MODEL_SUBDIR,
        tags={**tags, "valid_loss": f"{summary['valid_loss']}",
              "parent_valid_loss": f"{summary['parent_valid_loss']}"},
        alias=adapted_alias(data.name),
    )
    manifest = {
        "family": f"{name}+adapt",
        "architecture": arch,
        "model_key": out.name,
        "model_dir": str(out / MODEL_SUBDIR),
        "run_id": run_id,
        "registered_name": version.name,
        "version": version.version,
        "parent_version": parent["version"],
        "parent_run_id": parent["run_id"],
        "adapted_on": data.name,
        "summary": summary,
        "output": str(out / MODEL_SUBDIR),
    }
    write_manifest(out, manifest)
    stage_logger().info(
        f"{name}+adapt on {data.name}: registered {version.name} v{version.version} "
        f"(parent v{parent['version']}); task-text valid loss "
        f"{summary['parent_valid_loss']:.3f} -> {summary['valid_loss']:.3f}"
    )
    return {**manifest, "cache_hit": False}
