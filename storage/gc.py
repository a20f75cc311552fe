"""Housekeeping: remove the store's outputs that nothing references any more.

Kept (everything else under corpus/, tokenizers/, tokens/, models/ and features/ goes):
  - a model directory whose pretrain run is the run of a registered version, the run behind a
    result row (result row -> transfer run -> `pretrain_run_id`), or a recent run;
  - the corpus, tokenizer and token shards such runs name in their tags, and those that kept
    outputs name in their manifests (a kept tokenizer keeps its corpus, and so on);
  - the frozen-feature caches and tokenizer index entries of kept models and tokenizers;
  - anything modified within `keep_days` (work in progress, a run not registered yet), and
    whatever that names.
Also removed: the checkpoints (`work/`) of finished models (the weights in `model/` stay; a
finished model never reads them again) and the temporaries of killed writes.
Never touched: mlflow.db and mlartifacts/ (MLflow's own; `mlflow gc` empties deleted runs),
result rows and their per-item predictions, contamination audits, reports, catalog.duckdb, and
anything outside the store. Without a readable MLflow nothing can be shown to be unreferenced,
so `plan` refuses instead of guessing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from mlflow.exceptions import MlflowException

from pretrainlab.config import PretrainlabError
from storage import catalog
from storage.atomic import pid_alive, read_manifest
from storage.layout import Layout
from storage.tracking import TrackingUnavailable, check_tracking_reachable, redact

DAY = 86_400.0
AREAS = ("corpus", "tokenizers", "tokens", "models", "features")
# `.<name>.tmp-<pid>-<random>` (atomic_dir), `.<name>.tmp-<hex>` (atomic_path), `.<name>.gc-<hex>`
# (a removal of ours that was interrupted).
_TEMP = re.compile(r"^\..+\.(?:tmp|gc)-(?P<rest>.+)$")
ORDER = ("features", "checkpoint", "model", "tokens", "tokenizer-index", "tokenizer", "corpus")


class GCError(PretrainlabError, RuntimeError):
    """Garbage collection cannot tell what is referenced; the message says what to give it."""


@dataclass
class Output:
    """One removable thing: an output directory, a checkpoint, an index file or a temporary."""

    kind: str
    node: str
    path: Path
    bytes: int
    newest: float  # newest mtime inside, seconds since the epoch
    needs: list[str] = field(default_factory=list)
    keep: str | None = None  # why it stays; None = garbage


@dataclass
class Plan:
    store: Path
    keep_days: float
    outputs: list[Output]
    skipped: list[Output] = field(default_factory=list)  # touched between plan and removal

    @property
    def remove(self) -> list[Output]:
        rank = {kind: i for i, kind in enumerate((*ORDER, "temp"))}
        garbage = [o for o in self.outputs if o.keep is None]
        return sorted(garbage, key=lambda o: (rank[o.kind], str(o.path)))

    @property
    def kept(self) -> list[Output]:
        return [o for o in self.outputs if o.keep is not None]

    @property
    def bytes(self) -> int:
        return sum(o.bytes for o in self.remove)


# --------------------------------------------------------------------------------- the disk


def _tree(path: Path) -> tuple[int, float]:
    """(bytes of every file, newest mtime of anything) under `path`, symlinks not followed."""
    stat = path.lstat()
    if not path.is_dir() or path.is_symlink():
        return stat.st_size, stat.st_mtime
    size, newest = 0, stat.st_mtime
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            entry = Path(root, name).lstat()
            newest = max(newest, entry.st_mtime)
            size += entry.st_size if name in files else 0
    return size, newest


def _output(kind: str, node: str, path: Path, needs: list[str] | None = None) -> Output:
    size, newest = _tree(path)
    return Output(kind, node, path, size, newest, [n for n in needs or [] if n])


def _dirs(parent: Path) -> list[Path]:
    if not parent.is_dir():
        return []
    return sorted(p for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))


def _node(kind: str, value: Any) -> str:
    return f"{kind}:{value}" if value else ""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _run_of_model(directory: Path) -> str | None:
    """The pretrain run of a model directory: its manifest, else the resumable work/run.json."""
    recorded = read_manifest(directory) or _read_json(Layout.run_record_of(directory))
    run_id = recorded.get("run_id")
    return str(run_id) if run_id else None


@dataclass
class Disk:
    outputs: list[Output]
    model_runs: dict[str, str]  # model node -> pretrain run id
    model_manifests: dict[str, dict[str, Any]]


def scan(layout: Layout, run_tags: dict[str, dict[str, str]]) -> Disk:
    """Every output under the GC'd areas, with what each one needs."""
    outputs: list[Output] = []
    for directory in _dirs(layout.corpora):
        outputs.append(_output("corpus", _node("corpus", directory.name), directory))
    for directory in _dirs(layout.tokenizers):
        if directory == layout.tokenizer_indexes:
            continue
        corpus = (read_manifest(directory) or {}).get("corpus_id")
        outputs.append(
            _output(
                "tokenizer",
                _node("tokenizer", directory.name),
                directory,
                [_node("corpus", corpus)],
            )
        )
    index = layout.tokenizer_indexes
    for entry in sorted(index.glob("*.json")) if index.is_dir() else []:
        tokenizer = _read_json(entry).get("tokenizer_id")
        outputs.append(
            _output(
                "tokenizer-index",
                _node("index", entry.stem),
                entry,
                [_node("tokenizer", tokenizer)],
            )
        )
    shards: dict[tuple[str, str], list[str]] = {}
    for tokenizer_dir in _dirs(layout.token_shards):
        for directory in _dirs(tokenizer_dir):
            corpus = (read_manifest(directory) or {}).get("corpus_id")
            node = _node("tokens", f"{tokenizer_dir.name}/{directory.name}")
            shards.setdefault((tokenizer_dir.name, str(corpus)), []).append(node)
            needs = [_node("tokenizer", tokenizer_dir.name), _node("corpus", corpus)]
            outputs.append(_output("tokens", node, directory, needs))
    model_runs, manifests = {}, {}
    for family_dir in _dirs(layout.models):
        for directory in _dirs(family_dir):
            node = _node("model", f"{family_dir.name}/{directory.name}")
            run_id = _run_of_model(directory)
            tags = run_tags.get(run_id or "", {})
            tokenizer, corpus = tags.get("tokenizer_id"), tags.get("corpus_id")
            needs = [_node("tokenizer", tokenizer), _node("corpus", corpus)]
            needs += shards.get((str(tokenizer), str(corpus)), [])
            if tags.get("parent_family") and tags.get("parent_model_key"):  # an adapted model
                needs.append(_node("model", f"{tags['parent_family']}/{tags['parent_model_key']}"))
            model = _output("model", node, directory, needs)
            outputs.append(model)
            manifest = read_manifest(directory)
            if run_id:
                model_runs[node] = run_id
            if manifest is not None:
                manifests[node] = manifest
                if (work := Layout.work_of(directory)).is_dir():
                    checkpoint = _output("checkpoint", _node("checkpoint", node), work, [node])
                    model.bytes -= checkpoint.bytes  # counted once: as the checkpoint
                    outputs.append(checkpoint)
    for family_dir in _dirs(layout.features):
        for directory in _dirs(family_dir):
            model_dir = (read_manifest(directory) or {}).get("model_dir")
            owner = _model_node(model_dir)
            outputs.append(
                _output(
                    "features",
                    _node("features", f"{family_dir.name}/{directory.name}"),
                    directory,
                    [owner],
                )
            )
    outputs += _temps(layout)
    return Disk(outputs, model_runs, manifests)


