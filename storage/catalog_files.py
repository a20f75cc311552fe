"""The catalog's views over the Parquet outputs, and its tables describing them.

An output counts only once complete (its `_manifest.json` exists; `storage.atomic`), and the
temporaries of an atomic write (hidden names) never do. Every path comes from `storage.layout`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pretrainlab.config import PretrainlabError
from storage.atomic import is_complete, read_manifest
from storage.layout import Layout

# A tokenizer's family is in its _manifest.json; older ones only say their kind in the meta file.
FAMILY_BY_KIND = {"wordpiece": "bert", "bpe": "gpt", "wordlevel": "word"}

def _visible_dirs(parent: Path) -> list[Path]:
    """Sub-directories, minus atomic_dir temporaries (hidden; they may already hold a manifest)."""
    if not parent.is_dir():
        return []
    return sorted(p for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))


def _complete_dirs(parent: Path) -> list[Path]:
    return [d for d in _visible_dirs(parent) if is_complete(d)]


def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _read_parquet(files: Iterable[Path]) -> str:
    listed = ", ".join(_sql_str(f.as_posix()) for f in files)
    return f"read_parquet([{listed}], union_by_name = true, filename = '_file')"


@dataclass
class View:
    name: str
    sql: str
    files: int


def corpus_views(layout: Layout) -> list[View]:
    corpora = _complete_dirs(layout.corpora)
    parts = [f for d in corpora for f in Layout.parts(d)]
    rejects = [layout.rejects(d.name) for d in corpora if layout.rejects(d.name).is_file()]
    corpus_id = "parse_filename(parse_dirpath(_file)) as corpus_id"
    views = []
    for name, files in (("corpus", parts), ("rejects", rejects)):
        if files:
            sql = f"select {corpus_id}, * exclude (_file) from {_read_parquet(files)}"
            views.append(View(name, sql, len(files)))
    return views


def tokenizer_family(layout: Layout, tokenizer_id: str) -> str:
    """The model family a tokenizer serves: its manifest's "family", else its kind's family."""
    directory = layout.tokenizer(tokenizer_id)
    manifest = read_manifest(directory) or {}
    if manifest.get("family"):
        return str(manifest["family"])
    meta = _read_json(layout.tokenizer_meta(tokenizer_id))
    kind = meta.get("kind") if isinstance(meta, dict) else None
    return FAMILY_BY_KIND.get(kind, "unknown")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _view_name(family: str) -> str:
    return "tokens_" + (re.sub(r"[^a-z0-9_]+", "_", family.lower()).strip("_") or "unknown")


def _token_output_sql(output: Path) -> str:
    """One complete token output with its ids: the corpus comes from its manifest, because the
    directory is named by encoding id (corpus, settings and code), not by corpus."""
    corpus_id = (read_manifest(output) or {}).get("corpus_id")
    ids = (
        f"{_sql_str(output.parent.name)} as tokenizer_id, {_sql_str(output.name)} as encoding_id, "
        f"{'null' if corpus_id is None else _sql_str(str(corpus_id))}::varchar as corpus_id"
    )
    files = Layout.parts(output)
    return f"select {ids}, * exclude (_file) from {_read_parquet(files)}" if files else ""


def token_views(layout: Layout) -> list[View]:
    by_family: dict[str, list[tuple[str, int]]] = {}
    for tokenizer_dir in _visible_dirs(layout.token_shards):
        family = tokenizer_family(layout, tokenizer_dir.name)
        for output in _complete_dirs(tokenizer_dir):
            sql = _token_output_sql(output)
            if sql:
                n_files = len(Layout.parts(output))
                by_family.setdefault(family, []).append((sql, n_files))
    views = []
    for family, outputs in sorted(by_family.items()):
        sql = " union all by name ".join(select for select, _ in outputs)
        views.append(View(_view_name(family), sql, sum(n for _, n in outputs)))
    if views:
        union = " union all by name ".join(
            f"select {_sql_str(v.name.removeprefix('tokens_'))} as family, * from {v.name}"
            for v in views
        )
        views.append(View("tokens", union, sum(v.files for v in views)))
    return views


# The columns of a transfer result row: what tasks/transfer.py writes and `results` reads.
# `task_fingerprint` is the task data's content hash (report cells are keyed on it, so rows of
# different task settings never pool); `headline` marks the task's headline metric
# (pipelines.transfer.metrics.headline); `point` names a pretraining point (null until a
# family is transferred at several points of its pretraining).
RESULT_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("task", pa.string()), ("family", pa.string()),
    ("model_version", pa.string()), ("mode", pa.string()), ("budget", pa.string()),
    ("seed", pa.int32()), ("lr", pa.float64()), ("epoch", pa.int32()), ("split", pa.string()),
    ("metric", pa.string()), ("value", pa.float64()), ("layer", pa.int32()),
    ("task_fingerprint", pa.string()), ("headline", pa.bool_()), ("point", pa.string()),
])
# Per test item of a run's chosen rate (a word when tagging): the side table of predictions.
PREDICTION_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("task", pa.string()), ("family", pa.string()),
    ("mode", pa.string()), ("budget", pa.string()), ("seed", pa.int32()),
    ("item", pa.int32()), ("example", pa.int32()), ("gold", pa.string()), ("pred", pa.string()),
    ("correct", pa.bool_()),
])


# One row per (task, corpus) audit (tasks/audit.py): test examples sharing an n-gram with the
# pretraining corpus, and occurring verbatim; `adapted` names the models adapted on the task's
# own text (they saw its test text by design).
AUDIT_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("task", pa.string()), ("task_fingerprint", pa.string()),
    ("corpus_id", pa.string()), ("examples", pa.int64()), ("short_examples", pa.int64()),
    ("ngram_examples", pa.int64()), ("verbatim_examples", pa.int64()),
    ("ngram_share", pa.float64()), ("verbatim_share", pa.float64()),
    ("ngram_words", pa.int32()), ("ngram_chars", pa.int32()), ("warn_share", pa.float64()),
    ("documents", pa.int64()), ("adapted", pa.list_(pa.string())),
])
# Per (task, model, layer): probes and their controls over probe seeds (tasks/transfer.py).
PROBE_LAYERS_SQL = """select task, family, model_version, layer,
    max(value) filter (where metric = 'relative_depth') as relative_depth,
    count(distinct seed) as seeds,
    avg(value) filter (where metric = 'accuracy') as accuracy,
    avg(value) filter (where metric = 'seen_accuracy') as seen_accuracy,
    avg(value) filter (where metric = 'control_accuracy') as control_accuracy,
    avg(value) filter (where metric = 'selectivity') as selectivity,
    stddev_samp(value) filter (where metric = 'selectivity') as selectivity_sd,
    avg(value) filter (where metric = 'floor') as floor,
    avg(value) filter (where metric = 'above_floor') as above_floor
