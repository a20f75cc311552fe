"""Ingest tasks: plan the corpus (its content-addressed id), build it, record it in MLflow."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

import pipelines.data.ingest as ingest_lib
from pretrainlab.config import Spec
from storage import remote
from storage.atomic import atomic_dir, read_manifest, write_manifest
from storage.hashing import code_hash, stable_hash
from storage.layout import Layout
from storage.remote_sources import RemoteFile
from tasks.progress import ProgressReporter, stage_logger
from tasks.stage import store_of
from tasks.tracking import OUTSIDE_WORLD, record_stage


@dataclass(frozen=True)
class CorpusPlan:
    corpus_id: str
    directory: Path
    fingerprints: list[dict[str, Any]]
    source_bytes: int

    @property
    def cached(self) -> bool:
        return read_manifest(self.directory) is not None


def source_inputs(spec: Spec) -> list[ingest_lib.SourceInput]:
    """Resolve every source of the spec to files; fails with the path that matched nothing."""
    object_store = remote.ObjectStore.from_settings(spec.storage)
    return [
        ingest_lib.sources.source_input(source, spec.data_dir, object_store)
        for source in spec.corpus.sources
    ]


def ingest_settings(spec: Spec) -> ingest_lib.IngestSettings:
    corpus = spec.corpus
    return ingest_lib.IngestSettings(
        min_chars=corpus.min_chars,
        max_chars=corpus.max_chars,
        valid_fraction=corpus.valid_fraction,
        rows_per_shard=corpus.rows_per_shard,
    )


_FINGERPRINTS: dict[tuple, list[dict]] = {}


def _fingerprints(paths: list) -> list[dict]:
    """`fingerprint_sources`, read once per process while the files keep their size and
    modification time: the CLI's stage check, its pre-flight plan, the pipeline and the ingest
    stage all need the corpus id, and hashing a large corpus four times is minutes of I/O."""
    key = tuple(
        p if isinstance(p, RemoteFile) else (str(p), p.stat().st_size, p.stat().st_mtime_ns)
        for p in paths
    )
    if key not in _FINGERPRINTS:
        _FINGERPRINTS[key] = ingest_lib.fingerprint_sources(paths)
    return _FINGERPRINTS[key]


def plan_corpus_plain(spec: Spec) -> CorpusPlan:
    """The corpus id: hash of the sources' bytes, the settings and the ingest code."""
    inputs = source_inputs(spec)
    fingerprints = [
        {
            "source": src.label,
            "format": src.format,
            "text_field": src.text_field,
            "doc_per": src.doc_per,
            "limit": src.limit,
            "encoding": ingest_lib.charsets.codec_name(src.encoding),
            "files": _fingerprints(src.paths),
        }
        for src in inputs
    ]
    corpus_id = stable_hash(
        {
            "sources": fingerprints,
            "settings": asdict(ingest_settings(spec)),
            "code": code_hash(ingest_lib.CODE),
        }
    )
    total = sum(f["bytes"] for src in fingerprints for f in src["files"])
    return CorpusPlan(corpus_id, Layout.at(spec.store).corpus(corpus_id), fingerprints, total)


@task(name="plan-corpus", cache_policy=NO_CACHE)
def plan_corpus(spec: Spec) -> CorpusPlan:
    """Fingerprint the sources (at disk speed) and name the corpus they make."""
    return plan_corpus_plain(spec)


@task(name="build-corpus", cache_policy=NO_CACHE)
def build_corpus(spec: Spec, plan: CorpusPlan) -> dict[str, Any]:
    """Stream the sources into Parquet parts, or reuse the complete corpus with this id."""
    log = stage_logger()
    store_of(spec).sync(plan.directory)  # pull a complete corpus from the mirror (fails fast)
    cached = read_manifest(plan.directory)
    if cached is not None:
        log.info(f"corpus {plan.corpus_id} is cached at {plan.directory}: nothing to ingest")
        return {**cached, "output": str(plan.directory), "cache_hit": True}
    started = time.perf_counter()
    with (
        atomic_dir(plan.directory) as tmp,
        ProgressReporter(f"ingest {plan.corpus_id[:8]}", total=plan.source_bytes) as progress,
    ):
        stats = ingest_lib.ingest(
            source_inputs(spec), ingest_settings(spec), tmp, progress
        ).to_dict()
        seconds = time.perf_counter() - started
        manifest = {
            "corpus_id": plan.corpus_id,
            "stats": stats,
            "sources": plan.fingerprints,
            "seconds": round(seconds, 3),
            "mb_per_s": round(stats["bytes_read"] / 1e6 / max(seconds, 1e-9), 3),
        }
        write_manifest(tmp, manifest)
    store_of(spec).sync(plan.directory)  # push to the mirror
    log.info(
        f"corpus {plan.corpus_id}: {stats['docs_written']:,} docs written, "
        f"{stats['duplicates']:,} duplicates, {stats['rejected']:,} rejected "
        f"{stats['rejected_by_reason']} in {seconds:.1f}s"
    )
    for hint in stats["encoding_hints"].values():
        log.warning(hint)
    return {**manifest, "output": str(plan.directory), "cache_hit": False}


@task(name="record-corpus", cache_policy=NO_CACHE, **OUTSIDE_WORLD)
def record_corpus(spec: Spec, manifest: dict[str, Any]) -> str:
    """One MLflow run for this ingest: the spec, corpus statistics and throughput."""
    stats = manifest["stats"]
    metrics = {k: v for k, v in stats.items() if isinstance(v, int | float)}
    metrics |= {f"rejected_{k}": v for k, v in stats["rejected_by_reason"].items()}
    metrics |= {"seconds": manifest["seconds"], "mb_per_s": manifest["mb_per_s"]}
    return record_stage(
        spec,
        stage="ingest",
        run_name=f"ingest/corpus-{manifest['corpus_id'][:8]}",
        tags={"corpus_id": manifest["corpus_id"], "cache_hit": str(manifest["cache_hit"])},
        metrics=metrics,
        summary=manifest,
    )
