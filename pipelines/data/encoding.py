"""Encode a corpus into token shards: one Parquet row per sentence, so BERT's next-sentence
pairs and GPT's streams are read straight from disk.

Per corpus part one output part (`part-NNNNN.parquet`, NNNNN = the input's position in name
order), written atomically and deterministically: same corpus + same tokenizer = same bytes,
whatever `workers` is. Specials are not added here (the model stages add [CLS]/[SEP] or
<|endoftext|> as they build their inputs); sentences longer than `max_sentence_tokens` are cut,
sentences with no tokens are dropped, and `sent_idx` counts the kept sentences of a document
from 0, so `sent_idx + 1` is always the real next sentence. Each part's schema metadata records
the tokenizer id, so every shard names the tokenizer that made it.
"""

from __future__ import annotations

import functools
import itertools
import multiprocessing
import os
import re
import socket
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tokenizers import Tokenizer

from pipelines.data.sentences import CJK_CHARS, CJK_RE, split_sentences
from pipelines.data.tokenizer_training import (
    KINDS,
    TokenizerMismatchError,
    corpus_parts,
    load_raw_tokenizer,
    resolve_kind,
)
from pretrainlab.config import PretrainlabError
from storage.atomic import atomic_path

TOKENS_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("sent_idx", pa.int32()),
        ("split", pa.string()),
        ("ids", pa.list_(pa.int32())),
    ]
)
TOKENIZER_ID_KEY = b"pretrainlab.tokenizer_id"
SPLITS = ("train", "valid")
READ_ROWS = 256  # documents per record batch read
ENCODE_SENTENCES = 2048  # sentences per encode_batch call: enough work for its thread pool
ROW_GROUP_ROWS = 65_536  # sentences per Parquet row group
# One process: encode_batch already runs on every core (Rust threads). Measured on 2 cores
# (benchmarks/tokenization.py): 2 worker processes cost ~2x the CPU of 1 (each spawned worker
# re-imports the caller's main module) and were slower. Processes pay on many cores, where the
# single Python thread splitting sentences (~15-30 MB/s) would become the bottleneck.
DEFAULT_WORKERS = 1
_WORD = re.compile(f"[{CJK_CHARS}]|[^\\s{CJK_CHARS}]+")

Progress = Callable[[int, int], None]


class EncodingError(PretrainlabError, ValueError):
    """Input the encoder cannot use; the message names the file and the fix."""


def count_words(text: str) -> int:
    """Whitespace-separated words, each CJK character counting as one word."""
    if CJK_RE.search(text) is None:
        return len(text.split())
    return len(_WORD.findall(text))


@dataclass
class _Pending:
    """Documents waiting to be encoded; a document is never split across two batches."""

    doc_ids: list[str] = field(default_factory=list)
    doc_valid: list[bool] = field(default_factory=list)
    sentences: list[str] = field(default_factory=list)
    sentence_doc: list[int] = field(default_factory=list)

    def add(self, doc_id: str, valid: bool, sentences: list[str]) -> None:
        self.sentence_doc.extend([len(self.doc_ids)] * len(sentences))
        self.doc_ids.append(doc_id)
        self.doc_valid.append(valid)
        self.sentences.extend(sentences)


@dataclass(frozen=True)
class _Settings:
    tokenizer_id: str
    unk_id: int | None
    max_tokens: int


