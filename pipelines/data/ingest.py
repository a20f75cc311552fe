"""Stage 1, ingest: raw text sources -> a deduplicated, split, Unicode-normalised Parquet corpus.

Plain Python (no Prefect, no MLflow): `ingest()` streams every source in ~1 MiB blocks, so memory
is bounded by the block size, one part file of `rows_per_shard` documents and the dedup index.

Every record is cleaned the same way whatever its format: line endings -> "\\n", Unicode NFC,
surrounding whitespace stripped. A record that cannot become a document is written to
`rejects.parquet` with a reason (see REASONS); nothing is dropped silently. A problem with a
whole file (missing, unreadable, truncated, wrong column) raises IngestError naming the file.

Speed comes from doing the common case once per block instead of once per record: the UTF-8
decode and the control-character scan run over a whole block (NFC only for non-ASCII ones),
and only a block that fails a check is examined record by record. Ids, splits and dedup are
numpy operations over a block's digests, and Arrow arrays are built from buffers (see
benchmarks/ingest.py for the measurements).
"""

from __future__ import annotations

import bz2
import csv
import glob
import gzip
import io
import json
import lzma
import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from hashlib import sha256
from itertools import chain
from pathlib import Path
from typing import BinaryIO, NamedTuple
from xml.etree.ElementTree import ParseError

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from pretrainlab.config import PretrainlabError
from storage.atomic import atomic_path, write_parquet
from storage.hashing import sha256_file
from storage.remote import ObjectStore, RemoteError, is_url
from storage.remote_sources import RemoteFile, resolve_url

CORPUS_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),  # sha256(normalised text) hex[:16]
        ("source", pa.string()),  # the file the document came from
        ("text", pa.string()),
        ("n_chars", pa.int64()),
        ("split", pa.string()),  # "train" | "valid", from the same hash: never changes
    ]
)
REJECTS_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        # 1-based: line number for text/JSONL/CSV, row number for Parquet, page for MediaWiki.
        ("position", pa.int64()),
        ("reason", pa.string()),
        ("sample", pa.string()),  # the first SAMPLE_CHARS characters of what was read
    ]
)
REASONS = (
    "invalid_utf8",  # bytes that are not UTF-8 (or a JSON-escaped lone surrogate)
    "binary",  # a NUL, or more than BINARY_CONTROL_SHARE control characters
    "empty",  # fewer than min_chars after stripping
    "too_long",  # more than max_chars
    "malformed_json",  # a JSONL line that is not JSON
    "missing_field",  # a JSONL/CSV/Parquet record without (or null in) text_field
    "not_text",  # text_field holds a number, list or object
)
FORMATS = ("text", "jsonl", "csv", "parquet", "mediawiki")
DOC_UNITS = ("line", "paragraph", "file")

BLOCK_BYTES = 1 << 20  # read unit: amortises per-block work; 4 MiB was no faster, +50 MB RSS
BATCH_RECORDS = 8192  # record-by-record formats hand over batches of this size
WIKI_BATCH_PAGES = 4  # an article costs ~1-50 ms of markup stripping: small batches stop a
# `limit` early at no measurable overhead
ROW_GROUP_ROWS = 16_384
REJECT_ROWS = 10_000  # rejects are buffered and written in row groups of this size
SAMPLE_CHARS = 200
BINARY_CONTROL_SHARE = 0.1
MAX_CHARS_LIMIT = 100_000_000  # keeps every batch's text buffer under Arrow's 2 GiB offsets
PROGRESS_EVERY = 1000
PARQUET_OPTIONS = {
    "compression": "zstd",
    "compression_level": 3,
    "use_dictionary": ["source", "split", "reason"],
    "write_statistics": ["doc_id", "source", "n_chars", "split", "position", "reason"],
}
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zstd")
FORMAT_BY_SUFFIX = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".xml": "mediawiki",
}
# Bytes that may appear in a clean record; the rest are C0 controls (bar tab and newline) and DEL.
_PLAIN_BYTES = bytes(b for b in range(256) if b in (9, 10) or 32 <= b != 127)
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class IngestError(PretrainlabError, ValueError):
    """A source that cannot be ingested at all; the message names the file and the fix."""


