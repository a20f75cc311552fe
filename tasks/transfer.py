"""Transfer tasks: one cell per (task, family, mode, label budget, seed), trained by
`train_cell` on whichever worker the runner picks and recorded by the driver (`record_cell`) as
one MLflow run and one Parquet file of result rows; frozen features once per (model, task)
before its cells (`transfer_features`); baselines, probes and polysemy beside.

Each mode picks its own learning rate on dev from its grid (a shared rate manufactures the
"pretraining helps" result); the chosen rate is recorded with the run. Result rows are the
truth the report reads; MLflow mirrors them for its UI, each run written in one batch.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from mlflow.entities import LoggedModelInput, Metric
from mlflow.tracking import MlflowClient
from prefect import task
from prefect.cache_policies import NO_CACHE

import pipelines.data.task_data as task_data_lib
import pipelines.data.task_splits as task_splits
import pipelines.models.hf_import as checkpoints_lib
import pipelines.transfer.baselines as baselines_lib
import pipelines.transfer.features as features_lib
import pipelines.transfer.heads as heads_lib
import pipelines.transfer.metrics as metrics_lib
import pipelines.transfer.probes as probes_lib
import pipelines.transfer.protocol as protocol_lib
import pipelines.transfer.runs as transfer_lib
from pretrainlab.config import CheckpointSpec, Spec, TaskSpec, parse_mode
from storage import registry, tracking
from storage.atomic import write_parquet
from storage.catalog import PREDICTION_SCHEMA, RESULT_SCHEMA
from storage.layout import Layout
from storage.registry import ModelRef
from tasks.models import ModelRun, build_model, git_sha, model_hit
from tasks.progress import stage_logger
from tasks.runners import on_worker_gpu
from tasks.stage import cached_output, content_key, reuse, store_of
from tasks.tracking import open_tracking

# The code that computes a run's rows: editing any of it recomputes them.
CODE = [
    transfer_lib, heads_lib, metrics_lib, features_lib, protocol_lib, task_data_lib, task_splits
]
ROWS_VERSION = 4  # 2: dev rows carry metric "step"; 3: step-based protocol, `epoch` holds the
# dev evaluation's index, test rows add metrics "steps" and "converged" (1.0 or 0.0);
# 4: columns task_fingerprint, headline and point, per-item predictions beside each run


@dataclass(frozen=True)
class Row:
    """One result row's own columns (the run's shared ones come from `_base`)."""

    epoch: int  # the dev evaluation's index (0 for runs without a curve)
    split: str
    metric: str
    value: float
    layer: int | None = None


@dataclass(frozen=True)
class Point:
    """One MLflow metric point of a run."""

    metric: str
    value: float | None
    step: int = 0


def grid_key(mode: str) -> str:
    """frozen:layer=2 -> frozen, partial:1:frozen -> partial: the lr grid a mode draws from."""
    return parse_mode(mode).name


def experiment_name(spec: Spec, task_name: str) -> str:
    return f"{spec.experiment}/transfer/{task_name}"


def _base(data: task_data_lib.TaskData, **columns: Any) -> dict[str, Any]:
    """The columns every row of a run shares, the task's fingerprint among them."""
    return {"task": data.name, "task_fingerprint": data.fingerprint, "point": None, **columns}


def _rows(base: dict[str, Any], items: list[Row], headline: str) -> pa.Table:
    """Result rows; `headline` is the task's headline metric, which each row is flagged by."""
    rows = [{**base, **asdict(row),
             "headline": row.split in ("dev", "test") and row.metric == headline}
            for row in items]
    return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)


def _predictions(data: task_data_lib.TaskData, base: dict[str, Any],
                 found: transfer_lib.Predictions) -> pa.Table:
    """The side table of a run: per test item its example, gold and predicted label."""
    names = [*data.labels, *data.unseen]
    keep = ("run_id", "task", "family", "mode", "budget", "seed")
    rows = [{**{k: base[k] for k in keep}, "item": i, "example": e, "gold": names[g],
             "pred": names[p], "correct": g == p}
            for i, (e, g, p) in enumerate(zip(found.example, found.gold, found.pred, strict=True))]
    return pa.Table.from_pylist(rows, schema=PREDICTION_SCHEMA)


def _rows_hit(path: Path) -> dict[str, Any] | None:
    """A result file written before (here, or pulled from the mirror), as a cache hit."""
    if not path.exists():
        return None
    table = pq.read_table(path, columns=["run_id"])
    return {"cache_hit": True, "rows": table.num_rows, "run_id": table["run_id"][0].as_py()}


