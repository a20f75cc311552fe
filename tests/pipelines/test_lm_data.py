"""lm_data: shards -> mmapped arrays, packed streams, deterministic blocks, unigram entropy."""

from __future__ import annotations

import importlib.util
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.data.batches import micro_examples
from pipelines.data.encoding import EncodingError
from pipelines.data.lm_data import (
    LMDataError,
    PackedBlocks,
    open_split,
    packed_stream,
    unigram_entropy,
    valid_blocks,
)

spec_ = importlib.util.spec_from_file_location(
    "tiny_lm_data", Path(__file__).with_name("tiny_lm.py")
)
tiny_lm = importlib.util.module_from_spec(spec_)
spec_.loader.exec_module(tiny_lm)

EOS = 0


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return tiny_lm.build_corpus(tmp_path_factory.mktemp("lm-corpus"))


def _docs(rows: list[dict], split: str) -> list[list[list[int]]]:
    """Documents (lists of sentences) of one split, in order, straight from the rows."""
    docs: list[list[list[int]]] = []
    previous = None
    for row in rows:
        if row["split"] != split:
            continue
        if row["doc_id"] != previous:
            docs.append([])
            previous = row["doc_id"]
        docs[-1].append(row["ids"])
    return docs


def test_split_arrays_match_the_shards_and_are_memory_mapped(corpus, tmp_path):
    for split in ("train", "valid"):
        data = open_split(corpus["tokens_dir"], split, tmp_path)
        docs = _docs(corpus["rows"], split)
        sentences = [s for doc in docs for s in doc]
        assert isinstance(data.ids, np.memmap) and data.ids.dtype == np.int32
        assert (data.n_docs, data.n_sentences) == (len(docs), len(sentences))
        assert data.n_tokens == sum(len(s) for s in sentences)
        assert data.max_id == max(max(s) for s in sentences if s)
        for i in (0, 1, len(sentences) // 2, len(sentences) - 1):
            assert data.sentence(i).tolist() == sentences[i]
        d = len(docs) // 2
        assert [data.sentence(i).tolist() for i in data.doc_sentences(d)] == docs[d]
        assert data.doc_of(data.doc_sentences(d)[-1]) == d


def test_cache_is_reused_and_rebuilt_when_the_shards_change(corpus, tmp_path):
    first = open_split(corpus["tokens_dir"], "train", tmp_path)
    stamp = (first.directory / "ids.npy").stat().st_mtime_ns
    assert (
        open_split(corpus["tokens_dir"], "train", tmp_path).directory / "ids.npy"
    ).stat().st_mtime_ns == stamp

    tokens = tmp_path / "tokens"
    tokens.mkdir()
    rows = [r for r in corpus["rows"] if r["split"] == "train"][:50]
    pq.write_table(pa.Table.from_pylist(rows, tiny_lm.SCHEMA), tokens / "part-00000.parquet")
    small = open_split(tokens, "train", tmp_path / "c2")
    assert small.n_sentences == 50
    pq.write_table(pa.Table.from_pylist(rows[:20], tiny_lm.SCHEMA), tokens / "part-00000.parquet")
    assert open_split(tokens, "train", tmp_path / "c2").n_sentences == 20  # not the stale cache


def test_packed_stream_joins_documents_with_eos(corpus, tmp_path):
    data = open_split(corpus["tokens_dir"], "valid", tmp_path)
    expected = [t for doc in _docs(corpus["rows"], "valid") for s in [*doc, [EOS]] for t in s]
    stream = packed_stream(data, EOS)
    assert stream.tolist() == expected
    assert isinstance(packed_stream(data, EOS), np.memmap)  # second call: the cached file


def test_blocks_are_a_pure_function_of_seed_and_example(corpus, tmp_path):
    stream = packed_stream(open_split(corpus["tokens_dir"], "train", tmp_path), EOS)
    a, b = PackedBlocks(stream, 16, seed=1), PackedBlocks(stream, 16, seed=1)
    examples = [5, 1000, 3 * a.n_blocks + 7, 2]  # any order, any epoch: no replay needed
    assert np.array_equal(a.batch(examples), b.batch(reversed(examples))[::-1])
    assert not np.array_equal(a.batch(range(8)), PackedBlocks(stream, 16, seed=2).batch(range(8)))
    assert a.batch(range(8)).shape == (8, 16) and a.batch(range(8)).dtype == np.int64


def test_one_epoch_covers_the_train_stream_once(corpus, tmp_path):
    stream = packed_stream(open_split(corpus["tokens_dir"], "train", tmp_path), EOS)
    blocks = PackedBlocks(stream, 16, seed=3)
    starts = []
    for g in range(blocks.n_blocks):
        block = blocks.block(g)
        start = block.__array_interface__["data"][0] - stream.__array_interface__["data"][0]
        starts.append(start // stream.itemsize)
    starts.sort()
    assert np.all(np.diff(starts) == 16)  # non-overlapping, contiguous: each token once
    assert starts[0] < 16 and starts[-1] + 16 <= len(stream)
    assert len(stream) - blocks.n_blocks * 16 < 2 * 16  # at most ~one block left out


def test_valid_blocks_come_from_the_valid_split_and_are_fixed(corpus, tmp_path):
    train = packed_stream(open_split(corpus["tokens_dir"], "train", tmp_path), EOS)
    valid = packed_stream(open_split(corpus["tokens_dir"], "valid", tmp_path), EOS)
    blocks = valid_blocks(valid, 16, 10)
    assert blocks.shape == (10, 16) and np.array_equal(blocks, valid_blocks(valid, 16, 10))
    text = valid.tobytes()
    assert all(b.astype(np.int32).tobytes() in text for b in blocks)
    train_text = train.tobytes()
    assert sum(b.astype(np.int32).tobytes() in train_text for b in blocks) == 0
    assert len(valid_blocks(valid, 16, 10**6)) == len(valid) // 16  # never more than exist


def test_gpt_batches_are_deterministic_per_step_and_compose_across_ranks(corpus, tmp_path):
    from pipelines.models.gpt import GPTObjective

    make = lambda: GPTObjective(corpus["tokens_dir"], 16, 0, EOS, 8, tmp_path)  # noqa: E731
    one, other = make(), make()
    step5 = one.train_batch(5, 0, 1, 0, 1)["input_ids"]
    assert step5.shape == (8, 16)
    assert (step5 == other.train_batch(5, 0, 1, 0, 1)["input_ids"]).all()
    assert not (step5 == one.train_batch(6, 0, 1, 0, 1)["input_ids"]).all()
    parts = {}
    for micro in range(2):
        for rank in range(2):
            batch = other.train_batch(5, micro, 2, rank, 2)["input_ids"]
            for row, i in zip(batch, micro_examples(8, micro, 2, rank, 2), strict=True):
                parts[i] = row
    assert all((parts[i] == step5[i]).all() for i in range(8))


def test_unigram_entropy_is_the_cross_entropy_of_train_counts_on_valid(corpus):
    vocab = corpus["vocab_size"]
    train = Counter(t for r in corpus["rows"] if r["split"] == "train" for t in r["ids"])
    valid = Counter(t for r in corpus["rows"] if r["split"] == "valid" for t in r["ids"])
    total = sum(train.values()) + vocab
    expected = -sum(n * math.log((train[t] + 1) / total) for t, n in valid.items())
    expected /= sum(valid.values())
    got = unigram_entropy(corpus["tokens_dir"], "valid", vocab)
    assert got == pytest.approx(expected, rel=1e-9)
    assert 2.0 < got < math.log(vocab)
    with_eos = unigram_entropy(corpus["tokens_dir"], "valid", vocab, eos_id=EOS)
    assert with_eos != got


def test_bad_inputs_fail_with_clear_errors(corpus, tmp_path):
    with pytest.raises(EncodingError, match=r"no part-\*.parquet token shards"):
        open_split(tmp_path / "nothing", "train", tmp_path / "c")
    with pytest.raises(LMDataError, match="unknown split 'test'"):
        open_split(corpus["tokens_dir"], "test", tmp_path / "c")
    data = open_split(corpus["tokens_dir"], "train", tmp_path / "c")
    with pytest.raises(LMDataError, match="does not fit the model with vocab_size 100"):
        data.check_vocab(100, "the model")
    with pytest.raises(LMDataError, match="fewer than one block of 4096"):
        PackedBlocks(packed_stream(data, EOS)[:5000], 4096, 0)
    with pytest.raises(LMDataError, match=r"token id .* >= vocab_size 50"):
        unigram_entropy(corpus["tokens_dir"], "valid", 50)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "part-00000.parquet").write_bytes(b"not parquet")
    with pytest.raises(LMDataError, match="not a readable token shard"):
        open_split(broken, "train", tmp_path / "c3")