def _model_node(model_dir: str | None) -> str:
    """`.../models/<family>/<key>/model` -> `model:<family>/<key>`; by name, not by absolute
    path, so a store that was moved or copied still links its caches to its models."""
    parts = Path(model_dir).parts if model_dir else ()
    if "models" not in parts:
        return ""
    at = len(parts) - 1 - parts[::-1].index("models")
    return _node("model", "/".join(parts[at + 1 : at + 3])) if len(parts) >= at + 3 else ""


def _areas(layout: Layout) -> list[Path]:
    """The directories collected from (their names are AREAS)."""
    return [layout.corpora, layout.tokenizers, layout.token_shards, layout.models, layout.features]


def _temp_parents(layout: Layout) -> list[Path]:
    parents = [layout.store, *_areas(layout), layout.tokenizer_indexes]
    parents += _dirs(layout.token_shards) + _dirs(layout.features) + _dirs(layout.results)
    parents += _dirs(layout.predictions) + _dirs(layout.audits)
    for family_dir in _dirs(layout.models):
        parents += [family_dir, *_dirs(family_dir)]
    return parents


def _writer_alive(rest: str) -> bool:
    """A temp directory of atomic_dir names its writer (`<pid>-<random>`): is it still alive?"""
    pid, sep, _ = rest.partition("-")
    return bool(sep and pid.isdigit()) and pid_alive(int(pid))


def _temps(layout: Layout) -> list[Output]:
    found = []
    for parent in _temp_parents(layout):
        for entry in sorted(parent.iterdir()) if parent.is_dir() else []:
            match = _TEMP.match(entry.name)
            if match:
                temp = _output("temp", _node("temp", entry), entry)
                if entry.is_dir() and _writer_alive(match["rest"]):
                    temp.keep = "its writer is still running"
                found.append(temp)
    return found