def _result(spec: Spec, task_name: str, key: str, compute: Callable[[Path], dict]) -> dict:
    """The rows keyed `key` of a task: reused when written before, else computed and recorded."""
    store = store_of(spec)
    path = store.layout.result(task_name, key)
    side = store.layout.predictions_of(path)
    store.sync(side)  # the per-item side table travels with its rows: pulled (or pushed) here
    found = cached_output(store, path, compute, _rows_hit)
    if not found["cache_hit"]:
        store.sync(side)  # ... and pushed once computed
    return found


def _record(spec: Spec, data: task_data_lib.TaskData, run_name: str, tags: dict[str, str],
            points: list[Point], base: dict[str, Any], items: list[Row], path: Path,
            predictions: transfer_lib.Predictions | None = None) -> dict:
    """One MLflow run (all metrics in one batch) and its result rows, written atomically; the
    run's per-item test predictions first, so a complete result file always has them."""
    task_name = data.name
    with tracking.start_stage_run(experiment_name(spec, task_name), run_name,
                                  {"stage": "transfer", "task": task_name, **tags}) as run:
        now = int(time.time() * 1000)
        metrics = [Metric(p.metric, float(p.value), now, p.step) for p in points
                   if p.value is not None and math.isfinite(p.value)]
        client = MlflowClient()
        client.log_batch(run.info.run_id, metrics=metrics)
        if tags.get("model_id"):  # the MLflow Model this run evaluated (its Models page lists it)
            client.log_inputs(run.info.run_id, models=[LoggedModelInput(tags["model_id"])])
        run_id = run.info.run_id
    base = {"run_id": run_id, **base}
    if predictions is not None:
        store = Layout.at(spec.store)
        side = store.predictions_of(path)
        write_parquet(side, _predictions(data, base, predictions))
    write_parquet(path, _rows(base, items, metrics_lib.headline(data)))
    return {"cache_hit": False, "rows": len(items), "run_id": run_id}


def _model_tags(model: ModelRef) -> dict[str, str]:
    tags = {"pretrain_run_id": model.run_id, "model_version": model.version,
            "registered_name": model.registered_name,
            **({"point": model.point} if model.point else {})}
    return {**tags, "model_id": model.model_id} if model.model_id else tags


@task(name="load-task", task_run_name="load-task/{task_spec.name}", cache_policy=NO_CACHE)
def load_task(spec: Spec, task_spec: TaskSpec) -> task_data_lib.TaskData:
    """Read and split a task's files (fixed splits by hash), with clear errors."""
    data = task_data_lib.load_task(task_spec, Path(spec.data_dir) if spec.data_dir else None)
    stage_logger().info(
        f"task {data.name} ({data.kind}): {len(data.train)} train / {len(data.dev)} dev / "
        f"{len(data.test)} test, {len(data.labels)} labels"
    )
    return data


def _baseline_one(spec: Spec, data: Any, method: str, budget: Any, seed: int) -> dict:
    key = content_key({"task": data.fingerprint, "method": method, "budget": budget,
                       "seed": seed, "rows": ROWS_VERSION},
                      [baselines_lib, task_data_lib, task_splits])
    return _result(spec, data.name, key,
                   lambda path: _baseline_rows(spec, data, method, budget, seed, path))


def _baseline_rows(spec: Spec, data: Any, method: str, budget: Any, seed: int,
                   path: Path) -> dict:
    scores = baselines_lib.baseline(data, task_data_lib.take_budget(data.train, budget, seed))
    items = [Row(0, split, k, v) for split, metrics in scores.items() for k, v in metrics.items()]
    # Labels of dev/test that train never has: kept, always scored wrong, counted here.
    items += [Row(0, split, "unseen_labels", float(n)) for split, n in data.unseen_labels.items()]
    base = _base(data, family="baseline", model_version="", mode=method, budget=str(budget),
                 seed=seed, lr=0.0)
    tags = {"family": "baseline", "mode": method, "budget": str(budget), "seed": str(seed)}
    return _record(spec, data, f"baseline-{method}/{data.name}-b{budget}-s{seed}", tags,
                   [Point(f"{r.split}_{r.metric}", r.value) for r in items], base, items, path)


@task(name="baseline", task_run_name="baseline/{data.name}", cache_policy=NO_CACHE)
def run_baseline(spec: Spec, data: task_data_lib.TaskData) -> list[dict[str, Any]]:
    """The non-neural reference line (TF-IDF + logistic regression; most frequent tag)."""
    method = "most_frequent_tag" if data.kind == "tag" else "tfidf_logreg"
    open_tracking(spec)
    return [_baseline_one(spec, data, method, budget, seed)
            for budget in spec.transfer.budgets for seed in spec.transfer.seeds]


