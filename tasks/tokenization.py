"""Tokenization tasks: train (or reuse) one tokenizer per family, encode the corpus with it.

A tokenizer's id is the hash of its tokenizer.json (training is not reproducible bit for bit),
so the cache is two-level: an index maps the training inputs (corpus, settings, code) to the id
of the tokenizer they produced; the encoded shards live under that id.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed

import pipelines.data.encoding as encoding_lib
import pipelines.data.segmentation as segmentation_lib
import pipelines.data.sentences as sentences_lib
import pipelines.data.tokenizer_training as tokenizer_lib
from pretrainlab.config import TOKENIZER_NAMES, TOKENIZER_OF_FAMILY, Spec
from storage.atomic import atomic_dir, read_manifest, write_json, write_manifest
from storage.layout import Layout
from tasks.progress import ProgressReporter, stage_logger
from tasks.stage import cached_output, content_key, reuse, store_of
from tasks.tracking import OUTSIDE_WORLD, record_stage


def tokenizer_names(spec: Spec) -> list[str]:
    """The tokenizers the spec's families need, in a stable order."""
    wanted = {TOKENIZER_OF_FAMILY[family] for family in spec.pretrain.families}
    return [name for name in TOKENIZER_NAMES if name in wanted]


@dataclass(frozen=True)
class TokenizerPlan:
    name: str  # bert | gpt | word
    corpus_id: str
    training_key: str
    tokenizer_id: str | None  # known when a valid tokenizer for these inputs exists

    @property
    def cached(self) -> bool:
        return self.tokenizer_id is not None


def _training_key(spec: Spec, name: str, corpus_id: str) -> str:
    """Corpus, settings, code, and the installed segmenter's version (another version may cut
    the same text into other words)."""
    settings = getattr(spec.tokenizers, name)
    inputs = {
        "corpus_id": corpus_id,
        "tokenizer": settings.model_dump(mode="json"),
        "segmenter": tokenizer_lib.spec_segmenter(settings),
    }
    return content_key(inputs, [tokenizer_lib, segmentation_lib])


def _is_intact(directory: Path) -> bool:
    try:
        tokenizer_lib.read_meta(directory)
    except tokenizer_lib.TokenizerError:
        return False
    return read_manifest(directory) is not None


def _indexed_tokenizer(layout: Layout, index: Path) -> str | None:
    """The id an index entry records for its inputs, if that tokenizer is still intact."""
    try:
        tokenizer_id = json.loads(index.read_text())["tokenizer_id"]
    except (OSError, ValueError, KeyError):
        return None
    return tokenizer_id if _is_intact(layout.tokenizer(tokenizer_id)) else None


def plan_tokenizer(spec: Spec, name: str, corpus_id: str) -> TokenizerPlan:
    key, layout = _training_key(spec, name, corpus_id), Layout.at(spec.store)
    found = _indexed_tokenizer(layout, layout.tokenizer_index(key))
    return TokenizerPlan(name, corpus_id, key, found)


def encoding_id(spec: Spec, corpus_id: str) -> str:
    """Identity of encoded shards under a tokenizer: corpus, cut length and the encoding code."""
    return content_key(
        {"corpus_id": corpus_id, "max_sentence_tokens": spec.tokenizers.max_sentence_tokens},
        [encoding_lib, sentences_lib, tokenizer_lib, segmentation_lib],
    )


def _quarantine_if_corrupt(directory: Path) -> None:
    """A tokenizer dir whose content no longer matches its id is moved aside, never reused."""
    if directory.exists() and not _is_intact(directory):
        target = directory.with_name(f".corrupt-{directory.name}-{int(time.time())}")
        shutil.move(directory, target)
        stage_logger().warning(f"tokenizer {directory} failed its hash check; moved to {target}")


