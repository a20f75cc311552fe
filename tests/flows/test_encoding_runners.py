"""Encoding on a real local Dask cluster writes the same bytes as the default thread runner."""

from __future__ import annotations

import filecmp
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.ingest import ingest
from flows.tokenization import tokenization
from pipelines.data.encoding import EncodingError
from pretrainlab.config import Spec, spec_from_dict
from storage.atomic import MANIFEST
from storage.layout import Layout
from tests.flows.tiny_specs import tiny_spec_dict

pytestmark = pytest.mark.usefixtures("prefect_harness")


def spec_with(tmp_path: Path, **compute: object) -> Spec:
    data = tiny_spec_dict(tmp_path, "dasktest", [{"dataset": "lee-news", "limit": 120}])
    data["corpus"]["rows_per_shard"] = 30  # 4 corpus parts -> 4 shards per family
    data["pretrain"]["families"] = ["word2vec", "gpt"]  # the word and gpt tokenizers
    data["compute"] = compute
    return spec_from_dict(data)


def test_dask_cluster_encodes_byte_identical_shards(tmp_path: Path) -> None:
    spec = spec_with(tmp_path)
    corpus_id = ingest(spec)["corpus_id"]
    first = tokenization(spec, corpus_id)
    assert not first["cache_hit"]

    # Keep the thread runner's shards aside; the tokenizers stay (trained once, shared).
    reference = {}
    for name, family in first["families"].items():
        tokens = Path(family["tokens"])
        reference[name] = tmp_path / f"reference-{name}"
        shutil.move(tokens, reference[name])

    dask_spec = spec_with(tmp_path, runner="dask", dask={"n_workers": 2})
    second = tokenization(dask_spec, corpus_id)
    assert not second["cache_hit"]
    for name, family in second["families"].items():
        assert family["tokenizer_id"] == first["families"][name]["tokenizer_id"]
        tokens = Path(family["tokens"])
        parts = sorted(p.name for p in tokens.glob("part-*.parquet"))
        assert parts == [f"part-{i:05d}.parquet" for i in range(4)]
        assert parts == sorted(p.name for p in reference[name].glob("part-*.parquet"))
        _, mismatch, errors = filecmp.cmpfiles(reference[name], tokens, parts, shallow=False)
        assert (mismatch, errors) == ([], []), f"{name}: shards differ from the thread runner's"
        assert (tokens / MANIFEST).exists()

    # Unchanged re-run: a cache hit, no cluster started.
    assert tokenization(dask_spec, corpus_id)["cache_hit"]


def test_a_bad_shard_fails_the_stage_and_leaves_no_output(tmp_path: Path) -> None:
    spec = spec_with(tmp_path, threads=2)
    corpus_id = ingest(spec)["corpus_id"]
    for family in tokenization(spec, corpus_id)["families"].values():
        shutil.rmtree(family["tokens"])  # encode again, with the tokenizers already trained
    bad = Layout.at(spec.store).corpus(corpus_id) / "part-00002.parquet"
    pq.write_table(pa.table({"doc_id": ["d"], "split": ["train"]}), bad)  # no `text` column
    with pytest.raises(EncodingError, match=r"part-00002\.parquet: missing column\(s\) \['text'\]"):
        tokenization(spec, corpus_id)
    tokens = Layout.at(spec.store).store / "tokens"
    assert not list(tokens.glob("*/*/part-*.parquet"))  # nothing half-written is trusted
    assert not list(tokens.glob("*/.*tmp-*"))  # every shard finished before staging was removed
