"""Pretrain flow: the spec's families, one at a time (a fair race on shared cores)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from pretrainlab.config import Spec
from tasks.pretrain import pretrain_family
from tasks.tokenization import TOKENIZER_OF_FAMILY
from tasks.tracking import publish_pretrain_artifacts


@flow(name="pretrain", flow_run_name="pretrain/corpus-{corpus_id:.8}")
def pretrain(spec: Spec, corpus_id: str, tokens: dict[str, dict[str, str]]) -> dict[str, Any]:
    """Train, resume or reuse each family on its tokenizer's shards; register every version."""
    models = {}
    for family in spec.pretrain.families:
        shards = tokens[TOKENIZER_OF_FAMILY[family]]
        models[family] = pretrain_family(
            spec, family, corpus_id, shards["tokenizer_id"], shards["tokens"]
        )
        publish_pretrain_artifacts(spec, models[family].as_dict())
    return {
        "families": {family: model.as_dict() for family, model in models.items()},
        "cache_hit": all(m.cache_hit for m in models.values()),
        "output": ", ".join(f"{m.registered_name} v{m.version}" for m in models.values()),
    }
