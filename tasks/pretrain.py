"""Pretrain tasks: one MLflow run and one registered model version per family; and domain
adaptation, the same for a pretrained model continued on a task's texts.

A model's directory is keyed by everything that computes it (family settings, budget, the token
shards and tokenizer, and the family's code). Its `work/` holds checkpoints and the MLflow run id,
so a killed run resumes both; the model counts as done only once `_manifest.json` exists. The
bookkeeping (cache, mirror, run, registry, manifest) is `tasks/stage.py` and `tasks/models.py`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import mlflow
from prefect import task
from prefect.cache_policies import NO_CACHE

import pipelines.training.adaptation as adaptation
import pipelines.training.pretraining as pretraining
from pretrainlab.config import Spec
from storage import registry, tracking
from storage.hashing import stable_hash
from storage.layout import Layout
from storage.registry import ModelRef
from tasks import launch
from tasks.models import ModelRun, build_model, git_sha, model_hit
from tasks.progress import stage_logger
from tasks.stage import cached_output, content_key, store_of

PROGRESS_KEYS = ("loss", "valid_loss", "tokens_per_s", "words_per_s", "loss_per_word")


def config_hash(spec: Spec, family: str) -> str:
    """The family's resolved settings plus the shared budget (and word2vec's min_count), and
    bf16 autocast when it is on (fp32 settings hash as they did before the setting)."""
    settings: dict[str, Any] = {
        "family": getattr(spec.pretrain, family).model_dump(mode="json"),
        "budget": spec.pretrain.budget.model_dump(mode="json"),
        "points": spec.pretrain.points,  # snapshots live in the model's directory
    }
    if family == "word2vec":
        settings["min_count"] = spec.tokenizers.word.min_count
    if pretraining.cpu_autocast(spec, family):
        settings["cpu_bf16_autocast"] = True
    return stable_hash(settings)


def model_spec(spec: Spec, name: str) -> Spec:
    """The spec model `name` trains under: for a variant, its family's section carries the
    variant's overrides (what its key hashes, what it trains with and what its run logs)."""
    return spec.model_copy(update={"pretrain": spec.pretrain.resolved(name)})


def model_key(spec: Spec, family: str, tokenizer_id: str, tokens_dir: str) -> str:
    inputs = {
        "config": config_hash(spec, family),
        "tokenizer_id": tokenizer_id,
        "tokens": Path(tokens_dir).name,
    }
    return content_key(inputs, pretraining.CODE[family])


def model_dir(
    spec: Spec, family: str, tokenizer_id: str, tokens_dir: str, name: str | None = None
) -> Path:
    """`models/<name>/<key>`: a variant keeps its own directory even when its settings match
    its family's (it is registered under its own name)."""
    key = model_key(spec, family, tokenizer_id, tokens_dir)
    return Layout.at(spec.store).model(name or family, key)


def _planned_steps(spec: Spec, family: str) -> int:
    section = getattr(spec.pretrain, family)
    return section.epochs if family == "word2vec" else section.loop.max_steps


def _metrics_logger(spec: Spec, family: str, planned: int | None = None, label: str = ""):
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
        logger.info(f"{label or family} {unit} {step}/{planned}: {values}, ETA {eta:.0f}s")

    return log


def _amount_tags(summary: dict[str, Any]) -> dict[str, str]:
    """How much pretraining the final model had, tagged as its points are (break-even axes)."""
    step = summary.get("steps", summary.get("epochs"))
    found = {"pretrain_step": step, "tokens_seen": summary.get("tokens_seen")}
    tags = {k: str(int(v)) for k, v in found.items() if v is not None}
    return tags | ({"flops": f"{summary['flops']:.6g}"} if summary.get("flops") else {})


@task(
    name="pretrain", task_run_name="pretrain-{name}/corpus-{corpus_id:.8}", cache_policy=NO_CACHE
)
def pretrain_family(
    spec: Spec, family: str, corpus_id: str, tokenizer_id: str, tokens_dir: str, name: str = ""
) -> ModelRef:
    """Train (or resume, or reuse) one model of `family`, log it to MLflow and register the
    version. `name`: a variant's (then `spec` is `model_spec(spec, name)`); default the family."""
    launch.check_launch(spec)  # a world size this machine cannot run fails before any work
    name = name or family
    return cached_output(
        store_of(spec),
        model_dir(spec, family, tokenizer_id, tokens_dir, name),
        lambda out: _pretrain(spec, family, name, corpus_id, tokenizer_id, tokens_dir, out),
        model_hit,
        lock=True,  # a concurrent run training it: wait, then reuse
        hit=lambda m: f"{name}: model {m.model_key} is cached (version {m.version})",
    )


