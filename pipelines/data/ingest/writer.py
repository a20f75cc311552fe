"""Writers: new documents get an id and a split and go to Parquet parts; rejects to their file.

Ids, splits and dedup are numpy operations over a batch's digests, and Arrow arrays are built
from buffers (see benchmarks/ingest.py for the measurements).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.data.ingest.cleaning import SeenKeys
from pipelines.data.ingest.records import (
    CORPUS_SCHEMA,
    REJECTS_SCHEMA,
    Candidates,
    IngestSettings,
    Reject,
)
from storage.atomic import atomic_path, write_parquet

ROW_GROUP_ROWS = 16_384
REJECT_ROWS = 10_000  # rejects are buffered and written in row groups of this size
PARQUET_OPTIONS = {
    "compression": "zstd",
    "compression_level": 3,
    "use_dictionary": ["source", "split", "reason"],
    "write_statistics": ["doc_id", "source", "n_chars", "split", "position", "reason"],
}

# Arrow arrays are built from buffers: pa.array(list_of_str, pa.string()) runs at ~85 MB/s in
# pyarrow 25 (against 1.6 GB/s from buffers), and pa.array/pa.scalar of anything imports pandas
# (~1 s, ~50 MB RSS) just to check its argument.


def _strings(encoded: list[bytes]) -> pa.Array:
    """A string array from UTF-8 bytes objects."""
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum(np.fromiter(map(len, encoded), np.int64, len(encoded)), out=offsets[1:])
    return pa.StringArray.from_buffers(
        len(encoded), pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))
    )


def _fixed_strings(data: bytes, width: int) -> pa.Array:
    """A string array from `data` cut into pieces of `width` bytes."""
    n = len(data) // width if width else 0
    offsets = np.arange(0, width * n + 1, width or 1, dtype=np.int32)[: n + 1]
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))


def _int64s(values: np.ndarray) -> pa.Array:
    values = np.ascontiguousarray(values, dtype=np.int64)
    return pa.Int64Array.from_buffers(pa.int64(), len(values), [None, pa.py_buffer(values)])


_TRAIN, _VALID = np.frombuffer(b"train", np.uint8), np.frombuffer(b"valid", np.uint8)


@dataclass(frozen=True, slots=True)
class Added:
    """What CorpusWriter.add did with a batch of candidates."""

    written: int  # new documents written
    duplicates: int  # candidates consumed that were seen before
    cut: int | None  # position of the last record used when `room` ran out, else None


@dataclass
class CorpusWriter:
    """Drops seen documents, assigns doc_id and split, writes parts of rows_per_shard rows.

    Parts are written on this thread: a writer thread was measured slower here (GIL hand-offs
    on 2 busy cores) and held a second part in memory (+20 MB)."""

    out_dir: Path
    settings: IngestSettings
    seen: SeenKeys = field(default_factory=SeenKeys)
    pending: list[pa.Table] = field(default_factory=list)
    pending_rows: int = 0
    rows: int = 0
    parts: int = 0
    valid: int = 0
    chars: int = 0

    def add(self, source: str, candidates: Candidates, room: int | None) -> Added:
        """Write the documents not seen before, at most `room` of them; records after the
        cut (when `room` runs out) are not consumed."""
        positions, texts = candidates.positions, candidates.texts
        if not texts:
            return Added(0, 0, None)
        encoded = [t.encode("utf-8") for t in texts]
        digests = np.frombuffer(
            b"".join([sha256(b).digest() for b in encoded]), dtype=np.uint8
        ).reshape(-1, 32)
        keys = digests[:, :8].copy().view(">u8").ravel()  # == int(sha256 hex[:16], 16)
        native = keys.astype(np.uint64)
        unique, first = np.unique(native, return_index=True)
        fresh = np.sort(first[~self.seen.contains(unique)])
        consumed, cut = len(texts), None
        if room is not None and len(fresh) > room:
            fresh = fresh[:room]
            consumed, cut = int(fresh[-1]) + 1, positions[int(fresh[-1])]
        self.seen.add(np.sort(native[fresh]))
        if len(fresh):
            lengths = np.array(candidates.lengths, np.int64)
            self._append(source, digests, keys, encoded, lengths, fresh)
        return Added(len(fresh), consumed - len(fresh), cut)

    def _append(self, source, digests, keys, encoded, lengths, rows: np.ndarray) -> None:
        n = len(rows)
        if n < len(encoded):
            encoded = [encoded[i] for i in rows]
        n_chars = lengths[rows]
        # split = int(sha256 hex[16:24], 16) / 2**32 < valid_fraction
        draw = digests[rows, 8:12].copy().view(">u4").ravel()
        is_valid = draw.astype(np.float64) < self.settings.valid_fraction * 2.0**32
        label = source.encode("utf-8")
        table = pa.Table.from_arrays(
            [
                _fixed_strings(keys[rows].tobytes().hex().encode("ascii"), 16),
                _fixed_strings(label * n, len(label)),
                _strings(encoded),
                _int64s(n_chars),
                _fixed_strings(np.where(is_valid[:, None], _VALID, _TRAIN).tobytes(), 5),
            ],
            schema=CORPUS_SCHEMA,
        )
        self.rows += n
        self.valid += int(is_valid.sum())
        self.chars += int(n_chars.sum())
        self.pending.append(table)
        self.pending_rows += n
        while self.pending_rows >= self.settings.rows_per_shard:
            self._flush(self.settings.rows_per_shard)

    def _flush(self, rows: int) -> None:
        table = pa.concat_tables(self.pending)
        write_parquet(
            self.out_dir / f"part-{self.parts:05d}.parquet",
            table.slice(0, rows),
            row_group_size=ROW_GROUP_ROWS,
            **PARQUET_OPTIONS,
        )
        self.parts += 1
        rest = table.slice(rows)
        self.pending, self.pending_rows = ([rest] if rest.num_rows else []), rest.num_rows

    def close(self) -> None:
        if self.pending_rows:
            self._flush(self.pending_rows)


class RejectsWriter:
    """Buffers rejects with their source and writes them in row groups of REJECT_ROWS."""

    def __init__(self, out: pq.ParquetWriter) -> None:
        self._out = out
        self._sources: list[str] = []
        self._rejects: list[Reject] = []

    def add(self, source: str, rejects: list[Reject]) -> None:
        self._sources.extend([source] * len(rejects))
        self._rejects.extend(rejects)
        while len(self._rejects) >= REJECT_ROWS:
            self._write(self._sources[:REJECT_ROWS], self._rejects[:REJECT_ROWS])
            del self._sources[:REJECT_ROWS], self._rejects[:REJECT_ROWS]

    def flush(self) -> None:
        self._write(self._sources, self._rejects)
        self._sources, self._rejects = [], []

    def _write(self, sources: list[str], rejects: list[Reject]) -> None:
        if not rejects:
            return
        columns = [
            _strings([s.encode("utf-8", "replace") for s in sources]),
            _int64s(np.array([r.position for r in rejects], dtype=np.int64)),
            _strings([r.reason.encode("ascii") for r in rejects]),
            _strings([r.sample.encode("utf-8", "replace") for r in rejects]),
        ]
        self._out.write_table(pa.Table.from_arrays(columns, schema=REJECTS_SCHEMA))


@contextmanager
def rejects_file(path: Path) -> Iterator[RejectsWriter]:
    """A RejectsWriter streaming to `path`, which appears (atomically) when the block ends."""
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, REJECTS_SCHEMA, **PARQUET_OPTIONS) as out:
        writer = RejectsWriter(out)
        yield writer
        writer.flush()
