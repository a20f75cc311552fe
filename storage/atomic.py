"""Atomic writes: a killed run never leaves a half file that a later run would trust.

Files are written to a temporary name in the same directory and renamed into place;
directories are built under a temporary name and renamed whole. A directory output is
complete only when its `_manifest.json` exists: it is the last file written.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST = "_manifest.json"


@contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path to write; rename it onto `final` only on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(final: str | Path, data: bytes) -> Path:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)
    return Path(final)


def write_json(final: str | Path, obj: Any) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=True, default=str, ensure_ascii=False)
    return write_bytes(final, (text + "\n").encode("utf-8"))


def write_parquet(final: str | Path, table: pa.Table, **options: Any) -> Path:
    with atomic_path(final) as tmp:
        pq.write_table(table, tmp, **options)
    return Path(final)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(final: Path) -> list[Path]:
    """Delete temp dirs of `final` left by killed runs (their pid is gone); return them."""
    removed = []
    for tmp in final.parent.glob(f".{final.name}.tmp-*"):
        pid = tmp.name.rsplit(".tmp-", 1)[1].split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


@contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Build a directory under a temporary name; rename it onto `final` on success.

    The temp name carries this process's pid, so leftovers of killed runs are recognised and
    removed. If `final` already exists complete (another run won the race), the new one is
    dropped: outputs are content-addressed, so both are the same result.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
    try:
        yield tmp
        if is_complete(final):
            return
        if final.exists():
            shutil.rmtree(final)  # an incomplete leftover: never trusted
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_manifest(directory: str | Path, manifest: dict[str, Any]) -> Path:
    """Mark a directory output complete; the manifest is its summary."""
    return write_json(Path(directory) / MANIFEST, manifest)


def read_manifest(directory: str | Path) -> dict[str, Any] | None:
    """The manifest of a complete output, or None when absent or unreadable."""
    path = Path(directory) / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_complete(directory: str | Path) -> bool:
    return read_manifest(directory) is not None


@contextmanager
def exclusive(target: str | Path, waiting: Callable[[str], None] | None = None) -> Iterator[None]:
    """Let one process at a time build `target` (e.g. train a model into its work directory):
    two pipeline runs on one store then wait for each other instead of interleaving checkpoints.
    An flock is released by the kernel when its holder dies, so a killed run never blocks."""
    target = Path(target)
    lock = target.with_name(f".{target.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            if waiting is not None:
                waiting(f"another run (pid {holder}) is building {target}: waiting for it")
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