def _config(spec: Spec, mode: str, lr: float, seed: int) -> transfer_lib.TransferConfig:
    t = spec.transfer
    return transfer_lib.TransferConfig(
        mode=mode, lr=lr, batch_size=t.batch_size, max_len=t.max_len, seed=seed, passes=t.passes,
        min_steps=t.min_steps, max_steps=t.max_steps, evals=t.evals, patience=t.patience,
        warmup=t.warmup, encoder_lr_scale=t.encoder_lr_scale, threads=spec.compute.cell_threads)


RUN_SETTINGS = {"passes", "min_steps", "max_steps", "evals", "patience", "warmup",
                "encoder_lr_scale", "batch_size", "max_len"}


def _run_settings(spec: Spec) -> dict[str, Any]:
    """The sweep settings one run's result depends on. The lists that say which runs exist
    (tasks, families, modes, budgets, seeds, the rate grids: each run keys its own) are left
    out, so adding a seed, a budget or a mode reuses every row already computed."""
    return spec.transfer.model_dump(mode="json", include=RUN_SETTINGS)


def _features_dir(spec: Spec, family: str) -> Path:
    return Layout.at(spec.store).features_of(family)


@dataclass(frozen=True)
class Cell:
    """One cell of the transfer sweep: the run one result file holds. What else its result
    depends on (task content, model, settings) is in `cell_key`; a new sweep dimension is one
    more field here and there."""

    task: str
    family: str  # the name the model runs under (gpt, gpt+adapt, a checkpoint's name)
    mode: str
    budget: int | str
    seed: int

    def label(self) -> str:
        return f"{self.family} {self.mode} on {self.task} (budget {self.budget}, seed {self.seed})"


@dataclass(frozen=True)
class CellJob:
    """A cell with what its worker needs and where the driver records it."""

    cell: Cell
    data: task_data_lib.TaskData
    model: ModelRef
    path: Path  # its result file


@dataclass(frozen=True)
class CellResult:
    """What a worker hands back: every record of the cell's run, none written yet."""

    run_name: str
    tags: dict[str, str]
    points: list[Point]
    base: dict[str, Any]
    items: list[Row]
    predictions: transfer_lib.Predictions
    summary: str  # the progress line the driver logs


def cell_key(spec: Spec, data: Any, model: ModelRef, cell: Cell) -> str:
    """The content key of a cell's rows: adding a seed, budget or mode keeps every other key."""
    fields = {"task": data.fingerprint, "family": cell.family, "model": model.model_key,
              "mode": cell.mode, "budget": cell.budget, "seed": cell.seed,
              "grid": spec.transfer.lrs[grid_key(cell.mode)],
              "transfer": _run_settings(spec), "rows": ROWS_VERSION}
    if spec.compute.cell_threads != 1:  # the one place-independent setting that moves last bits
        fields["threads"] = spec.compute.cell_threads
    return content_key(fields, CODE)


def cell_job(spec: Spec, data: Any, model: ModelRef, cell: Cell) -> CellJob:
    return CellJob(cell, data, model,
                   Layout.at(spec.store).result(data.name, cell_key(spec, data, model, cell)))


def stored_cell(spec: Spec, job: CellJob) -> dict[str, Any] | None:
    """The cell's result file when written before (here, or pulled from the mirror, with its
    per-item predictions)."""
    store = store_of(spec)
    store.sync(store.layout.predictions_of(job.path))
    return reuse(store, job.path, _rows_hit)


def reads_features(mode: str) -> bool:
    """Frozen cells train on the (model, task)'s cached features, computed once upstream."""
    return parse_mode(mode).name == "frozen"


@task(name="transfer-features", task_run_name="features-{family}/{data.name}",
      cache_policy=NO_CACHE)
def transfer_features(spec: Spec, data: task_data_lib.TaskData, family: str,
                      model: ModelRef) -> None:
    """The frozen features of a (model, task), written once, before the cells that read them."""
    with on_worker_gpu(), protocol_lib.cell_scope(0, spec.compute.cell_threads):
        features_lib.frozen_features(model.architecture, model.path, data,
                                     spec.transfer.max_len, _features_dir(spec, family))


FAULT_ENV = "PRETRAINLAB_FAULT_EXIT_ONCE"  # tests: a marker file; a cell that finds it dies


def _fault_point() -> None:
    """Where tests kill a worker mid-cell: the first cell to find the marker removes it and ends
    its process at once, as an out-of-memory kill would."""
    marker = os.environ.get(FAULT_ENV)
    if marker and Path(marker).exists():
        Path(marker).unlink(missing_ok=True)
        os._exit(17)


