"""What ingest reads, writes and hands between its steps: schemas, limits, settings, records.

Records go column-wise (a batch holds parallel lists of positions and texts, not one object a
document): the stage moves millions of documents and a Python object per document would cost
more than the cleaning itself. A reject is rare, so it is one small frozen record.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa

from pretrainlab.config import PretrainlabError
from storage.remote_sources import RemoteFile

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
    "invalid_encoding",  # bytes that are not valid in the source's declared `encoding`
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
SAMPLE_CHARS = 200
UNDECODED_CHARS = 4096  # of an undecodable record, kept for the encoding detector
MAX_CHARS_LIMIT = 100_000_000  # keeps every batch's text buffer under Arrow's 2 GiB offsets
# Bytes that may appear in a clean record; the rest are C0 controls (bar tab and newline) and DEL.
PLAIN_BYTES = bytes(b for b in range(256) if b in (9, 10) or 32 <= b != 127)
SURROGATE = re.compile("[\ud800-\udfff]")


def sample(text: str) -> str:
    """The start of a rejected record, lone surrogates (undecodable bytes) made printable."""
    return SURROGATE.sub("\ufffd", text[:SAMPLE_CHARS])


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
    encoding: str = "utf-8"  # of text, JSONL and CSV files and of Parquet binary columns


@dataclass(frozen=True, slots=True)
class Reject:
    """A record that cannot become a document: where it was, why, and what it began with."""

    position: int  # 1-based line, row or page (see REJECTS_SCHEMA)
    reason: str  # one of REASONS
    sample: str
    undecoded: str = ""  # invalid_utf8: the record's start, lone surrogates kept (not written)


def undecodable(position: int, text: str) -> Reject:
    """The reject of a record whose bytes did not decode (its text holds lone surrogates)."""
    return Reject(position, "invalid_utf8", sample(text), text[:UNDECODED_CHARS])


@dataclass(slots=True)
class Batch:
    """Records a reader hands over: candidate texts with positions, and its own rejects."""

    positions: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    skipped: int = 0  # records that are not documents at all (wiki redirects, talk pages)
    plain: bool = False  # the reader checked the bytes: valid UTF-8, no control chars, no "\r"
    ascii: bool = False  # ... and all ASCII, hence already NFC


@dataclass(frozen=True, slots=True)
class Candidates:
    """A cleaned batch: the documents that passed (same order as read) and the rejects."""

    positions: list[int]
    texts: list[str]  # normalised: "\n" line ends, NFC, stripped
    lengths: list[int]  # characters of each text
    rejects: list[Reject]  # sorted by position


@dataclass(frozen=True)
class SourceStats:
    """What one configured source contributed to the corpus."""

    label: str
    files: int
    docs_written: int
    duplicates: int
    rejected: int


@dataclass(frozen=True)
class IngestStats:
    """The counts of one ingest; `to_dict()` is what the corpus manifest records."""

    docs_in: int
    docs_written: int
    duplicates: int
    rejected: int
    rejected_by_reason: dict[str, int]
    skipped: int
    train_docs: int
    valid_docs: int
    chars: int
    bytes_read: int
    parts: int
    sources: list[SourceStats]
    # file -> why its undecodable records failed and the `encoding` that reads them
    encoding_hints: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)
