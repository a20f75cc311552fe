"""Check every input before any work: the corpus sources and the task files.

`pretrainlab check` and the start of `pretrainlab run` call this, so a missing file, a demo
dataset not fetched or a task file with a wrong column fails in seconds instead of after
ingestion and pretraining. It reads (the start of each source file, every task file in full:
task loading is fast) and writes nothing. Problems are collected, one line each, not only the
first. Modes and families need no check here: they are parsed when the spec loads.

No Prefect and no MLflow are imported here: `pretrainlab check` must answer in seconds.
"""

from __future__ import annotations

import lzma
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from pipelines.data.ingest.sources import detect_format, file_size, open_source, source_input
from pipelines.data.task_data import TaskData, load_task
from pretrainlab.config import PretrainlabError, Spec
from storage.remote import ObjectStore
from storage.remote_sources import RemoteFile
from tasks.stamps import STAGES

HEAD_BYTES = 1 << 16  # read this much of each local source: opens, decompresses, encoding
UNREADABLE = (OSError, EOFError, ValueError, lzma.LZMAError, zstandard.ZstdError)


class InputError(PretrainlabError):
    """One or more inputs of the spec cannot be used; one line per problem, each with its fix."""


@dataclass(frozen=True)
class SourceSummary:
    where: str  # the spec field: corpus.sources[0]
    label: str  # the path or glob, or dataset:<name>
    files: int
    bytes: int


@dataclass
class InputCheck:
    """What was checked, and every problem found (empty: the inputs are usable)."""

    sources: list[SourceSummary] = field(default_factory=list)
    tasks: list[TaskData] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    grids: dict[str, int] = field(default_factory=dict)  # learning rates searched per mode

    def summary(self) -> list[str]:
        """A few lines a person reads to see that the sources resolved and each task loaded."""
        n_files = sum(s.files for s in self.sources)
        lines = [f"sources: {n_files} file(s), {_size(sum(s.bytes for s in self.sources))}"]
        lines += [f"  {s.label}: {s.files} file(s), {_size(s.bytes)}" for s in self.sources]
        lines += [f"tasks: {len(self.tasks)}"] + [f"  {_describe(task)}" for task in self.tasks]
        return lines + _grids_line(self.grids)


def _grids_line(grids: dict[str, int]) -> list[str]:
    """The tuning effort per mode; unequal grids are a warning (more rates, more chances)."""
    if not grids:
        return []
    listing = ", ".join(f"{name} {size}" for name, size in grids.items())
    if len(set(grids.values())) == 1:
        return [f"learning-rate grids: {listing} (the same size for every mode)"]
    return [f"warning: unequal learning-rate grids ({listing}): a mode with more rates gets more "
            "chances on dev; give every mode a grid of the same size in transfer.lrs"]


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:,.1f} MB" if n_bytes >= 100_000 else f"{n_bytes:,} bytes"


def _describe(task: TaskData) -> str:
    sizes = f"{len(task.train)}/{len(task.dev)}/{len(task.test)} train/dev/test"
    line = f"{task.name} ({task.kind}): {sizes}, {len(task.labels)} labels"
    if task.unseen:
        counts = ", ".join(f"{split} {n}" for split, n in task.unseen_labels.items() if n)
        shown = ", ".join(task.unseen[:5]) + (", ..." if len(task.unseen) > 5 else "")
        line += f"; {len(task.unseen)} label(s) never in train ({shown}): {counts} scored as errors"
    return line


# --- sources ---------------------------------------------------------------------------------


def _check_head(path: Path, fmt: str) -> None:
    """Open the file and decode its first block: unreadable, a fake or truncated archive, a
    UTF-16 text fail here, not mid-ingest."""
    fmt = detect_format(path) if fmt == "auto" else fmt
    try:
        with open_source(path, fmt) as (_raw, stream):
            stream.read(HEAD_BYTES)
    except UNREADABLE as error:
        raise InputError(
            f"{path}: cannot read the start of the file ({type(error).__name__}: {error}); check "
            "that it is readable and that its compression suffix matches its content"
        ) from None


def check_sources(spec: Spec, check: InputCheck) -> None:
    """Every source resolves to readable files; demo datasets are fetched."""
    store = ObjectStore.from_settings(spec.storage)
    for index, source in enumerate(spec.corpus.sources):
        where = f"corpus.sources[{index}]"
        try:
            found = source_input(source, spec.data_dir, store)
            label, files = found.label, found.paths
            for path in files:
                if not isinstance(path, RemoteFile):  # listing a URL already reached it
                    _check_head(path, found.format)
        except PretrainlabError as error:
            check.problems.append(f"{where}: {error}")
            continue
        size = sum(file_size(path) for path in files)
        check.sources.append(SourceSummary(where, label, len(files), size))


# --- tasks -----------------------------------------------------------------------------------


def check_tasks(spec: Spec, check: InputCheck) -> None:
    """Every task file loads: header, columns, format, labels, non-empty splits."""
    data_dir = Path(spec.data_dir) if spec.data_dir else None
    for index, task in enumerate(spec.transfer.tasks):
        try:
            check.tasks.append(load_task(task, data_dir))
        except PretrainlabError as error:
            check.problems.append(f"transfer.tasks[{index}] ({task.name}): {error}")


def needs_tasks(until: str) -> bool:
    """Whether the stages up to `until` read the task files (`--until pretrain` does not)."""
    return STAGES.index(until) >= STAGES.index("transfer")


def check_inputs(spec: Spec, tasks: bool = True) -> InputCheck:
    """Check the sources and (unless `tasks` is false) the task files; collect every problem."""
    check = InputCheck()
    check_sources(spec, check)
    if tasks:
        check_tasks(spec, check)
        check.grids = spec.transfer.grid_sizes()
    return check


def require_inputs(spec: Spec, origin: str = "the spec", tasks: bool = True) -> InputCheck:
    """`check_inputs`, raising one InputError that lists every problem."""
    check = check_inputs(spec, tasks)
    if check.problems:
        count = len(check.problems)
        lines = [f"{origin}: {count} problem(s) with the inputs; nothing was run or written"]
        raise InputError("\n".join(lines + [f"  {problem}" for problem in check.problems]))
    return check
