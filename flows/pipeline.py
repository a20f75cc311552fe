"""The end-to-end pipeline: a readable list of stage subflows, stopping at `until`.

The pretrain, transfer and report flows are imported where they run: they bring torch,
transformers and gensim (~10 s of imports), which a run that stops before them never needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger

from flows.ingest import ingest
from flows.tokenization import tokenization
from pretrainlab.config import TOKENIZER_OF_FAMILY, Spec, parse_mode
from storage.atomic import is_complete, read_manifest
from storage.layout import Layout
from storage.tracking import check_tracking_reachable
from tasks import stamps
from tasks.ingest import plan_corpus_plain
from tasks.launch import check_launch
from tasks.preflight import InputCheck, needs_tasks, require_inputs
from tasks.runners import check_compute
from tasks.tokenization import encoding_id, plan_tokenizer, tokenizer_names

Stage = Literal["ingest", "tokenize", "pretrain", "transfer", "report"]
STAGES = stamps.STAGES


@dataclass(frozen=True)
class StageStatus:
    stage: str
    output: str
    cached: bool
    detail: str


def _shards(spec: Spec, name: str, corpus_id: str) -> tuple[str | None, Path | None]:
    """The tokenizer id and shard directory these inputs map to, when already trained."""
    tokenizer = plan_tokenizer(spec, name, corpus_id)
    if tokenizer.tokenizer_id is None:
        return None, None
    layout = Layout.at(spec.store)
    return tokenizer.tokenizer_id, layout.tokens(
        tokenizer.tokenizer_id, encoding_id(spec, corpus_id)
    )


def _tokenize_status(spec: Spec, name: str, corpus_id: str) -> StageStatus:
    tokenizer_id, shards = _shards(spec, name, corpus_id)
    if shards is None:
        return StageStatus(f"tokenize/{name}", "tokenizers/<trained>", False, "train + encode")
    done = is_complete(shards)
    detail = f"tokenizer {tokenizer_id} cached" + ("" if done else ", shards to encode")
    return StageStatus(f"tokenize/{name}", str(shards), done, detail)


def _model_out(spec: Spec, name: str, family: str, corpus_id: str) -> Path | None:
    """Where a family's model (or a variant's, on its family's tokenizer) is or will be; None
    before its shards are encoded."""
    tokenizer_id, shards = _shards(spec, TOKENIZER_OF_FAMILY[family], corpus_id)
    if shards is None or not is_complete(shards):
        return None
    from tasks.pretrain import model_dir, model_spec  # torch: only when a plan reaches pretraining

    return model_dir(model_spec(spec, name), family, tokenizer_id, str(shards), name)


def _pretrain_status(spec: Spec, name: str, family: str, corpus_id: str) -> StageStatus:
    """A family's model, or a variant's (its name, on its family's tokenizer)."""
    out = _model_out(spec, name, family, corpus_id)
    if out is None:
        return StageStatus(f"pretrain/{name}", "models/<trained>", False, "after tokenize")
    manifest = read_manifest(out)
    if manifest is not None:
        detail = f"{manifest['registered_name']} v{manifest['version']}"
    else:
        detail = "resume from checkpoint" if Layout.work_of(out).exists() else "train"
    return StageStatus(f"pretrain/{name}", str(out), manifest is not None, detail)


def plan(spec: Spec, until: Stage = STAGES[-1]) -> list[StageStatus]:
    """What `run` would do: for each stage, whether its output is already complete."""
    corpus = plan_corpus_plain(spec)
    statuses = [
        StageStatus(
            "ingest",
            str(corpus.directory),
            corpus.cached,
            f"{len(corpus.fingerprints)} source(s), {corpus.source_bytes / 1e6:.1f} MB",
        )
    ]
    reach = STAGES.index(until)
    if reach >= STAGES.index("tokenize"):
        statuses += [_tokenize_status(spec, n, corpus.corpus_id) for n in tokenizer_names(spec)]
    if reach >= STAGES.index("pretrain"):
        statuses += [
            _pretrain_status(spec, name, family, corpus.corpus_id)
            for name, family in spec.pretrain.models()
        ]
    if reach >= STAGES.index("transfer"):
        detail = _transfer_cells(spec, corpus.corpus_id)
        out = Layout.at(spec.store).results
        statuses.append(_whole_stage_status(spec, "transfer", corpus.corpus_id, out, detail))
    if reach >= STAGES.index("report"):
        out = Layout.at(spec.store).report(spec.experiment)
        detail = "rebuilt from the catalog"
        statuses.append(_whole_stage_status(spec, "report", corpus.corpus_id, out, detail))
    return statuses


def _transfer_cells(spec: Spec, corpus_id: str) -> str:
    """How many transfer cells the sweep has and, of those whose model is trained, how many are
    stored (a stored cell is never run again)."""
    from flows.transfer import at_points, sweep_cells  # torch: only when a plan reaches it
    from pipelines.data.task_data import load_task
    from storage.registry import ModelRef
    from tasks.transfer import cell_job, stored_cell

    sweep = spec.transfer
    chosen = sweep.families or list(dict.fromkeys(f for _, f in spec.pretrain.models()))
    architectures = {n: f for n, f in spec.pretrain.models() if f in chosen}
    models = {}
    for name, family in architectures.items():
        out = _model_out(spec, name, family, corpus_id)
        manifest = read_manifest(out) if out is not None else None
        if manifest is not None:
            models[name] = ModelRef.from_dict(manifest)
    # a pretrained cell also runs at each pretraining point short of the final model
    points = len([p for p in spec.pretrain.points if p < 1.0])
    total = stored = 0
    for task_spec in sweep.tasks:
        cells = sweep_cells(spec, task_spec, architectures)
        total += sum(1 if parse_mode(c.mode).name == "scratch" else 1 + points for c in cells)
        trained = [(c, ref) for c in cells if c.family in models
                   for ref in at_points(models[c.family], c.mode)]  # fmt: skip
        if trained:
            data = load_task(task_spec, Path(spec.data_dir) if spec.data_dir else None)
            stored += sum(stored_cell(spec, cell_job(spec, data, ref, c)) is not None
                          for c, ref in trained)
    extra = " (+ checkpoints/adapted models)" if sweep.checkpoints or sweep.adapt else ""
    return f"{total} cells{extra}: {stored} stored, {total - stored} would run"


def _whole_stage_status(
    spec: Spec, stage: str, corpus_id: str, out: Path, detail: str
) -> StageStatus:
    """Cached when this stage and every one before it would be skipped as a whole."""
    done = stamps.up_to_date(spec, STAGES[: STAGES.index(stage) + 1], corpus_id)
    unchanged = "unchanged since its last run"
    return StageStatus(stage, str(out), done is not None, unchanged if done else detail)


def _stage(spec: Spec, stage: str, corpus_id: str, results: dict[str, Any],
           run: Callable[[], dict]) -> dict[str, Any]:
    """Run a stage subflow unless its inputs, settings and code are unchanged since it last
    completed (one check per stage: per-task checks cost seconds of Prefect overhead)."""
    key = stamps.stage_key(spec, stage, stamps.upstream(spec, stage, corpus_id, results))
    if (hit := stamps.cached_stage(spec, stage, key)) is not None:
        get_run_logger().info(f"{stage}: unchanged since its last run, skipped ({key})")
        return hit
    result = run()
    stamps.record_stage(spec, stage, key, result, stamps.stage_outputs(spec, stage, result))
    return result


def check_services(spec: Spec) -> None:
    """The services a run needs are up: fails in seconds what would fail after hours of work."""
    check_tracking_reachable(spec.tracking_uri())  # a down MLflow server, no work lost
    check_compute(spec.compute)  # ... a Dask scheduler that is down
    check_launch(spec)  # ... a torchrun world size the devices cannot hold


def preflight(spec: Spec, until: Stage = STAGES[-1], origin: str = "the spec") -> InputCheck:
    """The cheap checks, before any work: every input the stages up to `until` read (corpus
    sources; task files when transfer is among them), then the services."""
    checked = require_inputs(spec, origin, tasks=needs_tasks(until))
    check_services(spec)
    return checked


@flow(name="pipeline", flow_run_name="pipeline/{spec.experiment}")
def pipeline(spec: Spec, until: Stage = STAGES[-1], preflighted: bool = False) -> dict[str, Any]:
    """Run every stage up to and including `until`; each stage reuses its cached output.
    `preflighted`: the caller (`pretrainlab run`) has just run `preflight`, before Prefect."""
    if not preflighted:
        preflight(spec, until)
    corpus_id = plan_corpus_plain(spec).corpus_id
    results: dict[str, Any] = {}
    results["ingest"] = _stage(spec, "ingest", corpus_id, results, lambda: ingest(spec))
    if until == "ingest":
        return results
    results["tokenize"] = _stage(spec, "tokenize", corpus_id, results,
                                 lambda: tokenization(spec, corpus_id))
    if until == "tokenize":
        return results
    from flows.pretrain import pretrain
    from flows.report import report
    from flows.transfer import transfer

    tokens = results["tokenize"]["families"]
    results["pretrain"] = _stage(spec, "pretrain", corpus_id, results,
                                 lambda: pretrain(spec, corpus_id, tokens))
    if until == "pretrain":
        return results
    models = results["pretrain"]["families"]
    results["transfer"] = _stage(spec, "transfer", corpus_id, results,
                                 lambda: transfer(spec, models))
    if until == "transfer":
        return results
    results["report"] = _stage(spec, "report", corpus_id, results,
                               lambda: report(spec, list(models)))
    return results
