"""Pretrain flow: the spec's families, then their variants, one at a time (a fair race on
shared cores)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from pretrainlab.config import Spec
from tasks.pretrain import model_spec, pretrain_family
from tasks.tokenization import TOKENIZER_OF_FAMILY
from tasks.tracking import publish_pretrain_artifacts


@flow(name="pretrain", flow_run_name="pretrain/corpus-{corpus_id:.8}")
def pretrain(spec: Spec, corpus_id: str, tokens: dict[str, dict[str, str]]) -> dict[str, Any]:
    """Train, resume or reuse each model on its family's tokenizer shards; register every
    version. A variant trains under its own name with its family's section overridden."""
    models = {}
    for name, family in spec.pretrain.models():
        shards = tokens[TOKENIZER_OF_FAMILY[family]]
        models[name] = pretrain_family(
            model_spec(spec, name), family, corpus_id, shards["tokenizer_id"], shards["tokens"],
            name,
        )
        publish_pretrain_artifacts(spec, models[name].as_dict())
    return {
        "families": {name: model.as_dict() for name, model in models.items()},
        "cache_hit": all(m.cache_hit for m in models.values()),
        "output": ", ".join(f"{m.registered_name} v{m.version}" for m in models.values()),
    }
