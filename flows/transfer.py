"""Transfer flow: every task x model x mode x label budget x seed, baselines and probes.

Each pretrained family also runs at its pretraining points (`pretrain.points`: rows keep
`point`; scratch runs once, at the final model). The models are the pretrained families and
their variants (`pretrain.variants`, under their
own names), the user's own checkpoints (`transfer.checkpoints`) and, per task, the
domain-adapted ones (`transfer.adapt`, joining as `<family>+adapt`).
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from pipelines.training.adaptation import choose_parent
from pretrainlab.config import Mode, Spec, parse_mode
from storage.registry import ModelRef
from tasks.models import point_models
from tasks.pretrain import adapt_model
from tasks.tracking import publish_transfer_summary
from tasks.transfer import (
    load_task,
    register_checkpoint,
    run_baseline,
    run_polysemy,
    run_probe,
    run_transfer,
)


def _applies(name: str, model: ModelRef, mode: Mode | str) -> bool:
    """word2vec has one static layer: nothing to load partially or pick. An adapted model's
    scratch run would repeat its parent's exactly (same config, same seed): skipped."""
    mode = parse_mode(mode)  # a spec edited in code may hold plain strings
    if model.architecture == "word2vec" and mode.layered:
        return False
    return not (name.endswith("+adapt") and mode.name == "scratch")


def at_points(model: ModelRef, mode: Mode | str) -> list[ModelRef]:
    """The model, then its pretraining points (`pretrain.points`) in step order. Scratch does
    not depend on the point (the same architecture, randomly initialised): the model only."""
    if parse_mode(mode).name == "scratch":
        return [model]
    return [model, *point_models(model)]


def compared_models(
    families: list[str] | None, pretrained: dict[str, ModelRef]
) -> dict[str, ModelRef]:
    """The pretrained models `transfer.families` names (default all), in its order; a family's
    variants (their architecture is the family) join it under their own names."""
    chosen = families or list(dict.fromkeys(m.architecture for m in pretrained.values()))
    return {n: m for f in chosen for n, m in pretrained.items() if m.architecture == f}


@flow(name="transfer", flow_run_name="transfer/{spec.experiment}")
def transfer(spec: Spec, models: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Measure what each pretrained model is worth on each task, in every regime.

    `models`: the pretrain flow's families (JSON, as a stage stamp also records them)."""
    sweep = spec.transfer
    pretrained = {name: ModelRef.from_dict(model) for name, model in models.items()}
    compared = compared_models(sweep.families, pretrained)
    imported = {c.name: register_checkpoint(spec, c) for c in sweep.checkpoints}
    compared |= imported
    runs: list[dict[str, Any]] = []
    for task_spec in sweep.tasks:
        data = load_task(spec, task_spec)
        runs += run_baseline(spec, data)
        task_models = dict(compared)
        if sweep.adapt and (sweep.adapt.tasks is None or data.name in sweep.adapt.tasks):
            for name in sweep.adapt.families:
                parent = choose_parent(pretrained | imported, name)
                task_models[f"{name}+adapt"] = adapt_model(spec, data, name, parent)
        for name, model in task_models.items():
            for mode in [m for m in task_spec.modes or sweep.modes if _applies(name, model, m)]:
                for ref in at_points(model, mode):  # ref.point: None = the final model
                    runs += run_transfer(spec, data, name, ref, mode)
        if data.kind == "wic":
            runs += [run_polysemy(spec, data, name, model) for name, model in task_models.items()]
        if task_spec.name in sweep.probe_tasks:
            runs += [run_probe(spec, data, name, model) for name, model in task_models.items()
                     if model.architecture != "word2vec"]
    publish_transfer_summary(spec, [r["run_id"] for r in runs])
    computed = sum(not r["cache_hit"] for r in runs)
    return {
        "runs": len(runs),
        "cache_hit": computed == 0,
        "computed": computed,
        "output": f"{len(runs)} result files ({computed} computed), "
        f"{sum(r['rows'] for r in runs)} rows",
    }
