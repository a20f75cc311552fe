"""Progress of long loops: a live bar with rate and ETA on a terminal, periodic log lines otherwise.

Pipelines take a plain `progress(done, items)` callback; this module turns it into something a
person (terminal) or a log reader (Prefect UI, CI) can follow.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

LOG_EVERY_S = 10.0


def stage_logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger inside a flow/task run (shows in the UI), a plain logger elsewhere."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("pretrainlab")


def _human(amount: float, unit: str) -> str:
    if unit == "B":
        for suffix in ("B", "KB", "MB", "GB", "TB"):
            if abs(amount) < 1000 or suffix == "TB":
                return f"{amount:.1f} {suffix}"
            amount /= 1000
    return f"{amount:,.0f} {unit}"


class ProgressReporter:
    """Callable `(done, items)`; use as a context manager around the loop it reports on."""

    def __init__(
        self, label: str, total: float | None = None, unit: str = "B", items: str = "docs"
    ) -> None:
        self.label, self.total, self.unit, self.items_name = label, total, unit, items
        self.interactive = sys.stderr.isatty()
        self._bar: Progress | None = None
        self._task = None
        self._start = self._last_log = time.monotonic()
        self._done = 0.0
        self._items = 0

    def __enter__(self) -> ProgressReporter:
        if self.interactive:
            amount = (
                (DownloadColumn(), TransferSpeedColumn())
                if self.unit == "B"
                else (MofNCompleteColumn(),)
            )
            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                *amount,
                TextColumn("{task.fields[items]}"),
                TimeRemainingColumn(),
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.total, items="")
        return self

    def __call__(self, done: float, items: int = 0) -> None:
        self._done, self._items = done, items
        if self._bar is not None:
            self._bar.update(self._task, completed=done, items=f"{items:,} {self.items_name}")
        elif time.monotonic() - self._last_log >= LOG_EVERY_S:
            self._last_log = time.monotonic()
            stage_logger().info(self.line())

    def line(self) -> str:
        elapsed = max(time.monotonic() - self._start, 1e-9)
        rate = self._done / elapsed
        parts = [f"{self.label}: {_human(self._done, self.unit)}"]
        if self.total:
            share = self._done / self.total
            eta = (self.total - self._done) / rate if rate > 0 else float("inf")
            parts.append(f"of {_human(self.total, self.unit)} ({share:.0%}), ETA {eta:.0f}s")
        parts.append(f"{_human(rate, self.unit)}/s, {self._items:,} {self.items_name}")
        return ", ".join(parts)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
        else:
            stage_logger().info(self.line() + " (done)")


ProgressCallback = Callable[[float, int], None]
