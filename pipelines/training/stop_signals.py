"""How a training loop hears "stop": SIGTERM (a cancel: `make down`, a worker, Kubernetes) and
SIGINT (Ctrl-C, which a terminal sends to every process of the foreground group) both become
a flag the loop checks after each step, so either one ends in a checkpoint and a resumable
run rather than a lost step. A second Ctrl-C stops at once.

Signal handlers exist only in the main thread; elsewhere the flag stays down and the signals
keep their usual effect.
"""

from __future__ import annotations

import contextlib
import signal
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """While entered, SIGTERM and SIGINT set `raised` to "sigterm" or "sigint" (the run's
    stopped_reason) instead of ending the process; the previous handlers come back on exit."""

    def __init__(self) -> None:
        self.raised: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        for sig in STOP_SIGNALS:
            with contextlib.suppress(ValueError):  # not the main thread: no handler, no flag
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.raised == "sigint":
            raise KeyboardInterrupt  # Ctrl-C twice: the user will not wait for the checkpoint
        self.raised = signal.Signals(signum).name.lower()

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
