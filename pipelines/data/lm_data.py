"""Token shards as flat memory-mapped arrays: what the torch language models read.

The shards (`part-*.parquet`: doc_id, sent_idx, split, ids; one row per sentence in document
order) are converted once per split into three .npy files in a cache directory next to the
model (`ids` int32, sentence `offsets` int64, `doc_starts` int64 = first sentence of each
document) and opened with mmap: memory stays bounded whatever the corpus size, and any
sentence, document or block is a slice.

Batches are pure functions of (seed, step, example): `PackedBlocks` visits the blocks of a
packed stream epoch by epoch in a seeded order, so a resumed run asks for step s and gets the
same batch without replaying steps 1..s-1.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.data.encoding import token_parts
from pretrainlab.config import PretrainlabError
from storage.atomic import atomic_dir, atomic_path, read_manifest, write_manifest

SPLITS = ("train", "valid")
READ_ROWS = 16_384  # Parquet rows per read: bounded memory on any corpus size
PACK_DOCS = 65_536  # documents copied at a time when building a packed stream
CACHE_VERSION = 1


class LMDataError(PretrainlabError, ValueError):
    """Token shards that cannot feed a language model; the message says what to change."""


def _iter_split(files: list[Path], split: str, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """Record batches of one split, in file and row order."""
    for path in files:
        try:
            reader = pq.ParquetFile(path)
            batches = reader.iter_batches(batch_size=READ_ROWS, columns=[*columns, "split"])
            for batch in batches:
                keep = pc.equal(batch.column("split"), split)
                yield batch.filter(keep)
        except (pa.ArrowInvalid, OSError, KeyError) as error:
            raise LMDataError(
                f"{path}: not a readable token shard with columns {[*columns, 'split']} ({error}); "
                "delete the tokens directory and re-run tokenization"
            ) from None


@dataclass(frozen=True)
class TokenSplit:
    """One split of a token corpus as memory-mapped arrays."""

    directory: Path
    ids: np.ndarray  # (n_tokens,) int32, every sentence back to back
    offsets: np.ndarray  # (n_sentences + 1,) int64: sentence i = ids[offsets[i]:offsets[i+1]]
    doc_starts: np.ndarray  # (n_docs + 1,) int64: doc d = sentences doc_starts[d]..[d+1]-1
    max_id: int  # largest token id (-1 when empty): checked against the model's vocabulary

    @property
    def n_tokens(self) -> int:
        return len(self.ids)

    @property
    def n_sentences(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_docs(self) -> int:
        return len(self.doc_starts) - 1

    def sentence(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    def doc_sentences(self, d: int) -> range:
        return range(int(self.doc_starts[d]), int(self.doc_starts[d + 1]))

    def doc_of(self, i: int) -> int:
        """The document holding sentence i."""
        return int(np.searchsorted(self.doc_starts, i, side="right")) - 1

    def check_vocab(self, vocab_size: int, what: str) -> None:
        """Fail early when the shards hold ids the model's embedding table cannot look up."""
        if self.max_id >= vocab_size:
            raise LMDataError(
                f"{self.directory}: token id {self.max_id} does not fit {what} with vocab_size "
                f"{vocab_size}: the tokens were made with a different tokenizer; build the model "
                "from the tokenizer these tokens were encoded with"
            )


def _fingerprint(files: list[Path]) -> list[list[object]]:
    """Names and sizes of the shards: the token directory is content-addressed by its path."""
    return [[str(path.resolve()), path.stat().st_size] for path in files]


def open_split(tokens_dir: str | Path, split: str, cache_dir: str | Path) -> TokenSplit:
    """The split as mmapped arrays, built into `cache_dir/<split>/` on first use."""
    if split not in SPLITS:
        raise LMDataError(f"unknown split {split!r}; expected one of {SPLITS}")
    files = token_parts(tokens_dir)
    target = Path(cache_dir) / split
    source = {"version": CACHE_VERSION, "split": split, "files": _fingerprint(files)}
    manifest = read_manifest(target)
    if manifest is None or manifest.get("source") != source:
        if manifest is not None:
            shutil.rmtree(target)  # built from other shards: stale (atomic_dir drops leftovers)
        with atomic_dir(target) as tmp:
            stats = _build_split(files, split, tmp)
            write_manifest(tmp, {"source": source, **stats})
        manifest = read_manifest(target)
        assert manifest is not None
    return TokenSplit(
        directory=target,
        ids=np.load(target / "ids.npy", mmap_mode="r"),
        offsets=np.load(target / "offsets.npy", mmap_mode="r"),
        doc_starts=np.load(target / "doc_starts.npy", mmap_mode="r"),
        max_id=int(manifest["max_id"]),
    )