from results where mode = 'probe' and split = 'test' and layer is not null group by all"""


class StaleResultsError(PretrainlabError, RuntimeError):
    """A result file written before the current row schema: transfer must be re-run."""


def check_result_schema(path: Path, layout: Layout) -> None:
    """Refuse a result file that lacks columns of `RESULT_SCHEMA` (written by an older lab):
    its rows cannot be keyed on the task fingerprint nor read by the headline flag."""
    try:
        names = pq.read_schema(path).names
    except (pa.ArrowException, OSError):  # a damaged file: building the view names it
        return
    missing = [n for n in RESULT_SCHEMA.names if n not in names]
    if missing:
        raise StaleResultsError(
            f"{path}: result rows from an older version of the lab (missing columns "
            f"{', '.join(missing)}). Remove {layout.results} and {layout.predictions}, "
            "then re-run transfer: `pretrainlab run <spec> --until transfer`"
        )


def result_views(layout: Layout) -> list[View]:
    """Result rows: every visible Parquet file under results/ (written atomically, so whole),
    and the per-item predictions beside them."""
    views = []
    files = layout.result_files()
    for path in files:
        check_result_schema(path, layout)
    if files:
        views.append(
            View("results", f"select * exclude (_file) from {_read_parquet(files)}", len(files))
        )
        views.append(View("probe_layers", PROBE_LAYERS_SQL, len(files)))  # derived from results
    predictions = Layout.visible_parquet(layout.predictions)
    if predictions:
        sql = f"select * exclude (_file) from {_read_parquet(predictions)}"
        views.append(View("predictions", sql, len(predictions)))
    return views


def audit_views(layout: Layout) -> list[View]:
    """`contamination`: every task's audit against the pretraining corpus."""
    files = Layout.visible_parquet(layout.audits)
    if not files:
        return []
    return [View("contamination", f"select * exclude (_file) from {_read_parquet(files)}",
                 len(files))]  # fmt: skip


def output_rows(layout: Layout) -> pa.Table:
    rows: list[dict[str, Any]] = []
    for directory in _complete_dirs(layout.corpora):
        rows.append(_output_row("corpus", directory.name, directory))
    for tokenizer_dir in _visible_dirs(layout.token_shards):
        for directory in _complete_dirs(tokenizer_dir):
            rows.append(_output_row("tokens", f"{tokenizer_dir.name}/{directory.name}", directory))
    schema = pa.schema(
        [
            ("kind", pa.string()),
            ("output_id", pa.string()),
            ("path", pa.string()),
            ("manifest", pa.string()),
        ]
    )
    return pa.Table.from_pylist(rows, schema=schema)


def _output_row(kind: str, output_id: str, directory: Path) -> dict[str, Any]:
    manifest = read_manifest(directory)
    return {
        "kind": kind,
        "output_id": output_id,
        "path": str(directory),
        "manifest": json.dumps(manifest, sort_keys=True, default=str),
    }


def tokenizer_rows(layout: Layout) -> pa.Table:
    """Every complete tokenizer (the index/ directory has no manifest, so it is skipped)."""
    rows = []
    for directory in _complete_dirs(layout.tokenizers):
        meta = _read_json(layout.tokenizer_meta(directory.name))
        meta = meta if isinstance(meta, dict) else {}
        manifest = read_manifest(directory) or {}
        rows.append(
            {
                "tokenizer_id": directory.name,
                "family": tokenizer_family(layout, directory.name),
                "kind": meta.get("kind"),
                "vocab_size": meta.get("vocab_size"),
                "corpus_id": manifest.get("corpus_id"),
                "path": str(directory),
                "manifest": json.dumps(manifest, sort_keys=True, default=str),
            }
        )
    schema = pa.schema(
        [
            ("tokenizer_id", pa.string()),
            ("family", pa.string()),
            ("kind", pa.string()),
            ("vocab_size", pa.int64()),
            ("corpus_id", pa.string()),
            ("path", pa.string()),
            ("manifest", pa.string()),
        ]
    )
    return pa.Table.from_pylist(rows, schema=schema)