@task(name="transfer-cell", task_run_name="cell-{cell.family}-{cell.mode}/{cell.task}-b"
      "{cell.budget}-s{cell.seed}", cache_policy=NO_CACHE)
def train_cell(spec: Spec, data: task_data_lib.TaskData, model: ModelRef,
               cell: Cell) -> CellResult:
    """Train one cell on whichever worker runs it: every rate of the mode's grid, the best on
    dev kept. Writes nothing: the driver records the returned run and rows."""
    _fault_point()
    grid = spec.transfer.lrs[grid_key(cell.mode)]
    train = task_data_lib.take_budget(data.train, cell.budget, cell.seed)
    started = time.perf_counter()
    with on_worker_gpu() as placement:
        trials = {lr: transfer_lib.run_transfer(model.architecture, model.path, data, train,
                                                _config(spec, cell.mode, lr, cell.seed),
                                                _features_dir(spec, cell.family))
                  for lr in grid}
    headline = metrics_lib.headline(data)
    best_lr = max(grid, key=lambda lr: trials[lr].dev.get(headline, float("-inf")))
    best = trials[best_lr]
    mix = list(enumerate(best.mix_weights or []))
    best_step = best.curve[best.best_eval - 1].step
    test = {**best.test, "steps": float(best.steps), "converged": float(best.converged)}
    points = [Point(f"dev_{k}", v, p.step) for p in best.curve for k, v in p.metrics.items()]
    points += [Point(f"test_{k}", v, best_step) for k, v in test.items()]
    points += [Point(f"mix_weight_{i}", w) for i, w in mix]
    points += [Point(f"grid_dev_{headline}_lr_{lr:g}", t.dev.get(headline))
               for lr, t in trials.items()]
    items = [Row(p.index, "dev", k, v) for p in best.curve for k, v in p.metrics.items()]
    items += [Row(p.index, "dev", "step", float(p.step)) for p in best.curve]
    items += [Row(best.best_eval, "test", k, v) for k, v in test.items()]
    items += [Row(best.best_eval, "mix", "weight", w, i) for i, w in mix]
    tags = {"family": cell.family, "mode": cell.mode, "budget": str(cell.budget),
            "seed": str(cell.seed), "lr": f"{best_lr:g}", "lr_grid": str(grid),
            "best_step": str(best_step), "steps": str(best.steps),
            "converged": str(best.converged), "train_examples": str(len(train)),
            **_model_tags(model), **placement}
    base = _base(data, family=cell.family, model_version=model.version, mode=cell.mode,
                 budget=str(cell.budget), seed=cell.seed, lr=best_lr, point=model.point)
    at = f"@{model.point}" if model.point else ""  # a pretraining point, not the final model
    summary = (
        f"{cell.label()}{at}: lr {best_lr:g}, test {headline} "
        f"{best.test.get(headline, float('nan')):.3f} after {best.steps} steps"
        f"{'' if best.converged else ' (still improving)'} in "
        f"{time.perf_counter() - started:.1f}s"
    )
    run_name = f"{cell.family}{at}-{cell.mode}/{cell.task}-b{cell.budget}-s{cell.seed}"
    return CellResult(run_name, tags, points, base, items, best.test_predictions, summary)


def record_cell(spec: Spec, job: CellJob, found: CellResult) -> dict[str, Any]:
    """In the driver, one cell at a time: its MLflow run and result file (workers never write
    the tracking store or result files), pushed to the mirror."""
    result = _record(spec, job.data, found.run_name, found.tags, found.points, found.base,
                     found.items, job.path, found.predictions)
    store = store_of(spec)
    store.sync(store.layout.predictions_of(job.path))
    store.sync(job.path)
    return result


def _per_layer(spec: Spec, data: Any, family: str, model: ModelRef, kind: str,
               scores: dict[int, dict[str, float]], result_task: str, lr: float,
               path: Path, seed: int = 0) -> dict[str, Any]:
    """Record per-layer numbers (probes, polysemy) as one run and layer-indexed rows."""
    items = [Row(0, "test", k, v, layer) for layer, metrics in scores.items()
             for k, v in metrics.items()]
    base = _base(data, task=result_task, family=family, model_version=model.version, mode=kind,
                 budget="all", seed=seed, lr=lr)
    open_tracking(spec)
    suffix = f"-s{seed}" if kind == "probe" else ""
    return _record(spec, data, f"{kind}-{family}/{data.name}{suffix}",
                   {"family": family, "mode": kind, "seed": str(seed), **_model_tags(model)},
                   [Point(f"test_{r.metric}", r.value, r.layer or 0) for r in items], base,
                   items, path)


