"""Finding, naming and opening source files: directories, globs, URLs, compression, encodings."""

from __future__ import annotations

import bz2
import glob
import gzip
import io
import lzma
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import zstandard

from pipelines import demo_data
from pipelines.data.ingest import charsets
from pipelines.data.ingest.records import BLOCK_BYTES, IngestError, SourceInput
from pretrainlab.config import SourceSpec
from storage.hashing import sha256_file
from storage.remote import ObjectStore, RemoteError, is_url
from storage.remote_sources import RemoteFile, resolve_url

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


# --- finding and naming files --------------------------------------------------------------


def source_input(
    source: SourceSpec, data_dir: str | None, object_store: ObjectStore
) -> SourceInput:
    """A configured source resolved to its files, format and text field: one resolution for
    the ingest stage and the pre-flight check, so both see the same files."""
    if source.dataset is not None:
        files = demo_data.dataset_files(source.dataset, Path(data_dir) if data_dir else None)
        fmt = demo_data.dataset_format(source.dataset) if source.format == "auto" else source.format
        text_field = demo_data.dataset_text_field(source.dataset) or source.text_field
        label = f"dataset:{source.dataset}"
    else:
        files = resolve_paths(source.path or "", object_store)
        fmt, text_field, label = source.format, source.text_field, source.path or ""
    return SourceInput(
        paths=list(files),
        format=fmt,
        text_field=text_field,
        doc_per=source.doc_per,
        limit=source.limit,
        label=label,
        encoding=source.encoding,
    )


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


def strip_compression(path: Path | RemoteFile) -> str:
    """The file's lowercased name without its compression suffix."""
    name = path.name.lower()
    for suffix in COMPRESSION_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def detect_format(path: str | Path | RemoteFile) -> str:
    """The format of a file from its extension, compression suffix removed; text otherwise.

    Wikimedia dump names carry a page range after `.xml` (`...articles1.xml-p10p30302.bz2`).
    """
    name = strip_compression(path if isinstance(path, RemoteFile) else Path(path))
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


def file_size(path: Path | RemoteFile) -> int:
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


def _check_encoding(stream: BinaryIO, path: Path | RemoteFile) -> None:
    """Refuse UTF-16/32 files read as UTF-8 up front (else every line is a 'binary' reject);
    drop a UTF-8 BOM."""
    head = stream.peek(4)[:4]
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise IngestError(
            f"{path}: the file is UTF-16/32 (byte-order mark {head[:2].hex()}); set "
            f"`encoding: utf-16` on this source (or `utf-32`), or convert it to UTF-8, e.g. "
            f"`iconv -f UTF-16 -t UTF-8`"
        )
    if head.startswith(b"\xef\xbb\xbf"):
        stream.read(3)


@contextmanager
def open_source(
    path: Path | RemoteFile, fmt: str, encoding: str = "utf-8"
) -> Iterator[tuple[BinaryIO, BinaryIO]]:
    """Yield (raw file, decompressed stream); raw.tell() is how far the file has been read.

    The stream of a text, JSONL or CSV file is UTF-8 whatever `encoding` the file is in."""
    if fmt == "parquet" and path.name.lower().endswith(COMPRESSION_SUFFIXES):
        raise IngestError(f"{path}: Parquet is compressed internally; store it uncompressed")
    if fmt == "mediawiki" and not charsets.is_utf8(encoding):
        raise IngestError(
            f"{path}: an XML dump declares its own encoding; remove `encoding: {encoding}` "
            f"from this source"
        )
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
        if fmt in ("text", "jsonl", "csv") and charsets.is_utf8(encoding):
            _check_encoding(stream, path)
        elif fmt in ("text", "jsonl", "csv"):
            stream = charsets.recoded(stream, encoding, BLOCK_BYTES)
        yield raw, stream
