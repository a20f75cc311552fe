"""Stage bookkeeping, written once for every task: an output's key, whether it is complete
already (here, or on the store's mirror), and publishing it once built.

A task names its output and passes the function that builds it; `cached_output` does the rest:
pull a complete copy from the mirror, reuse a complete one, else build it and push it. A task
body is then its work and nothing else.

Complete means a directory whose `_manifest.json` exists (the last file written), or a single
file (result rows, a tokenizer index entry) that exists: files are written whole, atomically.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from pretrainlab.config import Spec
from storage.atomic import exclusive, read_manifest
from storage.hashing import code_hash, stable_hash
from storage.layout import Layout
from storage.remote import Mirror, open_mirror
from tasks.progress import stage_logger

T = TypeVar("T")
Reader = Callable[[Path], T | None]  # the recorded result of a complete output, else None
Pointer = Callable[[str], Path]  # an index entry's id -> the output it names


def content_key(inputs: dict[str, Any], code: Iterable[ModuleType]) -> str:
    """An output's identity: what it is computed from plus the source of the code computing it,
    so a bug fix is never answered from an old cache."""
    return stable_hash({**inputs, "code": code_hash(code)})


@dataclass(frozen=True)
class Store:
    """The spec's store: where outputs live, and the mirror (if any) they are copied to."""

    layout: Layout
    mirror: Mirror | None

    def sync(self, path: Path, target_of: Pointer | None = None) -> str:
        """Pull a complete remote copy the store lacks, or push a complete local one the mirror
        lacks. With `target_of`, `path` is an index entry and the output it names goes first."""
        if self.mirror is None:
            return "local"
        if target_of is not None:
            return self.mirror.sync_pointer(path, target_of)
        return self.mirror.sync(path)


def store_of(spec: Spec) -> Store:
    """The store the spec names; its mirror is checked once per process (fails fast)."""
    layout = Layout.at(spec.store)
    return Store(layout, open_mirror(layout.store, spec.storage))


def manifest_hit(path: Path) -> dict[str, Any] | None:
    """A complete directory's manifest, as a cache hit."""
    found = read_manifest(path)
    return None if found is None else {**found, "output": str(path), "cache_hit": True}


def reuse(
    store: Store, path: Path, read: Reader = manifest_hit, target_of: Pointer | None = None
) -> Any:
    """The recorded result of `path` when it is complete here or on the mirror, else None."""
    store.sync(path, target_of)
    return read(path)


def cached_output(
    store: Store,
    path: Path,
    build: Callable[[Path], T],
    read: Reader = manifest_hit,
    *,
    lock: bool = False,
    target_of: Pointer | None = None,
    hit: Callable[[Any], str] | None = None,
) -> T:
    """Reuse the complete output at `path` (pulled from the mirror if need be), or build it and
    push it. `build(path)` writes the output (a directory's manifest last) and returns its
    result; `read(path)` returns the result of a complete one. With `lock`, one process at a
    time builds it: a second run waits, then reuses. `hit` says what a reuse logs."""
    with exclusive(path, stage_logger().info) if lock else nullcontext():
        found = reuse(store, path, read, target_of)
        if found is not None:
            if hit is not None:
                stage_logger().info(hit(found))
            return found
        built = build(path)
        store.sync(path, target_of)
        return built
