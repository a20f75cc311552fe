"""Content hashes: the identity of every stage output.

A stage's output path contains a hash of its inputs (data, settings, and the source of the
code that computes it), so an unchanged re-run is a cache hit and a code fix is never answered
from an old cache. sha256 runs at ~1.8 GB/s here (SHA-NI), i.e. at disk speed.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import inspect
import json
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

CHUNK = 1 << 20
SHORT = 16  # hex chars kept in ids: 64 bits, collision-free at any corpus count a lab sees


def sha256_file(path: str | Path) -> str:
    """Hash a file's bytes in 1 MiB chunks (bounded memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: equal settings give equal text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)


def stable_hash(obj: Any) -> str:
    """Short hash of any JSON-able value (settings, lists of file hashes)."""
    return sha256_bytes(canonical_json(obj).encode("utf-8"))[:SHORT]


def code_hash(modules: Iterable[ModuleType]) -> str:
    """Hash the source of the modules that compute an output, so editing them invalidates it."""
    digest = hashlib.sha256()
    for module in sorted(modules, key=lambda m: m.__name__):
        digest.update(module.__name__.encode())
        digest.update(inspect.getsource(module).encode("utf-8"))
    return digest.hexdigest()[:SHORT]


@functools.cache
def source_tree_hash(packages: tuple[str, ...]) -> str:
    """Hash every .py file of these packages (installed or in a checkout): any code edit
    changes it, so a stage-level cache never answers for code that has since changed. Read once
    per process: the code a process runs is the code it imported (every stage key asks)."""
    digest = hashlib.sha256()
    for package in sorted(packages):
        found = importlib.util.find_spec(package)
        roots = list(found.submodule_search_locations or []) if found else []
        for root in roots:
            for path in sorted(Path(root).rglob("*.py")):
                digest.update(str(path.relative_to(root)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:SHORT]
