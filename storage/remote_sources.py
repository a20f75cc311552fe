"""Corpus sources at URLs (`s3://bucket/raw/*.jsonl.gz`, gs://, file://) through pyarrow.fs.

`resolve_url` lists an object, a prefix or a glob and each `RemoteFile` streams its object (one
GET, read in ~1 MiB blocks). A remote file's identity is (URL, size, modification time) rather
than a content hash: objects are immutable (an overwrite is a new modification time), and
hashing would read the corpus twice. Reaching the store (endpoint, credentials, the errors that
name them) is `storage/remote.py`'s job.
"""

from __future__ import annotations

import io
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from storage.remote import ObjectStore, RemoteError, check_bucket, explain, file_info, visible_key

STREAM_BLOCK = 1 << 20
_GLOB = re.compile(r"[*?\[]")


class _CountingReader(io.RawIOBase):
    """A pyarrow input stream as a Python raw stream whose tell() counts the bytes read
    (sequential streams cannot tell); ingest reports progress with it."""

    def __init__(self, stream: Any) -> None:
        self._stream, self._count = stream, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:  # type: ignore[override]
        data = self._stream.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self._count += n
        return n

    def tell(self) -> int:
        return self._count

    def close(self) -> None:
        if not self.closed:
            self._stream.close()
        super().close()


@dataclass(frozen=True)
class RemoteFile:
    """One object of a source URL; `name` and `str()` let ingest treat it like a path."""

    url: str
    path: str  # inside `filesystem`
    size: int
    mtime_ns: int | None
    filesystem: pafs.FileSystem = field(repr=False, compare=False)
    store: ObjectStore = field(default_factory=ObjectStore, repr=False, compare=False)

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    def __str__(self) -> str:
        return self.url

    def fingerprint(self) -> dict[str, Any]:
        return {"path": self.url, "bytes": self.size, "mtime_ns": self.mtime_ns}

    def open_stream(self) -> BinaryIO:
        """A buffered sequential stream: one GET, read in blocks; tell() = bytes read."""
        try:
            stream = self.filesystem.open_input_stream(self.path, compression=None)
        except OSError as error:
            raise explain(error, self.url, self.store) from None
        return io.BufferedReader(_CountingReader(stream), STREAM_BLOCK)

    def open_random(self) -> Any:
        """A seekable file (ranged GETs): Parquet reads its footer first."""
        try:
            return self.filesystem.open_input_file(self.path)
        except OSError as error:
            raise explain(error, self.url, self.store) from None


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob over '/'-separated keys: `*` and `?` stay inside one level, `**/` spans levels."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and (end := pattern.find("]", i + 1)) > i:
            out.append("[" + pattern[i + 1 : end].replace("!", "^", 1) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def _remote_file(info: pafs.FileInfo, url: str, fs: pafs.FileSystem, store: ObjectStore):
    scheme = urlsplit(url).scheme
    return RemoteFile(f"{scheme}://{info.path}", info.path, info.size, info.mtime_ns, fs, store)


def _listing(fs: pafs.FileSystem, base: str, url: str, store: ObjectStore) -> list[pafs.FileInfo]:
    try:
        found = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    except OSError as error:
        raise explain(error, url, store) from None
    return [i for i in found if i.type == pafs.FileType.File and visible_key(i.path, base)]


def resolve_url(url: str, store: ObjectStore) -> list[RemoteFile]:
    """An object, every object under a prefix, or a glob (`s3://b/raw/**/*.jsonl.gz`), sorted.

    Checks the bucket first, so a down endpoint, refused credentials or a missing bucket fail
    here with their own message, before anything is read."""
    filesystem, path = store.filesystem(url)
    check_bucket(filesystem, path, url, store)
    if _GLOB.search(path):
        static = _GLOB.split(path, 1)[0]
        base = static.rsplit("/", 1)[0] if "/" in static else static
        pattern = _glob_regex(path)
        infos = [i for i in _listing(filesystem, base, url, store) if pattern.match(i.path)]
        what = "the glob matches no objects; check the pattern"
    else:
        info = file_info(filesystem, path, url, store)
        if info.type == pafs.FileType.File:
            return [_remote_file(info, url, filesystem, store)]
        infos = _listing(filesystem, path, url, store)
        what = "no such object, or no (non-hidden) objects under this prefix; check the URL"
    if not infos:
        raise RemoteError(f"{url}: {what} (at {store.where(url)})")
    infos.sort(key=lambda i: i.path)
    return [_remote_file(info, url, filesystem, store) for info in infos]
