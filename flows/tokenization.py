"""Tokenization flow: per family a tokenizer trained on the train split, and token shards."""

from __future__ import annotations

from typing import Any

from prefect import flow

from pretrainlab.config import Spec
from tasks.tokenization import encode_corpus, record_tokenization, tokenizer_names, train_tokenizer


@flow(name="tokenize", flow_run_name="tokenize/corpus-{corpus_id}")
def tokenization(spec: Spec, corpus_id: str) -> dict[str, Any]:
    """Train or reuse each family's tokenizer, then encode the corpus with it."""
    tokenizers, shards = [], []
    for name in tokenizer_names(spec):
        tokenizer = train_tokenizer(spec, name, corpus_id)
        tokenizers.append(tokenizer)
        shards.append(encode_corpus(spec, name, corpus_id, tokenizer["tokenizer_id"]))
    run_id = record_tokenization(spec, corpus_id, tokenizers, shards)
    return {
        "corpus_id": corpus_id,
        "mlflow_run_id": run_id,
        "cache_hit": all(s["cache_hit"] for s in shards),
        "output": ", ".join(s["output"] for s in shards),
        "families": {
            t["name"]: {"tokenizer_id": t["tokenizer_id"], "tokens": s["output"]}
            for t, s in zip(tokenizers, shards, strict=True)
        },
    }