@dataclass(frozen=True)
class IngestSettings:
    min_chars: int = 1
    max_chars: int = 1_000_000
    valid_fraction: float = 0.05
    rows_per_shard: int = 50_000

    def __post_init__(self) -> None:
        if not 1 <= self.min_chars <= self.max_chars <= MAX_CHARS_LIMIT:
            raise IngestError(
                f"need 1 <= min_chars <= max_chars <= {MAX_CHARS_LIMIT:,}, got "
                f"min_chars={self.min_chars}, max_chars={self.max_chars}"
            )
        if not 0.0 <= self.valid_fraction < 1.0:
            raise IngestError(f"valid_fraction must be in [0, 1), got {self.valid_fraction}")
        if self.rows_per_shard < 1:
            raise IngestError(f"rows_per_shard must be >= 1, got {self.rows_per_shard}")

    @property
    def max_record_bytes(self) -> int:
        """A record longer than this many bytes has more than max_chars characters (UTF-8 uses
        at most 4 bytes a character; the slack allows surrounding whitespace), so it is
        rejected as too_long without being held in memory."""
        return 4 * self.max_chars + 4096


@dataclass(frozen=True)
class SourceInput:
    """One configured source resolved to files. `label` names it in stats and messages."""

    paths: list[Path | RemoteFile]  # local files, or objects at a URL (storage.remote)
    format: str = "auto"  # "auto" = detect_format per file
    text_field: str = "text"  # JSONL key, CSV/Parquet column
    doc_per: str = "line"  # plain text only: "line" | "paragraph" | "file"
    limit: int | None = None  # keep at most this many (new, accepted) documents
    label: str = ""


Reject = tuple[int, str, str]  # (position, reason, sample)


class _Batch(NamedTuple):
    """Records a reader hands over: candidate texts with positions, and its own rejects."""

    positions: list[int]
    texts: list[str]
    rejects: list[Reject]
    skipped: int = 0  # records that are not documents at all (wiki redirects, talk pages)
    plain: bool = False  # the reader checked the bytes: valid UTF-8, no control chars, no "\r"
    ascii: bool = False  # ... and all ASCII, hence already NFC


# --- finding and naming files --------------------------------------------------------------


def _visible(path: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def resolve_paths(
    path_or_glob: str, object_store: ObjectStore | None = None
) -> list[Path | RemoteFile]:
    """A file, a directory (every non-hidden file below it) or a glob, in sorted order; a URL
    (s3://bucket/raw/*.jsonl.gz) lists objects the same way, reached through `object_store`."""
    if is_url(path_or_glob):
        return list(resolve_url(path_or_glob, object_store or ObjectStore()))
    path = Path(path_or_glob).expanduser()
    if glob.has_magic(path_or_glob):
        found = [Path(p) for p in glob.glob(str(path), recursive=True)]
        files = sorted(p for p in found if p.is_file() and not p.name.startswith("."))
        if not files:
            raise IngestError(f"{path_or_glob}: the glob matches no files; check the pattern")
        return files
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _visible(p, path))
        if not files:
            raise IngestError(f"{path}: the directory holds no (non-hidden) files")
        return files
    raise IngestError(f"{path}: no such file or directory; check the source path")


def _strip_compression(path: Path | RemoteFile) -> str:
    name = path.name.lower()
    for suffix in COMPRESSION_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def detect_format(path: str | Path | RemoteFile) -> str:
    """The format of a file from its extension, compression suffix removed; text otherwise.

    Wikimedia dump names carry a page range after `.xml` (`...articles1.xml-p10p30302.bz2`).
    """
    name = _strip_compression(path if isinstance(path, RemoteFile) else Path(path))
    if re.search(r"\.xml(-|$)", name):
        return "mediawiki"
    return FORMAT_BY_SUFFIX.get(Path(name).suffix, "text")


def fingerprint_sources(paths: list[Path | RemoteFile]) -> list[dict]:
    """Identity of the input files, what a corpus id is computed from: content for local
    files, (URL, size, modification time) for objects (see storage.remote)."""
    return [
        path.fingerprint()
        if isinstance(path, RemoteFile)
        else {"path": str(path), "sha256": sha256_file(path), "bytes": path.stat().st_size}
        for path in paths
    ]


def _size(path: Path | RemoteFile) -> int:
    return path.size if isinstance(path, RemoteFile) else path.stat().st_size


# --- opening (and decompressing) files ------------------------------------------------------


