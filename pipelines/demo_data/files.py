"""Small deterministic writers and archive readers the builders share: the same bytes on
every fetch."""

from __future__ import annotations

import csv
import shutil
import tarfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from pipelines.demo_data.pins import DataFetchError
from storage.atomic import atomic_path
from storage.hashing import sha256_bytes


def write_lines(path: Path, lines: Iterable[str]) -> int:
    """UTF-8, '\\n' line ends, one item per line; returns the number of lines."""
    count = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as handle:
        for line in lines:
            handle.write(line + "\n")
            count += 1
    return count


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    count = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        for row in rows:
            writer.writerow(row)
            count += 1
    return count


def copy_file(source: Path, path: Path) -> None:
    with atomic_path(path) as tmp:
        shutil.copyfile(source, tmp)


def squash(text: str) -> str:
    """Collapse every run of whitespace (newlines included) to one space."""
    return " ".join(text.split())


def hash_int(key: str) -> int:
    """A stable pseudo-random integer: deterministic orders without Python's `random`."""
    return int(sha256_bytes(key.encode("utf-8"))[:16], 16)


def tar_texts(archive: Path, wanted: Callable[[str], bool]) -> dict[str, str]:
    """The UTF-8 text of every member `wanted` accepts, in one sequential pass over the gzip."""
    texts = {}
    with tarfile.open(archive, "r|gz") as tar:
        for member in tar:
            if member.isfile() and wanted(member.name):
                handle = tar.extractfile(member)
                data = handle.read() if handle else b""
                try:
                    texts[member.name] = data.decode("utf-8-sig")
                except UnicodeDecodeError as error:
                    raise DataFetchError(
                        f"{archive.name}: {member.name} is not UTF-8 ({error})"
                    ) from None
    return texts


def tar_text(archive: Path, member: str) -> str:
    texts = tar_texts(archive, lambda name: name == member)
    if member not in texts:
        raise DataFetchError(f"{archive.name}: {member} is missing from the archive")
    return texts[member]
