"""Transfer flow: every task x model x mode x label budget x seed, baselines and probes.

The sweep's cells are independent tasks on the runner `compute.runner` names (a thread pool,
a Dask or a Ray cluster): frozen features first, once per (model, task), then every cell not
stored yet. Workers return their records; this flow (the driver) writes each cell's MLflow run
and result file as it finishes, so the tracking store has one writer. A cell whose worker died
is submitted again (`compute.cell_retries`). Under the determinism contract
(`pipelines/transfer/protocol.py`) the rows are the same on every runner.

Each pretrained family also runs at its pretraining points (`pretrain.points`: rows keep
`point`; scratch runs once, at the final model).

The models are the pretrained families and their variants (`pretrain.variants`, under their
own names), the user's own checkpoints (`transfer.checkpoints`) and, per task, the
domain-adapted ones (`transfer.adapt`, joining as `<family>+adapt`).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from pipelines.training.adaptation import choose_parent
from pretrainlab.config import Mode, PretrainlabError, Spec, TaskSpec, parse_mode
from storage.registry import ModelRef
from tasks.audit import audit_task
from tasks.ingest import plan_corpus_plain
from tasks.models import point_models
from tasks.pretrain import adapt_model
from tasks.progress import stage_logger
from tasks.runners import cell_resources, describe, submit_all, task_runner
from tasks.tracking import publish_transfer_summary
from tasks.transfer import (
    Cell,
    CellJob,
    cell_job,
    load_task,
    reads_features,
    record_cell,
    register_checkpoint,
    run_baseline,
    run_polysemy,
    run_probe,
    stored_cell,
    train_cell,
    transfer_features,
)


def _applies(name: str, architecture: str, mode: Mode | str) -> bool:
    """word2vec has one static layer: nothing to load partially or pick. An adapted model's
    scratch run would repeat its parent's exactly (same config, same seed): skipped."""
    mode = parse_mode(mode)  # a spec edited in code may hold plain strings
    if architecture == "word2vec" and mode.layered:
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


def sweep_cells(spec: Spec, task_spec: TaskSpec, architectures: dict[str, str]) -> list[Cell]:
    """Every (family, mode, budget, seed) cell of one task; `architectures`: model name ->
    its architecture (the flow and `--dry-run` count the same cells)."""
    sweep = spec.transfer
    return [Cell(task_spec.name, name, str(mode), budget, seed)
            for name, architecture in architectures.items()
            for mode in task_spec.modes or sweep.modes if _applies(name, architecture, mode)
            for budget in sweep.budgets for seed in sweep.seeds]


def run_cells(spec: Spec, jobs: list[CellJob]) -> list[dict[str, Any]]:
    """Each job's result file: reused when stored, else trained on the spec's runner (features
    first) and recorded here as it finishes. In `jobs` order."""
    results: dict[int, dict[str, Any]] = {}
    for i, job in enumerate(jobs):
        if (hit := stored_cell(spec, job)) is not None:
            results[i] = hit
    todo = [i for i in range(len(jobs)) if i not in results]
    if not todo:
        return [results[i] for i in range(len(jobs))]
    log = stage_logger()
    log.info(f"{len(todo)} transfer cell(s) to run on {describe(spec.compute)} "
             f"({len(results)} stored)")
    needs = {(jobs[i].model.model_key, jobs[i].data.name): jobs[i] for i in todo
             if reads_features(jobs[i].cell.mode)}

    def done(n: int, found: Any) -> None:
        results[todo[n]] = record_cell(spec, jobs[todo[n]], found)
        log.info(f"cell {len(results) - len(jobs) + len(todo)}/{len(todo)}: {found.summary}")

    retries = spec.compute.cell_retries
    with task_runner(spec.compute) as runner, cell_resources(spec.compute):
        submit_all(runner, transfer_features,
                   [{"spec": spec, "data": j.data, "family": j.cell.family, "model": j.model}
                    for j in needs.values()], lambda n, found: None, retries)
        submit_all(runner, train_cell,
                   [{"spec": spec, "data": jobs[i].data, "model": jobs[i].model,
                     "cell": jobs[i].cell} for i in todo], done, retries)
    return [results[i] for i in range(len(jobs))]


def _corpus_id(spec: Spec) -> str | None:
    """The pretraining corpus the audit reads; None when its sources cannot be resolved here
    (a transfer of imported checkpoints alone needs no corpus): the audit is then skipped."""
    try:
        return plan_corpus_plain(spec).corpus_id
    except PretrainlabError as error:
        get_run_logger().warning(f"contamination audit skipped: {error}")
        return None


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
    jobs: list[CellJob] = []
    corpus_id = _corpus_id(spec)
    for task_spec in sweep.tasks:
        data = load_task(spec, task_spec)
        if corpus_id is not None:
            audit_task(spec, data, corpus_id)
        runs += run_baseline(spec, data)
        task_models = dict(compared)
        if sweep.adapt and (sweep.adapt.tasks is None or data.name in sweep.adapt.tasks):
            for name in sweep.adapt.families:
                parent = choose_parent(pretrained | imported, name)
                task_models[f"{name}+adapt"] = adapt_model(spec, data, name, parent)
        architectures = {name: model.architecture for name, model in task_models.items()}
        jobs += [cell_job(spec, data, ref, cell)
                 for cell in sweep_cells(spec, task_spec, architectures)
                 for ref in at_points(task_models[cell.family], cell.mode)]  # None: final model
        if data.kind == "wic":
            runs += [run_polysemy(spec, data, name, model) for name, model in task_models.items()]
        if task_spec.name in sweep.probe_tasks:
            for name, model in task_models.items():
                if model.architecture != "word2vec":  # one static layer: nothing to compare
                    runs += run_probe(spec, data, name, model)
    runs += run_cells(spec, jobs)
    publish_transfer_summary(spec, [r["run_id"] for r in runs])
    computed = sum(not r["cache_hit"] for r in runs)
    return {
        "runs": len(runs),
        "cache_hit": computed == 0,
        "computed": computed,
        "output": f"{len(runs)} result files ({computed} computed), "
        f"{sum(r['rows'] for r in runs)} rows",
    }