class _ZstdReader(io.RawIOBase):
    """zstd frames in sequence. zstandard's own stream_reader ends silently at a truncated
    frame; this one raises EOFError there, like gzip, bz2 and lzma do."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw, self._dctx = raw, zstandard.ZstdDecompressor()
        self._frame = None
        self._out, self._offset = b"", 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        while self._offset == len(self._out):
            chunk = self._raw.read(1 << 16)
            if not chunk:
                if self._frame is not None and not self._frame.eof:
                    raise EOFError("the zstd stream ends inside a frame")
                return 0
            self._out, self._offset = self._decompress(chunk), 0
        n = min(len(buffer), len(self._out) - self._offset)
        buffer[:n] = self._out[self._offset : self._offset + n]
        self._offset += n
        return n

    def _decompress(self, data: bytes) -> bytes:
        parts = []
        while data:
            if self._frame is None or self._frame.eof:
                self._frame = self._dctx.decompressobj()
            parts.append(self._frame.decompress(data))
            data = self._frame.unused_data if self._frame.eof else b""
        return b"".join(parts)


def _decompressed(path: Path | RemoteFile, raw: BinaryIO) -> BinaryIO:
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if name.endswith(".bz2"):
        return bz2.BZ2File(raw)
    if name.endswith(".xz"):
        return lzma.LZMAFile(raw)
    if name.endswith((".zst", ".zstd")):
        return io.BufferedReader(_ZstdReader(raw), BLOCK_BYTES)
    return raw


def _check_encoding(stream: BinaryIO, path: Path) -> None:
    """Refuse UTF-16/32 files up front (else every line is a 'binary' reject); drop a UTF-8 BOM."""
    head = stream.peek(4)[:4]
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise IngestError(
            f"{path}: the file is UTF-16/32 (byte-order mark {head[:2].hex()}); convert it to "
            f"UTF-8, e.g. `iconv -f UTF-16 -t UTF-8`"
        )
    if head.startswith(b"\xef\xbb\xbf"):
        stream.read(3)


@contextmanager
def _open_source(path: Path | RemoteFile, fmt: str) -> Iterator[tuple[BinaryIO, BinaryIO]]:
    """Yield (raw file, decompressed stream); raw.tell() is how far the file has been read."""
    if fmt == "parquet" and path.name.lower().endswith(COMPRESSION_SUFFIXES):
        raise IngestError(f"{path}: Parquet is compressed internally; store it uncompressed")
    try:
        if isinstance(path, RemoteFile):  # Parquet seeks to its footer; the rest streams
            raw = path.open_random() if fmt == "parquet" else path.open_stream()
        else:
            raw = open(path, "rb")  # noqa: SIM115 (closed by the with below)
    except RemoteError:
        raise
    except OSError as error:
        raise IngestError(
            f"{path}: cannot open the file ({error.strerror}); check that it exists, is a "
            f"regular file and is readable"
        ) from None
    with raw, _decompressed(path, raw) as stream:
        if fmt in ("text", "jsonl", "csv"):
            _check_encoding(stream, path)
        yield raw, stream


# --- readers: one per format; each yields _Batch ----------------------------------------------


def _sample(text: str) -> str:
    return _SURROGATE.sub("\ufffd", text[:SAMPLE_CHARS])


def _sample_bytes(data: bytes) -> str:
    return data[: 4 * SAMPLE_CHARS].decode("utf-8", "replace")[:SAMPLE_CHARS]


class _Lines(NamedTuple):
    lines: list[str]
    valid: bool  # every line is UTF-8 (else bad bytes are lone surrogates: surrogateescape)
    plain: bool  # ... and no line has a control character or a lone "\r"
    ascii: bool


def _decode_lines(block: bytes) -> _Lines:
    """Split a block of whole lines and decode it line by line, checking its bytes at C speed
    so that clean blocks skip per-record checks. Line by line because one emoji makes a
    decoded block 4 bytes a character, while most lines stay 1 byte (measured 2.5x faster)."""
    parts = block.split(b"\n")
    parts.pop()  # a block ends with "\n"
    try:
        lines = [part.decode("utf-8") for part in parts]
    except UnicodeDecodeError:
        lines = [part.decode("utf-8", "surrogateescape") for part in parts]
        return _Lines(lines, False, False, False)
    return _Lines(lines, True, not block.translate(None, _PLAIN_BYTES), block.isascii())


def _line_blocks(stream: BinaryIO, limit_bytes: int) -> Iterator[tuple[int, _Lines, Reject | None]]:
    """Yield (first line number, the decoded lines of a block, None), or (line, no lines,
    too_long reject) for a line longer than `limit_bytes`, which is skipped without being held.

    Blocks are cut after a newline, so no line and no UTF-8 sequence is ever split."""
    line_no, carry, skipping = 1, b"", False
    while data := stream.read(BLOCK_BYTES):
        if skipping:
            cut = data.find(b"\n")
            if cut < 0:
                continue
            data, skipping, line_no = data[cut + 1 :], False, line_no + 1
        buffer = carry + data
        end = buffer.rfind(b"\n") + 1
        carry = buffer[end:]
        if end:
            block = buffer[:end]
            if b"\r" in block:
                block = block.replace(b"\r\n", b"\n")
            lines = _decode_lines(block)
            yield line_no, lines, None
            line_no += len(lines.lines)
        if len(carry) > limit_bytes:
            yield line_no, _NO_LINES, (line_no, "too_long", _sample_bytes(carry))
            carry, skipping = b"", True
    if carry and not skipping:
        yield line_no, _decode_lines(carry.replace(b"\r\n", b"\n") + b"\n"), None


_NO_LINES = _Lines([], True, True, True)


def _read_lines(
    stream: BinaryIO, path: Path, source: SourceInput, settings: IngestSettings
) -> Iterator[_Batch]:
    for first, block, reject in _line_blocks(stream, settings.max_record_bytes):
        positions = list(range(first, first + len(block.lines)))
        rejects = [reject] if reject else []
        yield _Batch(positions, block.lines, rejects, 0, block.plain, block.ascii)


def _read_paragraphs(
    stream: BinaryIO, path: Path, source: SourceInput, settings: IngestSettings
) -> Iterator[_Batch]:
    """Documents separated by blank lines; the position is the paragraph's first line."""
    lines: list[str] = []
    start = size = 0
    dropping = False  # inside a paragraph already rejected as too long
    for first, block, reject in _line_blocks(stream, settings.max_record_bytes):
        batch = _Batch([], [], [])
        if reject:
            batch.rejects.append((start if lines else reject[0], "too_long", reject[2]))
            lines, dropping = [], True
        for i, line in enumerate(block.lines):
            if not line.strip():
                if lines:
                    batch.positions.append(start)
                    batch.texts.append("\n".join(lines))
                lines, size, dropping = [], 0, False
            elif not dropping:
                start = start if lines else first + i
                lines.append(line)
                size += len(line) + 1
                if size > settings.max_record_bytes:
                    batch.rejects.append((start, "too_long", _sample("\n".join(lines))))
                    lines, dropping = [], True
        yield batch
    if lines:
        yield _Batch([start], ["\n".join(lines)], [])