# ------------------------------------------------------------------------------- references


@dataclass
class Mlflow:
    run_tags: dict[str, dict[str, str]]  # run id -> tags
    run_names: dict[str, str]
    recent_runs: set[str]
    versions: list[dict[str, Any]]  # name, version, run_id, tags


def read_references(tracking_uri: str | None, layout: Layout, cutoff: float) -> Mlflow:
    """Runs and registered versions from MLflow; refuses when MLflow cannot be read."""
    uri = catalog.resolve_tracking_uri(layout, tracking_uri)
    if uri is None:
        raise GCError(
            f"no MLflow tracking for {layout.store} (no mlflow.db there, no MLFLOW_TRACKING_URI): "
            "without it every model looks unreferenced. Give --spec or set MLFLOW_TRACKING_URI."
        )
    try:
        check_tracking_reachable(uri, timeout=5)
        tables = catalog.read_mlflow(uri)
    except (TrackingUnavailable, MlflowException) as error:
        raise GCError(f"cannot read MLflow at {redact(uri)}: {error}; nothing removed") from None
    runs = tables["runs"].to_pylist()
    recent = {
        r["run_id"]
        for r in runs
        if r["status"] in ("RUNNING", "SCHEDULED")
        or (r["start_time"] and r["start_time"].replace(tzinfo=UTC).timestamp() >= cutoff)
    }
    return Mlflow(
        {r["run_id"]: dict(r["tags"] or []) for r in runs},
        {r["run_id"]: r["run_name"] or r["run_id"] for r in runs},
        recent,
        [
            {**v, "tags": dict(v["tags"] or [])}
            for v in tables["model_versions"]
            .select(["name", "version", "run_id", "tags"])
            .to_pylist()
        ],
    )


def _result_links(layout: Layout) -> list[tuple[str, str, str, str]]:
    """(run_id, family, model_version, task) of every result file's rows."""
    links = set()
    for path in layout.result_files():
        table = pq.read_table(path, columns=["run_id", "family", "model_version", "task"])
        links |= set(zip(*(table[c].to_pylist() for c in table.column_names), strict=True))
    return sorted(links, key=str)


def _roots(layout: Layout, disk: Disk, mlflow: Mlflow) -> dict[str, str]:
    """node -> why it is referenced directly."""
    pretrain: dict[str, str] = {}  # pretrain run id -> why
    for v in mlflow.versions:
        pretrain.setdefault(v["run_id"], f"registered {v['name']} v{v['version']}")
    unlinked: dict[tuple[str, str], str] = {}
    for run_id, family, version, task in _result_links(layout):
        source = mlflow.run_tags.get(run_id, {}).get("pretrain_run_id")
        if source:
            pretrain.setdefault(source, f"result rows of {task}")
        elif run_id not in mlflow.run_tags and family != "baseline":
            unlinked[(family, str(version))] = f"result rows of {task} (run {run_id} not in MLflow)"
    for run_id in mlflow.recent_runs:
        pretrain.setdefault(run_id, f"recent run {mlflow.run_names[run_id]}")
    roots: dict[str, str] = {}
    named = [(mlflow.run_tags.get(run_id, {}), why) for run_id, why in pretrain.items()]
    named += [(v["tags"], f"registered {v['name']} v{v['version']}") for v in mlflow.versions]
    for tags, why in named:
        for node in _tagged_nodes(tags):
            roots.setdefault(node, why)
    for node, run_id in disk.model_runs.items():
        if run_id in pretrain:
            roots.setdefault(node, pretrain[run_id])
    for node, manifest in disk.model_manifests.items():
        key = (node.split(":", 1)[1].split("/")[0], str(manifest.get("version")))
        if key in unlinked:
            roots.setdefault(node, unlinked[key])
    return roots


def _tagged_nodes(tags: dict[str, str]) -> list[str]:
    """The outputs a run or version names in its tags (pretrain: all three)."""
    nodes = [_node("corpus", tags.get("corpus_id")), _node("tokenizer", tags.get("tokenizer_id"))]
    if tags.get("family") and tags.get("model_key"):
        nodes.append(_node("model", f"{tags['family']}/{tags['model_key']}"))
    return [n for n in nodes if n]


def _keep(outputs: list[Output], by_node: dict[str, Output], chosen: dict[int, str]) -> None:
    """Keep `chosen` (index -> why) and everything they need, transitively; then the caches and
    index entries whose model or tokenizer stays."""
    queue: deque[Output] = deque()
    for index, why in chosen.items():
        if outputs[index].keep is None:
            outputs[index].keep = why
            queue.append(outputs[index])
    while queue:
        output = queue.popleft()
        for need in output.needs:
            target = by_node.get(need)
            if target is not None and target.keep is None:
                target.keep = f"needed by {output.node}"
                queue.append(target)
    for output in outputs:
        if output.keep is None and output.kind in ("features", "tokenizer-index"):
            owner = by_node.get(output.needs[0]) if output.needs else None
            if owner is not None and owner.keep is not None:
                output.keep = f"serves kept {owner.node}"