def _build_split(files: list[Path], split: str, out: Path) -> dict[str, int]:
    """Two streaming passes: count, then fill preallocated .npy memmaps."""
    n_tokens = n_sentences = 0
    for batch in _iter_split(files, split, ["ids"]):
        n_sentences += batch.num_rows
        n_tokens += int(pc.sum(pc.list_value_length(batch.column("ids"))).as_py() or 0)

    open_memmap = np.lib.format.open_memmap
    ids = open_memmap(out / "ids.npy", mode="w+", dtype=np.int32, shape=(n_tokens,))
    offsets = open_memmap(out / "offsets.npy", mode="w+", dtype=np.int64, shape=(n_sentences + 1,))
    starts: list[int] = []
    previous_doc: str | None = None
    row = token = 0
    max_id = -1
    for batch in _iter_split(files, split, ["doc_id", "ids"]):
        if batch.num_rows == 0:
            continue
        column = batch.column("ids")
        values = column.flatten().to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)
        if len(values) and int(values.min()) < 0:
            raise LMDataError(f"negative token id in split {split!r} of {files[0].parent}")
        max_id = max(max_id, int(values.max()) if len(values) else -1)
        ids[token : token + len(values)] = values
        offsets[row + 1 : row + 1 + len(lengths)] = token + np.cumsum(lengths)
        new_docs, previous_doc = _doc_starts(batch.column("doc_id"), previous_doc)
        starts.extend((row + new_docs).tolist())
        row += batch.num_rows
        token += len(values)
    offsets[0] = 0
    starts.append(n_sentences)
    np.save(out / "doc_starts.npy", np.asarray(starts, dtype=np.int64))
    ids.flush()
    offsets.flush()
    del ids, offsets
    return {
        "n_tokens": n_tokens,
        "n_sentences": n_sentences,
        "n_docs": len(starts) - 1,
        "max_id": max_id,
    }


def _doc_starts(doc_ids: pa.Array, previous: str | None) -> tuple[np.ndarray, str | None]:
    """Rows of a batch where a new document starts (doc_id differs from the row before)."""
    n = len(doc_ids)
    if n == 0:
        return np.zeros(0, dtype=np.int64), previous
    changed = pc.not_equal(doc_ids.slice(1), doc_ids.slice(0, n - 1))
    starts = np.flatnonzero(changed.to_numpy(zero_copy_only=False)) + 1
    if doc_ids[0].as_py() != previous:
        starts = np.concatenate([[0], starts])
    return starts.astype(np.int64), doc_ids[n - 1].as_py()


def packed_stream(split: TokenSplit, eos_id: int) -> np.ndarray:
    """Documents back to back, each followed by `eos_id` (GPT-2's <|endoftext|> packing).

    Cached next to the split as packed-eos<id>.npy and memory-mapped.
    """
    path = split.directory / f"packed-eos{eos_id}.npy"
    if not path.exists():
        with atomic_path(path) as tmp:
            n = split.n_tokens + split.n_docs
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.int32, shape=(n,))
            for d0 in range(0, split.n_docs, PACK_DOCS):
                d1 = min(d0 + PACK_DOCS, split.n_docs)
                begin = int(split.offsets[split.doc_starts[d0]])
                ends = split.offsets[split.doc_starts[d0 + 1 : d1 + 1]] - begin
                chunk = np.insert(
                    np.asarray(split.ids[begin : begin + int(ends[-1])]), ends, eos_id
                )
                out[begin + d0 : begin + d0 + len(chunk)] = chunk  # d0 eos tokens came before
            out.flush()
            del out
    return np.load(path, mmap_mode="r")