def _read_whole(
    stream: BinaryIO, path: Path, source: SourceInput, settings: IngestSettings
) -> Iterator[_Batch]:
    data = stream.read(settings.max_record_bytes + 1)
    if len(data) > settings.max_record_bytes:
        yield _Batch([], [], [(1, "too_long", _sample_bytes(data))])
    else:
        text = data.replace(b"\r\n", b"\n").decode("utf-8", "surrogateescape")
        yield _Batch([1], [text], [])


def _read_text(
    stream: BinaryIO, path: Path, source: SourceInput, settings: IngestSettings
) -> Iterator[_Batch]:
    readers = {"line": _read_lines, "paragraph": _read_paragraphs, "file": _read_whole}
    if source.doc_per not in readers:
        raise IngestError(f"{path}: doc_per must be one of {DOC_UNITS}, got {source.doc_per!r}")
    return readers[source.doc_per](stream, path, source, settings)


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _add_field(batch: _Batch, position: int, record: object, key: str, seen: str) -> None:
    """Add record[key] to the batch, or the reject that says why it is not there."""
    value = record.get(key) if isinstance(record, dict) else None
    if value is None:
        batch.rejects.append((position, "missing_field", _sample(seen)))
    elif not isinstance(value, str):
        batch.rejects.append((position, "not_text", _sample(seen)))
    else:
        batch.positions.append(position)
        batch.texts.append(value)


def _read_jsonl(
    stream: BinaryIO, path: Path, source: SourceInput, settings: IngestSettings
) -> Iterator[_Batch]:
    """One JSON object per line. A bad line is a reject, never the end of the file."""
    for first, block, reject in _line_blocks(stream, settings.max_record_bytes):
        batch = _Batch([], [], [reject] if reject else [])
        for position, line in enumerate(block.lines, first):
            if not line.strip():
                batch.rejects.append((position, "empty", ""))
            elif not block.valid and _has_surrogates(line):
                batch.rejects.append((position, "invalid_utf8", _sample(line)))
            else:
                try:
                    record = json.loads(line)
                except ValueError:
                    batch.rejects.append((position, "malformed_json", _sample(line)))
                    continue
                _add_field(batch, position, record, source.text_field, line)
        yield batch