def _pretrain(
    spec: Spec,
    family: str,
    name: str,
    corpus_id: str,
    tokenizer_id: str,
    tokens_dir: str,
    out: Path,
) -> ModelRef:
    variant = {} if name == family else {"architecture": family, "variant_of": family}
    tags = {
        "stage": "pretrain",
        "family": name,
        **variant,
        "corpus_id": corpus_id,
        "tokenizer_id": tokenizer_id,
        "config_hash": config_hash(spec, family),
        "git_sha": git_sha(),
        "model_key": out.name,
    }

    def train(run_id: str, work: Path, model_tmp: Path) -> dict[str, Any]:
        budget = spec.pretrain.budget
        active = pretraining.cpu_autocast(spec, family)  # the setting itself is a spec param
        mlflow.log_param("cpu_autocast_active", str(active).lower())
        job = pretraining.PretrainJob(
            family,
            Path(tokens_dir),
            Layout.at(spec.store).tokenizer(tokenizer_id),
            work,
            model_tmp,
            budget.tokens,
            budget.minutes,
            tuple(spec.pretrain.points),
            Layout.points_of(out),
        )
        if launch.uses_torchrun(spec, family):  # rank 0 logs into this run
            return launch.run_torchrun(spec, job, run_id, spec.tracking_uri())
        return pretraining.pretrain(spec, job, _metrics_logger(spec, family, label=name))

    plan = ModelRun(
        family=name,
        architecture=family,
        run_name=f"pretrain-{name}/corpus-{corpus_id[:8]}",
        tags=tags,
        registered_name=registry.registered_name(spec.experiment, name),
        tokenizer_id=tokenizer_id,
        log_spec=True,
        points=Layout.points_of(out),
        version_tags=lambda summary: {
            "headline_metric": summary["headline_metric"],
            "headline_value": f"{summary['headline_value']}",
            **_amount_tags(summary),
        },
    )
    model = build_model(spec, out, plan, train)
    stage_logger().info(
        f"{name}: registered {model.registered_name} v{model.version} "
        f"({model.summary['headline_metric']} = {model.summary['headline_value']})"
    )
    return model


# ----------------------------------------------------------------------------- domain adaptation


@task(name="adapt", task_run_name="adapt-{name}/{data.name}", cache_policy=NO_CACHE)
def adapt_model(spec: Spec, data: Any, name: str, parent: ModelRef) -> ModelRef:
    """Continue `name`'s LM pretraining on the task's texts (ULMFiT), or reuse it; register the
    result as a new version of the parent's registered model, its parent recorded in tags."""
    texts = adaptation.task_texts(data)
    arch = parent.architecture
    key = content_key(
        adaptation.key_inputs(spec, arch, parent.model_key, texts), adaptation.code(arch)
    )
    return cached_output(
        store_of(spec),
        Layout.at(spec.store).model(f"{name}+adapt", key),
        lambda out: _adapt(spec, data, name, parent, texts, out),
        model_hit,
        lock=True,
        hit=lambda m: f"{name}+adapt on {data.name}: cached (version {m.version})",
    )


def _adapt(
    spec: Spec, data: Any, name: str, parent: ModelRef, texts: tuple[str, ...], out: Path
) -> ModelRef:
    arch, settings = parent.architecture, spec.transfer.adapt
    tags = {
        "stage": "adapt",
        "family": f"{name}+adapt",
        "architecture": arch,
        "parent_family": name,
        "parent_version": parent.version,
        "parent_run_id": parent.run_id,
        "parent_model_key": parent.model_key,
        "adapted_on": data.name,
        "task_texts": adaptation.texts_fingerprint(texts),
        "git_sha": git_sha(),
        "model_key": out.name,
    }

    def train(run_id: str, work: Path, model_tmp: Path) -> dict[str, Any]:
        job = adaptation.AdaptJob(
            arch, parent.path, texts, work, model_tmp, settings.max_steps, settings.lr
        )
        return adaptation.adapt(spec, job, _metrics_logger(spec, arch, planned=settings.max_steps))

    plan = ModelRun(
        family=f"{name}+adapt",
        architecture=arch,
        run_name=f"adapt-{name}/{data.name}",
        tags=tags,
        registered_name=parent.registered_name,
        alias=registry.adapted_alias(data.name),
        tokenizer_id=parent.tokenizer_id,  # the parent's tokenizer ships with the adapted model
        version_tags=lambda summary: {
            "valid_loss": f"{summary['valid_loss']}",
            "parent_valid_loss": f"{summary['parent_valid_loss']}",
        },
        lineage={
            "parent_version": parent.version,
            "parent_run_id": parent.run_id,
            "adapted_on": data.name,
        },
    )
    model = build_model(spec, out, plan, train)
    stage_logger().info(
        f"{name}+adapt on {data.name}: registered {model.registered_name} v{model.version} "
        f"(parent v{parent.version}); task-text valid loss "
        f"{model.summary['parent_valid_loss']:.3f} -> {model.summary['valid_loss']:.3f}"
    )
    if (warning := adaptation.overfit_warning(model.summary)) is not None:
        stage_logger().warning(f"{name}+adapt on {data.name}: {warning}")
    return model