def _tokenizer_hit(layout: Layout, name: str, index: Path) -> dict[str, Any] | None:
    """The tokenizer an index entry names, when it is still intact, as a cache hit."""
    tokenizer_id = _indexed_tokenizer(layout, index)
    if tokenizer_id is None:
        return None
    meta = tokenizer_lib.read_meta(layout.tokenizer(tokenizer_id))
    return {
        "name": name,
        "tokenizer_id": tokenizer_id,
        "cache_hit": True,
        "vocab_size": meta["vocab_size"],
        "seconds": 0.0,
    }


def _train(spec: Spec, name: str, corpus_id: str, index: Path) -> dict[str, Any]:
    """Train on the train split, store the tokenizer under its content id, index it."""
    layout = Layout.at(spec.store)
    if index.exists():  # the index names a tokenizer that is gone or corrupt
        _quarantine_if_corrupt(layout.tokenizer(json.loads(index.read_text())["tokenizer_id"]))
    started = time.perf_counter()
    settings = getattr(spec.tokenizers, name)
    trained = tokenizer_lib.train_tokenizer(
        settings, tokenizer_lib.iter_train_texts(layout.corpus(corpus_id))
    )
    segmenter = tokenizer_lib.spec_segmenter(settings)
    tokenizer_id = tokenizer_lib.tokenizer_id(trained, segmenter)
    target = layout.tokenizer(tokenizer_id)
    _quarantine_if_corrupt(target)
    if not target.exists():
        with atomic_dir(target) as tmp:
            tokenizer_lib.save_tokenizer(trained, tmp, segmenter)
            write_manifest(
                tmp,
                {
                    "tokenizer_id": tokenizer_id,
                    "family": name,
                    "corpus_id": corpus_id,
                    "settings": settings.model_dump(),
                },
            )
    write_json(index, {"tokenizer_id": tokenizer_id, "corpus_id": corpus_id, "family": name})
    stats = tokenizer_lib.vocab_stats(settings, trained)
    return {
        "name": name,
        "tokenizer_id": tokenizer_id,
        "cache_hit": False,
        "vocab_size": stats["vocab_size_actual"],
        "vocab_short": stats["vocab_short"],
        "seconds": round(time.perf_counter() - started, 3),
    }


@task(name="train-tokenizer", task_run_name="train-tokenizer/{name}", cache_policy=NO_CACHE)
def train_tokenizer(spec: Spec, name: str, corpus_id: str) -> dict[str, Any]:
    """Reuse the tokenizer these inputs produced before, or train one on the train split."""
    store = store_of(spec)
    return cached_output(
        store,
        store.layout.tokenizer_index(_training_key(spec, name, corpus_id)),
        lambda index: _train(spec, name, corpus_id, index),
        lambda index: _tokenizer_hit(store.layout, name, index),
        target_of=store.layout.tokenizer,  # the index entry names its tokenizer: both mirrored
        hit=lambda found: f"{name} tokenizer {found['tokenizer_id']} is cached: not retrained",
    )


def encoding_output(spec: Spec, corpus_id: str, tokenizer_id: str) -> Path:
    return Layout.at(spec.store).tokens(tokenizer_id, encoding_id(spec, corpus_id))


def cached_encoding(
    spec: Spec, name: str, corpus_id: str, tokenizer_id: str
) -> dict[str, Any] | None:
    """The manifest of complete token shards for these inputs (a cache hit), else None."""
    out = encoding_output(spec, corpus_id, tokenizer_id)
    cached = reuse(store_of(spec), out)  # encoded by the flow's shard tasks when missing
    if cached is not None:
        stage_logger().info(f"{name} token shards are cached at {out}")
    return cached


@dataclass(frozen=True)
class EncodingJob:
    """One family's encoding: its shard plan (shipped to workers) and its final directory."""

    name: str
    corpus_id: str
    output: Path
    plan: encoding_lib.EncodingPlan


