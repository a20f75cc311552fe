"""Tokenization flow: per family a tokenizer trained on the train split, and token shards.

Tokenizers are trained here, once each. Encoding is one task per (family, corpus part), mapped
on the task runner the spec names (`compute.runner`: a thread pool, a Dask or a Ray cluster);
the parts are written to a staging directory that becomes the output only when complete.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, unmapped

from pretrainlab.config import Spec
from tasks.progress import stage_logger
from tasks.runners import describe, task_runner
from tasks.tokenization import (
    cached_encoding,
    collect_shards,
    encode_shard,
    encoding_staging,
    finish_encoding,
    plan_encoding,
    record_tokenization,
    tokenizer_names,
    train_tokenizer,
)


@flow(name="encode", flow_run_name="encode/corpus-{corpus_id:.8}")
def encode(spec: Spec, corpus_id: str, tokenizer_ids: dict[str, str]) -> dict[str, Any]:
    """Encode every (family, corpus part) as its own task; one manifest per family at the end."""
    jobs = [plan_encoding(spec, name, corpus_id, tid) for name, tid in tokenizer_ids.items()]
    with encoding_staging(jobs) as staging:
        futures = []
        for job, directory in zip(jobs, staging, strict=True):
            futures += encode_shard.map(
                plan=unmapped(job.plan),
                index=range(job.plan.parts),
                staging=unmapped(str(directory)),
                name=unmapped(job.name),
            )
        shards = collect_shards(jobs, futures)
        manifests = [
            finish_encoding(job, directory, shards)
            for job, directory in zip(jobs, staging, strict=True)
        ]
    return {m["name"]: {**m, "cache_hit": False} for m in manifests}


@flow(name="tokenize", flow_run_name="tokenize/corpus-{corpus_id}")
def tokenization(spec: Spec, corpus_id: str) -> dict[str, Any]:
    """Train or reuse each family's tokenizer, then encode the corpus with it."""
    runner = task_runner(spec.compute)  # an unreachable cluster fails here, before training
    tokenizers = [train_tokenizer(spec, name, corpus_id) for name in tokenizer_names(spec)]
    shards = {
        tok["name"]: cached_encoding(spec, tok["name"], corpus_id, tok["tokenizer_id"])
        for tok in tokenizers
    }
    missing = {t["name"]: t["tokenizer_id"] for t in tokenizers if shards[t["name"]] is None}
    if missing:  # only then a cluster is started: a cache hit costs no runner
        stage_logger().info(f"encoding {', '.join(missing)} on {describe(spec.compute)}")
        shards |= encode.with_options(task_runner=runner)(spec, corpus_id, missing)
    ordered = [shards[t["name"]] for t in tokenizers]
    run_id = record_tokenization(spec, corpus_id, tokenizers, ordered)
    return {
        "corpus_id": corpus_id,
        "mlflow_run_id": run_id,
        "cache_hit": all(s["cache_hit"] for s in ordered),
        "output": ", ".join(s["output"] for s in ordered),
        "families": {
            t["name"]: {"tokenizer_id": t["tokenizer_id"], "tokens": s["output"]}
            for t, s in zip(tokenizers, ordered, strict=True)
        },
    }