def _encode_pending(
    tok: Tokenizer, pending: _Pending, settings: _Settings, counts: Counter
) -> pa.Table:
    """Encode a batch of sentences into rows; count tokens, cuts and unknowns on the way."""
    ids = [e.ids for e in tok.encode_batch_fast(pending.sentences, add_special_tokens=False)]
    lens = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    cut = np.minimum(lens, settings.max_tokens)
    keep = np.flatnonzero(cut > 0)
    if (lens > settings.max_tokens).any():
        ids = [x[: settings.max_tokens] for x in ids]
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=int(cut.sum()))
    offsets = np.zeros(len(keep) + 1, dtype=np.int32)
    np.cumsum(cut[keep], out=offsets[1:])

    doc = np.asarray(pending.sentence_doc, dtype=np.int64)[keep]
    valid = np.asarray(pending.doc_valid, dtype=bool)[doc]
    row = np.arange(len(doc))
    first_of_doc = np.r_[True, doc[1:] != doc[:-1]] if len(doc) else np.zeros(0, dtype=bool)
    sent_idx = row - np.maximum.accumulate(np.where(first_of_doc, row, 0))

    counts["sentences_valid"] += int(valid.sum())
    counts["sentences_train"] += int(len(doc) - valid.sum())
    counts["tokens_valid"] += int(cut[keep][valid].sum())
    counts["tokens_train"] += int(cut[keep][~valid].sum())
    counts["tokens_uncut"] += int(lens.sum())
    counts["truncated_sentences"] += int((lens > settings.max_tokens).sum())
    if settings.unk_id is not None:
        token_valid = np.repeat(valid, cut[keep])
        counts["unk_valid"] += int(np.count_nonzero(flat[token_valid] == settings.unk_id))

    doc_ids = pa.array(pending.doc_ids, type=pa.string()).take(pa.array(doc))
    split = pa.array(np.where(valid, "valid", "train"), type=pa.string())
    lists = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=pa.int32()))
    return pa.Table.from_arrays(
        [doc_ids, pa.array(sent_idx, type=pa.int32()), split, lists], schema=TOKENS_SCHEMA
    )


def _check_columns(path: Path, handle: pq.ParquetFile) -> None:
    missing = {"doc_id", "split", "text"} - set(handle.schema_arrow.names)
    if missing:
        raise EncodingError(
            f"{path}: missing column(s) {sorted(missing)} (has {handle.schema_arrow.names}); "
            "corpus parts need doc_id, split and text: re-run the ingest stage"
        )


def _read_documents(src: Path, counts: Counter) -> Iterator[_Pending]:
    """Read a corpus part a record batch at a time; yield its documents split into sentences,
    about ENCODE_SENTENCES sentences per batch (a document is never split across batches)."""
    handle = pq.ParquetFile(src)
    _check_columns(src, handle)
    pending = _Pending()
    for batch in handle.iter_batches(batch_size=READ_ROWS, columns=["doc_id", "split", "text"]):
        columns = (batch.column(name).to_pylist() for name in ("doc_id", "split", "text"))
        for doc_id, split, text in zip(*columns, strict=True):
            if split not in SPLITS:
                raise EncodingError(
                    f"{src}: document {doc_id}: split {split!r}, expected one of {SPLITS}; "
                    "re-run the ingest stage"
                )
            text = text or ""
            counts[f"docs_{split}"] += 1
            counts["words"] += count_words(text)
            pending.add(doc_id, split == "valid", split_sentences(text))
            if len(pending.sentences) >= ENCODE_SENTENCES:
                yield pending
                pending = _Pending()
    if pending.doc_ids:
        yield pending


def _encode_part(tok: Tokenizer, src: Path, dst: Path, settings: _Settings) -> Counter:
    """Encode one corpus part into one token part (bounded memory); return its counts."""
    counts: Counter = Counter()
    schema = TOKENS_SCHEMA.with_metadata({TOKENIZER_ID_KEY: settings.tokenizer_id.encode()})
    with atomic_path(dst) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        tables, rows = [], 0
        for pending in _read_documents(src, counts):
            tables.append(_encode_pending(tok, pending, settings, counts))
            rows += tables[-1].num_rows
            if rows >= ROW_GROUP_ROWS:
                writer.write_table(pa.concat_tables(tables), row_group_size=rows)
                tables, rows = [], 0
        if tables:
            table = pa.concat_tables(tables)
            writer.write_table(table, row_group_size=max(1, table.num_rows))
    return counts