def plan_encoding(spec: Spec, name: str, corpus_id: str, tokenizer_id: str) -> EncodingJob:
    layout = Layout.at(spec.store)
    plan = encoding_lib.plan_encoding(
        layout.corpus(corpus_id),
        layout.tokenizer(tokenizer_id),
        name,
        spec.tokenizers.max_sentence_tokens,
    )
    return EncodingJob(name, corpus_id, encoding_output(spec, corpus_id, tokenizer_id), plan)


@task(name="encode-shard", task_run_name="encode-shard/{name}/{index}", cache_policy=NO_CACHE)
def encode_shard(
    plan: encoding_lib.EncodingPlan, index: int, staging: str, name: str
) -> dict[str, Any]:
    """Encode one corpus part into the staging directory, on whichever worker runs it."""
    started = time.perf_counter()
    counts = encoding_lib.encode_part(plan, index, staging)
    return {"name": name, "counts": counts, "seconds": time.perf_counter() - started}


@contextmanager
def encoding_staging(jobs: list[EncodingJob]) -> Iterator[list[Path]]:
    """One staging directory per job, each renamed onto its output only if all succeed."""
    with ExitStack() as stack:
        yield [stack.enter_context(atomic_dir(job.output)) for job in jobs]


def collect_shards(jobs: list[EncodingJob], futures: list[PrefectFuture]) -> list[dict[str, Any]]:
    """Every shard's result, in submission order. Waits for all shards before raising the first
    error, so no worker still writes into a staging directory that is being removed."""
    label = "encode " + ", ".join(job.name for job in jobs)
    with ProgressReporter(label, total=len(futures), unit="parts", items="parts") as progress:
        for done, _ in enumerate(as_completed(futures), start=1):
            progress(done, done)
    return [future.result() for future in futures]


def finish_encoding(job: EncodingJob, staging: Path, shards: list[dict[str, Any]]) -> dict:
    """Summarise the job's shards and write the manifest: its staging directory is complete.

    `seconds` is the shards' summed encoding time (on whichever workers ran them)."""
    mine = [shard for shard in shards if shard["name"] == job.name]
    stats = encoding_lib.summarise(job.plan, [shard["counts"] for shard in mine])
    seconds = sum(shard["seconds"] for shard in mine)
    manifest = {
        **stats,
        "name": job.name,
        "corpus_id": job.corpus_id,
        "output": str(job.output),
        "seconds": round(seconds, 3),
        "tokens_per_s": round(stats["tokens"] / max(seconds, 1e-9), 1),
    }
    write_manifest(staging, manifest)
    return manifest


@task(name="record-tokenization", cache_policy=NO_CACHE, **OUTSIDE_WORLD)
def record_tokenization(
    spec: Spec, corpus_id: str, tokenizers: list[dict[str, Any]], shards: list[dict[str, Any]]
) -> str:
    """One MLflow run with each family's vocabulary and token statistics."""
    store = store_of(spec)
    for tok in tokenizers:  # the encoded shards are complete now: push them to the mirror
        store.sync(encoding_output(spec, corpus_id, tok["tokenizer_id"]))
    metrics: dict[str, float] = {}
    for tok, shard in zip(tokenizers, shards, strict=True):
        name = tok["name"]
        metrics[f"{name}/vocab_size"] = tok["vocab_size"]
        for key in (
            "tokens_train",
            "tokens_valid",
            "sentences",
            "sentences_per_doc",
            "tokens_per_word",
            "unk_rate_valid",
            "truncated_sentences",
            "tokens_per_s",
        ):
            metrics[f"{name}/{key}"] = shard[key]
    tags = {
        "corpus_id": corpus_id,
        **{f"tokenizer_id.{t['name']}": t["tokenizer_id"] for t in tokenizers},
        "cache_hit": str(all(s["cache_hit"] for s in shards)),
    }
    return record_stage(
        spec,
        stage="tokenize",
        run_name=f"tokenize/corpus-{corpus_id[:8]}",
        tags=tags,
        metrics=metrics,
        summary={"tokenizers": tokenizers, "shards": shards},
    )