def _read_csv(
    stream: BinaryIO, path: Path, source: SourceInput, settings: IngestSettings
) -> Iterator[_Batch]:
    """CSV/TSV with a header row; the position is the line a record starts on.

    csv's field size limit (process-wide) is max_record_bytes while this file is read, so an
    unclosed quote fails fast instead of swallowing the rest of the file into memory."""
    text = io.TextIOWrapper(stream, encoding="utf-8", errors="surrogateescape", newline="")
    delimiter = "\t" if _strip_compression(path).endswith(".tsv") else ","
    reader = csv.reader(text, delimiter=delimiter)
    previous_limit = csv.field_size_limit(settings.max_record_bytes)
    try:
        header = next(reader, None)
        if header is None:
            return
        if source.text_field not in header:
            raise IngestError(
                f"{path}: CSV has no column {source.text_field!r}; its columns are {header}. "
                f"Set text_field to one of them."
            )
        column, line = header.index(source.text_field), reader.line_num
        batch = _Batch([], [], [])
        for row in reader:
            position, line = line + 1, reader.line_num
            if column < len(row):
                batch.positions.append(position)
                batch.texts.append(row[column])
            else:
                batch.rejects.append((position, "missing_field", _sample(delimiter.join(row))))
            if len(batch.positions) + len(batch.rejects) >= BATCH_RECORDS:
                yield batch
                batch = _Batch([], [], [])
        yield batch
    except csv.Error as error:
        raise IngestError(
            f"{path} line {reader.line_num}: {error}: an unbalanced quote, or a record far "
            f"longer than max_chars ({settings.max_chars}); fix the quoting"
        ) from None
    finally:
        csv.field_size_limit(previous_limit)


def _parquet_texts(column: pa.Array) -> list[str | None]:
    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        return [
            None if v is None else v.decode("utf-8", "surrogateescape") for v in column.to_pylist()
        ]
    return column.to_pylist()


def _read_parquet(
    stream: BinaryIO, path: Path, source: SourceInput, settings: IngestSettings
) -> Iterator[_Batch]:
    """Row batches of one column; the position is the 1-based row number."""
    try:
        parquet = pq.ParquetFile(stream)
    except (pa.ArrowException, OSError) as error:
        raise IngestError(f"{path}: not a readable Parquet file ({error})") from None
    schema = parquet.schema_arrow
    if source.text_field not in schema.names:
        raise IngestError(
            f"{path}: Parquet has no column {source.text_field!r}; its columns are "
            f"{schema.names}. Set text_field to one of them."
        )
    kind = schema.field(source.text_field).type
    textual = (
        pa.types.is_string,
        pa.types.is_large_string,
        pa.types.is_string_view,
        pa.types.is_binary,
        pa.types.is_large_binary,
    )
    if not any(check(kind) for check in textual):
        raise IngestError(
            f"{path}: column {source.text_field!r} holds {kind}, not text; pick a string column"
        )
    row = 1
    for record_batch in parquet.iter_batches(batch_size=BATCH_RECORDS, columns=[source.text_field]):
        values = _parquet_texts(record_batch.column(0))
        batch = _Batch([], [], [])
        for position, value in enumerate(values, row):
            if value is None:
                batch.rejects.append((position, "missing_field", ""))
            else:
                batch.positions.append(position)
                batch.texts.append(value)
        row += len(values)
        yield batch


_WIKI_EMPHASIS = re.compile(r"'{2,}")
_WIKI_HEADING = re.compile(r"^=+\s*(.*?)\s*=+\s*$", re.MULTILINE)
_BLANK_RUNS = re.compile(r"\n{3,}")


def wiki_text(markup: str) -> str:
    """Plain text of an article: gensim's filter_wiki, then bold/italic quotes and heading
    markers removed and runs of blank lines squeezed to one."""
    from gensim.corpora.wikicorpus import filter_wiki  # lazy: gensim costs ~3 s and ~60 MB

    text = _WIKI_HEADING.sub(r"\1", _WIKI_EMPHASIS.sub("", filter_wiki(markup)))
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _BLANK_RUNS.sub("\n\n", text)