@dataclass(frozen=True)
class EncodingPlan:
    """Everything one part's encoding needs, small and picklable: a Prefect task on a Dask or
    Ray worker gets this, loads the tokenizer once per process and encodes its part alone."""

    tokenizer_dir: str
    kind: str
    settings: _Settings
    sources: tuple[str, ...]  # corpus parts in name order; part i -> part_name(i)

    @property
    def parts(self) -> int:
        return len(self.sources)


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def plan_encoding(
    corpus_dir: str | Path, tokenizer_dir: str | Path, family_kind: str, max_sentence_tokens: int
) -> EncodingPlan:
    """Check the tokenizer fits `family_kind` and list the corpus parts to encode."""
    kind = resolve_kind(family_kind)
    tok, meta = load_raw_tokenizer(tokenizer_dir)
    if meta["kind"] != kind:
        raise TokenizerMismatchError(
            f"{tokenizer_dir}: tokenizer {meta['tokenizer_id']} is {meta['kind']}, but "
            f"{family_kind!r} needs a {kind} tokenizer"
        )
    if max_sentence_tokens < 1:
        raise EncodingError(f"max_sentence_tokens must be >= 1, got {max_sentence_tokens}")
    unk = KINDS[kind].unk
    settings = _Settings(
        meta["tokenizer_id"], tok.token_to_id(unk) if unk else None, max_sentence_tokens
    )
    sources = tuple(str(path) for path in corpus_parts(corpus_dir))
    return EncodingPlan(str(tokenizer_dir), kind, settings, sources)


@functools.lru_cache(maxsize=4)
def _process_tokenizer(tokenizer_dir: str, tokenizer_id: str) -> Tokenizer:
    """One verified tokenizer per process and id: shards encoded in the same worker share it."""
    tok, meta = load_raw_tokenizer(tokenizer_dir)
    if meta["tokenizer_id"] != tokenizer_id:
        raise TokenizerMismatchError(
            f"{tokenizer_dir}: holds tokenizer {meta['tokenizer_id']}, the plan needs "
            f"{tokenizer_id}; re-run tokenization"
        )
    return tok


def encode_part(plan: EncodingPlan, index: int, out_dir: str | Path) -> dict[str, int]:
    """Encode corpus part `index` of the plan into `out_dir/part_name(index)`; return its counts.

    The same bytes as the sequential encoder, in any process: a part depends only on its input.
    """
    src = Path(plan.sources[index])
    if not src.exists():
        raise EncodingError(
            f"{src}: corpus part not found on host {socket.gethostname()}; every worker of a "
            "Dask/Ray cluster must see the store at the same path (a shared filesystem)"
        )
    tok = _process_tokenizer(plan.tokenizer_dir, plan.settings.tokenizer_id)
    return dict(_encode_part(tok, src, Path(out_dir) / part_name(index), plan.settings))


def summarise(plan: EncodingPlan, counts: list[Mapping[str, int]]) -> dict[str, Any]:
    """The corpus statistics from every part's counts (in any order)."""
    return _summarise(sum(map(Counter, counts), Counter()), plan.settings, plan.kind, plan.parts)


# Process-pool workers load the (verified) tokenizer once, in their initializer.
_WORKER: dict[str, Any] = {}


def _init_worker(tokenizer_dir: str, threads: int) -> None:
    os.environ["RAYON_NUM_THREADS"] = str(threads)  # read when tokenizers first goes parallel
    _WORKER["tok"] = load_raw_tokenizer(tokenizer_dir)[0]


def _encode_in_worker(src: Path, dst: Path, settings: _Settings) -> Counter:
    return _encode_part(_WORKER["tok"], src, dst, settings)


