"""The end-to-end pipeline: a readable list of stage subflows, stopping at `until`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from prefect import flow

from flows.ingest import ingest
from flows.tokenization import tokenization
from pretrainlab.config import Spec
from storage.atomic import is_complete
from storage.layout import Layout
from tasks.ingest import plan_corpus_plain
from tasks.tokenization import encoding_id, plan_tokenizer, tokenizer_names

Stage = Literal["ingest", "tokenize"]
STAGES: tuple[str, ...] = ("ingest", "tokenize")


@dataclass(frozen=True)
class StageStatus:
    stage: str
    output: str
    cached: bool
    detail: str


def _tokenize_status(spec: Spec, name: str, corpus_id: str, corpus_cached: bool) -> StageStatus:
    tokenizer = plan_tokenizer(spec, name, corpus_id) if corpus_cached else None
    if tokenizer is None or tokenizer.tokenizer_id is None:
        return StageStatus(f"tokenize/{name}", "tokenizers/<trained>", False, "train + encode")
    shards = Layout.at(spec.store).tokens(tokenizer.tokenizer_id, encoding_id(spec, corpus_id))
    detail = f"tokenizer {tokenizer.tokenizer_id} cached" + (
        "" if is_complete(shards) else ", shards to encode"
    )
    return StageStatus(f"tokenize/{name}", str(shards), is_complete(shards), detail)


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
    if STAGES.index(until) >= STAGES.index("tokenize"):
        statuses += [
            _tokenize_status(spec, name, corpus.corpus_id, corpus.cached)
            for name in tokenizer_names(spec)
        ]
    return statuses


@flow(name="pipeline", flow_run_name="pipeline/{spec.experiment}")
def pipeline(spec: Spec, until: Stage = STAGES[-1]) -> dict[str, Any]:
    """Run every stage up to and including `until`; each stage reuses its cached output."""
    results: dict[str, Any] = {"ingest": ingest(spec)}
    if until == "ingest":
        return results
    results["tokenize"] = tokenization(spec, results["ingest"]["corpus_id"])
    return results
