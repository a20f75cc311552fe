"""Tokenization tasks: train (or reuse) one tokenizer per family, encode the corpus with it.

A tokenizer's id is the hash of its tokenizer.json (training is not reproducible bit for bit),
so the cache is two-level: an index maps the training inputs (corpus, settings, code) to the id
of the tokenizer they produced; the encoded shards live under that id.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

import pipelines.encoding as encoding_lib
import pipelines.sentences as sentences_lib
import pipelines.tokenizer_training as tokenizer_lib
from pretrainlab.config import Spec
from storage.atomic import atomic_dir, read_manifest, write_json, write_manifest
from storage.hashing import code_hash, stable_hash
from storage.layout import Layout
from tasks.progress import ProgressReporter, stage_logger
from tasks.tracking import record_stage

# Model family -> the tokenizer section of the spec it uses (word2vec and ELMo share one).
TOKENIZER_OF_FAMILY = {"bert": "bert", "gpt": "gpt", "word2vec": "word", "elmo": "word"}


def tokenizer_names(spec: Spec) -> list[str]:
    """The tokenizers the spec's families need, in a stable order."""
    wanted = {TOKENIZER_OF_FAMILY[family] for family in spec.pretrain.families}
    return [name for name in ("bert", "gpt", "word") if name in wanted]


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
    settings = getattr(spec.tokenizers, name).model_dump(mode="json")
    return stable_hash(
        {"corpus_id": corpus_id, "tokenizer": settings, "code": code_hash([tokenizer_lib])}
    )


def _is_intact(directory: Path) -> bool:
    try:
        tokenizer_lib.read_meta(directory)
    except tokenizer_lib.TokenizerError:
        return False
    return read_manifest(directory) is not None


def _indexed_tokenizer(layout: Layout, training_key: str) -> str | None:
    """The id the index records for these inputs, if that tokenizer is still intact."""
    try:
        tokenizer_id = json.loads(layout.tokenizer_index(training_key).read_text())["tokenizer_id"]
    except (OSError, ValueError, KeyError):
        return None
    return tokenizer_id if _is_intact(layout.tokenizer(tokenizer_id)) else None


def plan_tokenizer(spec: Spec, name: str, corpus_id: str) -> TokenizerPlan:
    key = _training_key(spec, name, corpus_id)
    return TokenizerPlan(name, corpus_id, key, _indexed_tokenizer(Layout.at(spec.store), key))


def encoding_id(spec: Spec, corpus_id: str) -> str:
    """Identity of encoded shards under a tokenizer: corpus, cut length and the encoding code."""
    return stable_hash(
        {
            "corpus_id": corpus_id,
            "max_sentence_tokens": spec.tokenizers.max_sentence_tokens,
            "code": code_hash([encoding_lib, sentences_lib, tokenizer_lib]),
        }
    )


def _quarantine_if_corrupt(directory: Path) -> None:
    """A tokenizer dir whose content no longer matches its id is moved aside, never reused."""
    if directory.exists() and not _is_intact(directory):
        target = directory.with_name(f".corrupt-{directory.name}-{int(time.time())}")
        shutil.move(directory, target)
        stage_logger().warning(f"tokenizer {directory} failed its hash check; moved to {target}")


@task(name="train-tokenizer", task_run_name="train-tokenizer/{name}", cache_policy=NO_CACHE)
def train_tokenizer(spec: Spec, name: str, corpus_id: str) -> dict[str, Any]:
    """Reuse the tokenizer these inputs produced before, or train one on the train split."""
    layout = Layout.at(spec.store)
    plan = plan_tokenizer(spec, name, corpus_id)
    if plan.tokenizer_id is not None:
        stage_logger().info(f"{name} tokenizer {plan.tokenizer_id} is cached: not retrained")
        meta = tokenizer_lib.read_meta(layout.tokenizer(plan.tokenizer_id))
        return {
            "name": name,
            "tokenizer_id": plan.tokenizer_id,
            "cache_hit": True,
            "vocab_size": meta["vocab_size"],
            "seconds": 0.0,
        }
    index = layout.tokenizer_index(plan.training_key)
    if index.exists():  # the index names a tokenizer that is gone or corrupt
        _quarantine_if_corrupt(layout.tokenizer(json.loads(index.read_text())["tokenizer_id"]))
    started = time.perf_counter()
    settings = getattr(spec.tokenizers, name)
    trained = tokenizer_lib.train_tokenizer(
        settings, tokenizer_lib.iter_train_texts(layout.corpus(corpus_id))
    )
    tokenizer_id = tokenizer_lib.tokenizer_id(trained)
    target = layout.tokenizer(tokenizer_id)
    _quarantine_if_corrupt(target)
    if not target.exists():
        with atomic_dir(target) as tmp:
            tokenizer_lib.save_tokenizer(trained, tmp)
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


@task(name="encode-corpus", task_run_name="encode-corpus/{name}", cache_policy=NO_CACHE)
def encode_corpus(spec: Spec, name: str, corpus_id: str, tokenizer_id: str) -> dict[str, Any]:
    """Sentence-split and encode the corpus into token shards, or reuse complete ones."""
    layout = Layout.at(spec.store)
    out = layout.tokens(tokenizer_id, encoding_id(spec, corpus_id))
    cached = read_manifest(out)
    if cached is not None:
        stage_logger().info(f"{name} token shards are cached at {out}")
        return {**cached, "cache_hit": True}
    corpus_dir = layout.corpus(corpus_id)
    parts = len(tokenizer_lib.corpus_parts(corpus_dir))
    started = time.perf_counter()
    with (
        atomic_dir(out) as tmp,
        ProgressReporter(f"encode {name}", total=parts, unit="parts", items="parts") as progress,
    ):
        stats = encoding_lib.encode_corpus(
            corpus_dir,
            layout.tokenizer(tokenizer_id),
            tmp,
            name,
            spec.tokenizers.max_sentence_tokens,
            progress=lambda done, total: progress(done, done),
        )
        seconds = time.perf_counter() - started
        manifest = {
            **stats,
            "name": name,
            "corpus_id": corpus_id,
            "output": str(out),
            "seconds": round(seconds, 3),
            "tokens_per_s": round(stats["tokens"] / max(seconds, 1e-9), 1),
        }
        write_manifest(tmp, manifest)
    return {**manifest, "cache_hit": False}


@task(name="record-tokenization", cache_policy=NO_CACHE)
def record_tokenization(
    spec: Spec, corpus_id: str, tokenizers: list[dict[str, Any]], shards: list[dict[str, Any]]
) -> str:
    """One MLflow run with each family's vocabulary and token statistics."""
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