def encode_corpus(
    corpus_dir: str | Path,
    tokenizer_dir: str | Path,
    out_dir: str | Path,
    family_kind: str,
    max_sentence_tokens: int,
    workers: int = DEFAULT_WORKERS,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Split every document into sentences, encode them, write token parts; return statistics.

    `family_kind` is a model family (bert, gpt, word, word2vec, elmo) or a tokenizer kind; it
    must match the tokenizer's kind. `workers > 1` encodes parts in a process pool: spawned
    (forking a process that already ran tokenizers' thread pool disables it), so the caller's
    main module must be import-safe (`if __name__ == "__main__":`); each worker gets
    cpu_count // workers tokenizer threads. `progress(done_parts, total_parts)` is called
    after each part, in order.
    """
    plan = plan_encoding(corpus_dir, tokenizer_dir, family_kind, max_sentence_tokens)
    settings, sources = plan.settings, [Path(src) for src in plan.sources]
    out = Path(out_dir)
    targets = [out / part_name(i) for i in range(len(sources))]
    report = progress or (lambda done, total: None)
    results: list[Counter] = []
    if workers <= 1 or len(sources) == 1:
        tok = _process_tokenizer(plan.tokenizer_dir, settings.tokenizer_id)
        for src, dst in zip(sources, targets, strict=True):
            results.append(_encode_part(tok, src, dst, settings))
            report(len(results), len(sources))
    else:
        n = min(workers, len(sources))
        threads = max(1, (os.cpu_count() or 1) // n)
        with ProcessPoolExecutor(
            n,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(str(tokenizer_dir), threads),
        ) as pool:
            futures = [
                pool.submit(_encode_in_worker, src, dst, settings)
                for src, dst in zip(sources, targets, strict=True)
            ]
            try:
                for future in futures:
                    results.append(future.result())
                    report(len(results), len(sources))
            except BaseException:
                pool.shutdown(cancel_futures=True)  # a bad part stops the run, not only itself
                raise
    return summarise(plan, results)


def _summarise(c: Counter, settings: _Settings, kind: str, parts: int) -> dict[str, Any]:
    docs = c["docs_train"] + c["docs_valid"]
    sentences = c["sentences_train"] + c["sentences_valid"]
    return {
        "tokenizer_id": settings.tokenizer_id,
        "kind": kind,
        "parts": parts,
        "max_sentence_tokens": settings.max_tokens,
        "docs": docs,
        "docs_train": c["docs_train"],
        "docs_valid": c["docs_valid"],
        "sentences": sentences,
        "sentences_train": c["sentences_train"],
        "sentences_valid": c["sentences_valid"],
        "tokens": c["tokens_train"] + c["tokens_valid"],
        "tokens_train": c["tokens_train"],
        "tokens_valid": c["tokens_valid"],
        "truncated_sentences": c["truncated_sentences"],
        "words": c["words"],
        "sentences_per_doc": sentences / docs if docs else 0.0,
        # before cutting: a property of the tokenizer, not of max_sentence_tokens
        "tokens_per_word": c["tokens_uncut"] / c["words"] if c["words"] else 0.0,
        "unk_rate_valid": c["unk_valid"] / c["tokens_valid"] if c["tokens_valid"] else 0.0,
    }


# --------------------------------------------------------------------------- reading shards


def token_parts(tokens_dir: str | Path) -> list[Path]:
    parts = sorted(Path(tokens_dir).glob("part-*.parquet"))
    if not parts:
        raise EncodingError(f"{tokens_dir}: no part-*.parquet token shards (run tokenization)")
    return parts


def shards_tokenizer_id(tokens_dir: str | Path) -> str:
    """The tokenizer id every shard of `tokens_dir` records (they must agree)."""
    ids = set()
    for path in token_parts(tokens_dir):
        metadata = pq.read_schema(path).metadata or {}
        ids.add(metadata.get(TOKENIZER_ID_KEY, b"").decode())
    if len(ids) != 1 or "" in ids:
        raise EncodingError(
            f"{tokens_dir}: shards record tokenizer ids {sorted(ids)}; expected exactly one: "
            "delete the directory and re-run tokenization"
        )
    return ids.pop()


def read_token_ids(tokens_dir: str | Path, split: str) -> Iterator[np.ndarray]:
    """Yield each sentence's ids (int32) of one split, in shard order (doc, then sent_idx)."""
    if split not in SPLITS:
        raise EncodingError(f"split {split!r}: expected one of {SPLITS}")
    for path in token_parts(tokens_dir):
        for batch in pq.ParquetFile(path).iter_batches(columns=["split", "ids"]):
            lists = batch.column("ids").filter(pc.equal(batch.column("split"), split))
            if len(lists) == 0:
                continue
            values = pc.list_flatten(lists).to_numpy()
            offsets = lists.offsets.to_numpy()
            offsets = offsets - offsets[0]
            for i in range(len(lists)):
                yield values[offsets[i] : offsets[i + 1]]