def _read_mediawiki(
    stream: BinaryIO, path: Path, source: SourceInput, settings: IngestSettings
) -> Iterator[_Batch]:
    """One document per article (namespace 0); redirects and other namespaces are skipped.

    The position is the page's 1-based number in the dump, skipped pages included."""
    from gensim.corpora.wikicorpus import extract_pages  # lazy: gensim costs ~3 s and ~60 MB

    article = [False]

    def is_article(elem, namespace, ns_path, **_) -> bool:
        ns = elem.find(ns_path)
        redirect = elem.find(f"{{{namespace}}}redirect")
        article[0] = (ns is None or ns.text == "0") and redirect is None
        return article[0]

    pages = extract_pages(stream, filter_articles=is_article)
    try:
        first = next(pages, None)  # reads the header: fails here on a non-MediaWiki root
    except ValueError as error:
        raise IngestError(f"{path}: not a MediaWiki XML dump ({error})") from None
    batch = _Batch([], [], [])
    for page_no, (_title, markup, _page_id) in enumerate(chain([first] if first else [], pages), 1):
        if not article[0] or markup.lstrip()[:9].lower() == "#redirect":
            batch = batch._replace(skipped=batch.skipped + 1)
        else:
            batch.positions.append(page_no)
            batch.texts.append(wiki_text(markup))
        if len(batch.positions) >= WIKI_BATCH_PAGES:
            yield batch
            batch = _Batch([], [], [])
    yield batch


READERS = {
    "text": _read_text,
    "jsonl": _read_jsonl,
    "csv": _read_csv,
    "parquet": _read_parquet,
    "mediawiki": _read_mediawiki,
}


def _read_batches(
    path: Path | RemoteFile, fmt: str, source: SourceInput, settings: IngestSettings
) -> Iterator[tuple[int, _Batch]]:
    """Yield (bytes of `path` read so far, batch); a failure to read becomes IngestError.

    Only reading happens inside this generator, so the except clauses below never see an
    error from writing the corpus."""
    if fmt not in READERS:
        raise IngestError(f"{path}: format must be 'auto' or one of {FORMATS}, got {fmt!r}")
    try:
        with _open_source(path, fmt) as (raw, stream):
            for batch in READERS[fmt](stream, path, source, settings):
                yield raw.tell(), batch
    except RemoteError:
        raise
    except EOFError as error:
        raise IngestError(
            f"{path}: the file ends early ({error}); it is truncated or corrupt: download or "
            f"compress it again"
        ) from None
    except ParseError as error:
        line, column = error.position
        raise IngestError(
            f"{path} line {line}, column {column}: not well-formed XML ({error}); the dump is "
            f"truncated or corrupt"
        ) from None
    except (OSError, zlib.error, lzma.LZMAError, zstandard.ZstdError) as error:
        raise IngestError(
            f"{path}: cannot read the file ({error}); it is corrupt, not compressed the way "
            f"its suffix says, or unreadable"
        ) from None


# --- cleaning: the same for every format --------------------------------------------------