def _mark(outputs: list[Output], roots: dict[str, str], cutoff: float, now: float) -> None:
    """References first (so the reason shown is the reference), then whatever is recent."""
    by_node = {o.node: o for o in outputs}
    referenced = {
        i: roots[o.node]
        for i, o in enumerate(outputs)
        if o.node in roots and o.kind not in ("checkpoint", "features")
    }
    _keep(outputs, by_node, referenced)
    recent = {
        i: f"modified {_age(now - o.newest)} ago"
        for i, o in enumerate(outputs)
        if o.keep is None and o.newest >= cutoff
    }
    _keep(outputs, by_node, recent)


def _age(seconds: float) -> str:
    if seconds < 3600:
        return f"{max(seconds, 0) / 60:.0f} min"
    if seconds < 2 * DAY:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / DAY:.1f} days"


def plan(
    store: Path,
    tracking_uri: str | None = None,
    keep_days: float = 7.0,
    keep_checkpoints: bool = False,
    now: float | None = None,
) -> Plan:
    """What `collect` would remove and why everything else stays; touches nothing."""
    layout = Layout.at(store)
    if not layout.store.is_dir():
        raise GCError(f"no store at {layout.store}: nothing to collect (check --store / --spec)")
    if keep_days < 0:
        raise GCError(f"--keep-days {keep_days}: must be >= 0")
    now = time.time() if now is None else now
    cutoff = now - keep_days * DAY
    mlflow = read_references(tracking_uri, layout, cutoff)
    disk = scan(layout, mlflow.run_tags)
    if keep_checkpoints:
        for output in disk.outputs:
            if output.kind == "checkpoint":
                output.keep = "--keep-checkpoints"
    _mark(disk.outputs, _roots(layout, disk, mlflow), cutoff, now)
    garbage = {o.node: o for o in disk.outputs if o.kind == "model" and o.keep is None}
    # A removed model takes its checkpoints with it: list (and count) them as part of it.
    outputs = []
    for output in disk.outputs:
        if output.kind == "checkpoint" and output.needs[0] in garbage:
            garbage[output.needs[0]].bytes += output.bytes
        else:
            outputs.append(output)
    return Plan(layout.store, keep_days, outputs)


# --------------------------------------------------------------------------------- removing


def _inside(store: Path, path: Path) -> bool:
    try:
        relative = path.relative_to(store)
    except ValueError:
        return False
    top = relative.parts[0] if relative.parts else ""
    kept_areas = (*AREAS, "results", "predictions", "audit")
    return top in kept_areas or (len(relative.parts) == 1 and _TEMP.match(top) is not None)


def _delete(path: Path) -> None:
    """Rename first (atomic: no reader sees a half-removed output), then delete."""
    doomed = path.with_name(f".{path.name}.gc-{uuid.uuid4().hex[:8]}")
    os.replace(path, doomed)
    if doomed.is_dir() and not doomed.is_symlink():
        shutil.rmtree(doomed)
    else:
        doomed.unlink()


def _prune_empty(store: Path, path: Path) -> None:
    """Drop parent directories (tokens/<tokenizer>, models/<family>) left empty."""
    parent = path.parent
    while parent != store and parent.name not in AREAS and parent.is_dir():
        if any(parent.iterdir()):
            return
        parent.rmdir()
        parent = parent.parent


def collect(found: Plan, now: float | None = None) -> Plan:
    """Remove the plan's garbage; anything modified since the plan was made is skipped."""
    cutoff = (time.time() if now is None else now) - found.keep_days * DAY
    for output in found.remove:
        if not _inside(found.store, output.path):
            raise GCError(f"refusing to remove {output.path}: not a GC'd area of {found.store}")
        if not output.path.exists() and not output.path.is_symlink():
            continue
        if _tree(output.path)[1] >= cutoff:
            found.skipped.append(output)
            continue
        _delete(output.path)
        _prune_empty(found.store, output.path)
    return found


def gc(
    store: Path,
    tracking_uri: str | None = None,
    keep_days: float = 7.0,
    dry_run: bool = True,
    keep_checkpoints: bool = False,
) -> Plan:
    """Plan, and unless `dry_run`, remove. The plan says what, why and how many bytes."""
    found = plan(store, tracking_uri, keep_days, keep_checkpoints)
    return found if dry_run else collect(found)