class PackedBlocks:
    """Training blocks of `block_size` tokens cut from a packed stream.

    Epoch e cuts the stream at a seeded offset into n_blocks blocks and visits them in a seeded
    permutation; example g (counted over the whole run) is block g % n_blocks of epoch
    g // n_blocks. So every token is seen once per epoch and any example is O(1) to fetch.
    """

    def __init__(self, stream: np.ndarray, block_size: int, seed: int):
        self.stream = stream
        self.block_size = block_size
        self.seed = seed
        self.n_blocks = (len(stream) - block_size + 1) // block_size
        if self.n_blocks < 1:
            raise LMDataError(
                f"the train split has {len(stream)} tokens, fewer than one block of {block_size}; "
                "lower block_size or add text to the corpus"
            )
        self._orders: dict[int, tuple[int, np.ndarray]] = {}

    def _order(self, epoch: int) -> tuple[int, np.ndarray]:
        if epoch not in self._orders:
            rng = np.random.default_rng([self.seed, epoch])
            offset = int(rng.integers(self.block_size))  # blocks need not start at 0
            self._orders = {k: v for k, v in self._orders.items() if k == epoch - 1}
            self._orders[epoch] = (offset, rng.permutation(self.n_blocks))
        return self._orders[epoch]

    def block(self, example: int) -> np.ndarray:
        epoch, k = divmod(example, self.n_blocks)
        offset, order = self._order(epoch)
        start = offset + int(order[k]) * self.block_size
        return self.stream[start : start + self.block_size]

    def batch(self, examples: Iterable[int]) -> np.ndarray:
        """(len(examples), block_size) int64: embedding lookups want int64."""
        return np.stack([self.block(g) for g in examples]).astype(np.int64)


def valid_blocks(stream: np.ndarray, block_size: int, count: int) -> np.ndarray:
    """Up to `count` non-overlapping blocks spread evenly over a (valid) stream, (n, block)."""
    n_blocks = len(stream) // block_size
    if n_blocks < 1:
        raise LMDataError(
            f"the valid split has {len(stream)} tokens, fewer than one block of {block_size}; "
            "raise corpus.valid_fraction or lower block_size"
        )
    picks = np.unique(np.linspace(0, n_blocks - 1, min(count, n_blocks)).round().astype(np.int64))
    return np.stack([stream[k * block_size : (k + 1) * block_size] for k in picks]).astype(np.int64)


def unigram_entropy(
    tokens_dir: str | Path, split: str, vocab_size: int, eos_id: int | None = None
) -> float:
    """Cross-entropy (nats/token) of `split` under a unigram model fit on the train split.

    The bar a language model must clear to have learned more than word frequencies. Counts are
    add-one smoothed over `vocab_size` so unseen tokens cost log(total), not infinity. With
    `eos_id`, one end-of-document token per document is counted, as packed LM blocks hold.
    """
    target = _counts(token_parts(tokens_dir), split, vocab_size, eos_id)
    if target.sum() == 0:
        raise LMDataError(f"{tokens_dir}: split {split!r} has no tokens")
    log_p = unigram_log_probs(tokens_dir, vocab_size, eos_id)
    return float(-(target * log_p).sum() / target.sum())


def unigram_log_probs(
    tokens_dir: str | Path, vocab_size: int, eos_id: int | None = None
) -> np.ndarray:
    """(vocab_size,) log probabilities of the add-one smoothed unigram model of the train split:
    the reference `unigram_entropy` scores against, and BERT's starting MLM output bias."""
    train = _counts(token_parts(tokens_dir), "train", vocab_size, eos_id)
    return np.log(train + 1.0) - math.log(train.sum() + vocab_size)


def _counts(files: list[Path], split: str, vocab_size: int, eos_id: int | None) -> np.ndarray:
    counts = np.zeros(vocab_size, dtype=np.int64)
    previous_doc: str | None = None
    for batch in _iter_split(files, split, ["doc_id", "ids"]):
        values = batch.column("ids").flatten().to_numpy(zero_copy_only=False)
        if len(values) and int(values.max()) >= vocab_size:
            raise LMDataError(
                f"{files[0].parent}: token id {int(values.max())} >= vocab_size {vocab_size}; "
                "pass the vocabulary size of the tokenizer these tokens were encoded with"
            )
        counts += np.bincount(values, minlength=vocab_size)
        if eos_id is not None:
            new_docs, previous_doc = _doc_starts(batch.column("doc_id"), previous_doc)
            counts[eos_id] += len(new_docs)
    return counts