def _has_suspects(text: str) -> bool:
    """True when `text` has a lone surrogate (undecodable bytes) or a control character.

    Two C-speed passes (encode, delete the plain bytes) instead of a regex: ~3x faster."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return bool(data.translate(None, _PLAIN_BYTES))


def _screen(positions: list[int], texts: list[str], rejects: list[Reject]):
    """Reject records with undecodable bytes or binary content; the slow, per-record path."""
    kept_positions, kept_texts = [], []
    for position, text in zip(positions, texts, strict=True):
        if not _has_suspects(text):
            kept_positions.append(position)
            kept_texts.append(text)
        elif _SURROGATE.search(text):
            rejects.append((position, "invalid_utf8", _sample(text)))
        elif "\x00" in text or len(_CONTROL.findall(text)) > BINARY_CONTROL_SHARE * len(text):
            rejects.append((position, "binary", _sample(text)))
        else:
            kept_positions.append(position)
            kept_texts.append(text)
    return kept_positions, kept_texts


def _clean(batch: _Batch, settings: IngestSettings):
    """Normalise a batch; split it into candidates (positions, texts, n_chars) and rejects.

    Byte checks run once per batch (by the reader on raw bytes, or here on the joined
    texts), and record by record only when they fail. NFC runs per record and only for
    non-ASCII batches: unicodedata.normalize returns its input after a quick check when it is
    already NFC, while is_normalized on a whole block normalises all of it as soon as one
    character is a "maybe" (measured 20 MB/s)."""
    positions, texts, rejects = batch.positions, batch.texts, list(batch.rejects)
    ascii_only = batch.plain and batch.ascii
    if texts and not batch.plain:
        joined = "\n".join(texts)
        if "\r" in joined:
            texts = [t.replace("\r\n", "\n").replace("\r", "\n") for t in texts]
            joined = "\n".join(texts)
        if _has_suspects(joined):
            positions, texts = _screen(positions, texts, rejects)
        ascii_only = joined.isascii()  # O(1): CPython flags ASCII-only strings
    if ascii_only:
        texts = [t.strip() for t in texts]
    else:  # NFC cannot create or remove surrounding whitespace: one pass does both
        texts = [unicodedata.normalize("NFC", t).strip() for t in texts]
    lengths = list(map(len, texts))
    if texts and (min(lengths) < settings.min_chars or max(lengths) > settings.max_chars):
        keep = []
        for i, n in enumerate(lengths):
            if n < settings.min_chars:
                rejects.append((positions[i], "empty", texts[i][:SAMPLE_CHARS]))
            elif n > settings.max_chars:
                rejects.append((positions[i], "too_long", texts[i][:SAMPLE_CHARS]))
            else:
                keep.append(i)
        positions = [positions[i] for i in keep]
        texts = [texts[i] for i in keep]
        lengths = [lengths[i] for i in keep]
    rejects.sort(key=lambda r: r[0])
    return positions, texts, lengths, rejects


# --- dedup, ids, splits and part files ----------------------------------------------------


class _SeenKeys:
    """Exact set of 64-bit content keys (the doc_id) as sorted numpy runs, merged like a binary
    counter: 8 bytes per unique document (12 during a merge) against ~100 for a Python set of
    digests, so 10 M documents cost ~80 MB. Lookups are vectorised: one searchsorted per run.

    64 bits is the doc_id's own width: two texts colliding (p ~ n^2 / 2^65, 3e-4 at 10^8 docs)
    could not both be stored under one id anyway."""

    def __init__(self) -> None:
        self._runs: list[np.ndarray] = []

    def contains(self, keys: np.ndarray) -> np.ndarray:
        found = np.zeros(len(keys), dtype=bool)
        for run in self._runs:
            at = np.minimum(np.searchsorted(run, keys), len(run) - 1)
            found |= run[at] == keys
        return found

    def add(self, sorted_keys: np.ndarray) -> None:
        if not len(sorted_keys):
            return
        run = sorted_keys
        while self._runs and len(self._runs[-1]) <= len(run):
            # runs are disjoint (only unseen keys are added): timsort merges two sorted runs in
            # O(n), in place, so a merge needs 1.5x the merged run and not 3x
            run = np.concatenate([self._runs.pop(), run])
            run.sort(kind="stable")
        self._runs.append(run)


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


@dataclass
class _CorpusWriter:
    """Drops seen documents, assigns doc_id and split, writes parts of rows_per_shard rows.

    Parts are written on this thread: a writer thread was measured slower here (GIL hand-offs
    on 2 busy cores) and held a second part in memory (+20 MB)."""

    out_dir: Path
    settings: IngestSettings
    seen: _SeenKeys = field(default_factory=_SeenKeys)
    pending: list[pa.Table] = field(default_factory=list)
    pending_rows: int = 0
    rows: int = 0
    parts: int = 0
    valid: int = 0
    chars: int = 0

    def add(
        self,
        source: str,
        positions: list[int],
        texts: list[str],
        lengths: list[int],
        room: int | None,
    ):
        """Write the documents not seen before, at most `room` of them.

        Returns (written, duplicates, cut): `cut` is the position of the last record used
        when `room` ran out (later records of the batch are not consumed), else None."""
        if not texts:
            return 0, 0, None
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
            self._append(source, digests, keys, encoded, np.array(lengths, np.int64), fresh)
        return len(fresh), consumed - len(fresh), cut

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


@contextmanager
def _rejects_file(path: Path) -> Iterator[Callable[[str, list[Reject]], None]]:
    """Yield add(source, rejects); rejects stream to Parquet in row groups of REJECT_ROWS."""
    buffer: list[tuple[str, int, str, str]] = []
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, REJECTS_SCHEMA, **PARQUET_OPTIONS) as out:

        def flush(rows: list[tuple[str, int, str, str]]) -> None:
            if rows:
                sources, positions, reasons, samples = zip(*rows, strict=True)
                columns = [
                    _strings([s.encode("utf-8", "replace") for s in sources]),
                    _int64s(np.array(positions, dtype=np.int64)),
                    _strings([r.encode("ascii") for r in reasons]),
                    _strings([s.encode("utf-8", "replace") for s in samples]),
                ]
                out.write_table(pa.Table.from_arrays(columns, schema=REJECTS_SCHEMA))

        def add(source: str, rejects: list[Reject]) -> None:
            buffer.extend((source, *reject) for reject in rejects)
            while len(buffer) >= REJECT_ROWS:
                flush(buffer[:REJECT_ROWS])
                del buffer[:REJECT_ROWS]

        yield add
        flush(buffer)


# --- the stage ----------------------------------------------------------------------------


@dataclass
class _Run:
    """One ingest: the writers, the running counts and the progress callback."""

    settings: IngestSettings
    writer: _CorpusWriter
    add_rejects: Callable[[str, list[Reject]], None]
    progress: Callable[[int, int], None] | None
    docs_in: int = 0
    duplicates: int = 0
    skipped: int = 0
    bytes_done: int = 0
    reported: int = 0
    by_reason: Counter = field(default_factory=Counter)

    def file(self, path: Path | RemoteFile, source: SourceInput, room: int | None) -> int:
        """Stream one file into the corpus, writing at most `room` new documents."""
        fmt = detect_format(path) if source.format == "auto" else source.format
        label, written, offset = str(path), 0, 0
        with closing(_read_batches(path, fmt, source, self.settings)) as batches:
            for offset, batch in batches:
                positions, texts, lengths, rejects = _clean(batch, self.settings)
                left = None if room is None else room - written
                new, duplicates, cut = self.writer.add(label, positions, texts, lengths, left)
                if cut is not None:  # the limit was reached inside this batch
                    rejects = [r for r in rejects if r[0] <= cut]
                self.add_rejects(label, rejects)
                self.by_reason.update(r[1] for r in rejects)
                self.docs_in += new + duplicates + len(rejects)
                self.duplicates += duplicates
                self.skipped += batch.skipped
                written += new
                self._report(offset)
                if room is not None and written >= room:
                    self.bytes_done += offset
                    return written
        self.bytes_done += _size(path)
        return written

    def _report(self, offset: int) -> None:
        if self.progress and self.docs_in - self.reported >= PROGRESS_EVERY:
            self.progress(self.bytes_done + offset, self.docs_in)
            self.reported = self.docs_in

    def source(self, source: SourceInput) -> dict:
        before = (self.writer.rows, self.duplicates, self.by_reason.total())
        room = source.limit
        for path in source.paths:
            written = self.file(path if isinstance(path, RemoteFile) else Path(path), source, room)
            if room is not None:
                room -= written
                if room == 0:
                    break
        return {
            "label": source.label,
            "files": len(source.paths),
            "docs_written": self.writer.rows - before[0],
            "duplicates": self.duplicates - before[1],
            "rejected": self.by_reason.total() - before[2],
        }


def ingest(
    sources: list[SourceInput],
    settings: IngestSettings,
    out_dir: Path,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Write out_dir/part-00000.parquet... and out_dir/rejects.parquet; return statistics.

    out_dir is written directly: the caller makes it atomic (storage.atomic.atomic_dir) and
    writes the manifest. Output is a function of the inputs only: same sources, settings and
    code -> byte-identical files; documents keep source order (files of a directory or glob
    sorted). Memory: a ~1 MiB block, one part file of documents and the dedup index
    (8 bytes per unique document, see _SeenKeys).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = _CorpusWriter(out_dir, settings)
    with _rejects_file(out_dir / "rejects.parquet") as add_rejects:
        run = _Run(settings, writer, add_rejects, progress)
        per_source = [run.source(source) for source in sources]
        writer.close()
    if progress:
        progress(run.bytes_done, run.docs_in)
    if writer.rows == 0:
        raise IngestError(
            f"the corpus is empty after filtering: {run.docs_in} records read from "
            f"{[s.label or [str(p) for p in s.paths] for s in sources]}, {run.duplicates} "
            f"duplicates, rejected {dict(run.by_reason)}; see rejects.parquet, or check "
            f"text_field, doc_per, min_chars and max_chars"
        )
    return {
        "docs_in": run.docs_in,
        "docs_written": writer.rows,
        "duplicates": run.duplicates,
        "rejected": run.by_reason.total(),
        "rejected_by_reason": dict(sorted(run.by_reason.items())),
        "skipped": run.skipped,
        "train_docs": writer.rows - writer.valid,
        "valid_docs": writer.valid,
        "chars": writer.chars,
        "bytes_read": run.bytes_done,
        "parts": writer.parts,
        "sources": per_source,
    }