PROBE_CODE = [*CODE, probes_lib]


def _probe_one(spec: Spec, data: task_data_lib.TaskData, family: str, model: ModelRef,
               seed: int) -> dict[str, Any]:
    """One probe seed: every layer's probe and its control (or floor), reused or computed."""
    lr = spec.transfer.lrs["frozen"][0]
    key = "probe-" + content_key({"task": data.fingerprint, "family": family,
                                  "model": model.model_key, "lr": lr, "rows": ROWS_VERSION,
                                  "seed": seed, "transfer": _run_settings(spec)}, PROBE_CODE)

    def probe(path: Path) -> dict[str, Any]:
        scores = probes_lib.probe_with_control(model.architecture, model.path, data,
                                               _config(spec, "frozen", lr, seed),
                                               _features_dir(spec, family))
        return _per_layer(spec, data, family, model, "probe", scores, data.name, lr, path, seed)

    return _result(spec, data.name, key, probe)


@task(name="probe", task_run_name="probe-{family}/{data.name}", cache_policy=NO_CACHE)
def run_probe(spec: Spec, data: task_data_lib.TaskData, family: str,
              model: ModelRef) -> list[dict[str, Any]]:
    """A linear probe per layer and probe seed, each beside its control: which layer knows
    what, and how much of it the probe could have memorised (pipelines/transfer/probes.py).
    One result file per seed, so adding seeds computes only the new ones."""
    return [_probe_one(spec, data, family, model, seed)
            for seed in range(spec.transfer.probe_seeds)]


@task(name="polysemy", task_run_name="polysemy-{family}/{data.name}", cache_policy=NO_CACHE)
def run_polysemy(spec: Spec, data: task_data_lib.TaskData, family: str,
                 model: ModelRef) -> dict[str, Any]:
    """Same-sense vs different-sense similarity of a word across sentences, per layer."""
    key = content_key({"task": data.fingerprint, "family": family, "model": model.model_key,
                       "max_len": spec.transfer.max_len, "rows": ROWS_VERSION}, CODE)

    def similarity(path: Path) -> dict[str, Any]:
        scores = transfer_lib.polysemy_similarity(model.architecture, model.path, data,
                                                  spec.transfer.max_len,
                                                  _features_dir(spec, family),
                                                  spec.compute.cell_threads)
        return _per_layer(spec, data, family, model, "frozen", scores, "polysemy", 0.0, path)

    return _result(spec, "polysemy", key, similarity)


# ----------------------------------------------------------------------------- your checkpoints


def checkpoint_key(spec: Spec, info: checkpoints_lib.CheckpointInfo, name: str) -> str:
    return content_key({"content": info.content_hash, "name": name,
                        "registered_name": registry.registered_name(spec.experiment, name)},
                       [checkpoints_lib])


@task(name="checkpoint", task_run_name="checkpoint-{checkpoint.name}", cache_policy=NO_CACHE)
def register_checkpoint(spec: Spec, checkpoint: CheckpointSpec) -> ModelRef:
    """Import a user's Hugging Face checkpoint into the store (once per content) and register it
    as `<experiment>-<name>`, tagged with its source path and content hash."""
    info = checkpoints_lib.inspect_checkpoint(checkpoint.path)
    return cached_output(
        store_of(spec),
        Layout.at(spec.store).model(checkpoint.name, checkpoint_key(spec, info, checkpoint.name)),
        lambda out: _import(spec, checkpoint.name, info, out),
        model_hit,
        lock=True,
        hit=lambda m: f"checkpoint {checkpoint.name}: cached (version {m.version})",
    )


def _import(spec: Spec, name: str, info: checkpoints_lib.CheckpointInfo, out: Path) -> ModelRef:
    tags = {"stage": "checkpoint", "family": name, "architecture": info.architecture,
            "model_type": info.model_type, "source_path": str(info.path),
            "content_hash": info.content_hash, "git_sha": git_sha(), "model_key": out.name}
    plan = ModelRun(family=name, architecture=info.architecture, run_name=f"checkpoint-{name}",
                    tags=tags, registered_name=registry.registered_name(spec.experiment, name),
                    resumable=False)  # an import is one short step: nothing to resume
    model = build_model(spec, out, plan,
                        lambda run_id, work, tmp: checkpoints_lib.import_checkpoint(info, tmp))
    stage_logger().info(f"checkpoint {name} ({info.model_type} from {info.path}): "
                        f"registered {model.registered_name} v{model.version}")
    return model
