"""The temporary Prefect API of one `pretrainlab run`, when no PREFECT_API_URL is configured.

Prefect's ephemeral mode starts this same server (uvicorn on `prefect.server.api.server:
create_app` with PREFECT__SERVER_EPHEMERAL=1, see `SubprocessASGIServer`) on the first client
call, as a child in the CLI's process group. `pretrainlab run` starts it itself, for two reasons:

- Ctrl-C. A terminal sends SIGINT to the whole foreground process group: Prefect's child died
  with the CLI, which then retried the dead API for over a minute instead of checkpointing and
  exiting. Here the server runs in a session of its own, so only the CLI hears the Ctrl-C; the
  CLI stops the server at exit, and on Linux the server also gets SIGTERM when the CLI dies any
  other way (parent-death signal), so no server outlives its run.
- Start-up time. The server boots in ~5 s of CPU. Spawned first thing, before the CLI even
  imports Prefect, it boots on the second core while the CLI imports the stage code and checks
  the caches; and the CLI never imports `prefect.server` (~3 s of CPU) to launch a subprocess.

The URL is published to Prefect's settings (`publish`) only once the server answers, after the
CLI's pre-flight: a check such as "a Dask cluster elsewhere needs a real server" still sees no
PREFECT_API_URL there. On the way out Prefect's queued logs and events are sent first (as
`prefect_test_harness` does), then the server stops and the URL is withdrawn. Use it from the
main thread (the parent-death signal belongs to the thread that forked).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from pretrainlab.services import HOST, ServiceError, http_ok

PORT_IN_USE_EXIT = 3  # uvicorn's exit status when it cannot bind its port
STARTUP_TIMEOUT_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
PR_SET_PDEATHSIG = 1
# uvicorn's own command line (`python -c SERVE <uvicorn args>`), with no cyclic collection while
# Prefect's server code loads: ~0.8 s of a ~5 s boot, for objects that live as long as it.
SERVE = (
    "import gc; gc.disable(); import prefect.server.api.server; gc.enable(); gc.freeze(); "
    "from uvicorn.main import main; main()"
)


def configured_api_url() -> str | None:
    """The Prefect API the user's settings name (env, profile, a test harness), if any."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _own_session(parent: int) -> Callable[[], None]:
    """preexec_fn: a session of its own (no terminal signals), and SIGTERM when `parent` dies."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None

    def setup() -> None:
        os.setsid()
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != parent:  # the parent died before prctl took effect
                os._exit(1)

    return setup


class TemporaryApi:
    """One uvicorn process serving Prefect's API on 127.0.0.1 for this process's flow runs."""

    def __init__(self) -> None:
        self.port = 0
        self.process: subprocess.Popen | None = None
        # The server's output, shown if it fails to start; open as long as the server runs.
        self._log: IO[bytes] = tempfile.TemporaryFile(prefix="pretrainlab-api-")  # noqa: SIM115
        self._before: dict[str, str | None] | None = None  # the variables `publish` replaced

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/api"

    @classmethod
    def spawn(cls) -> TemporaryApi:
        """Start the server and return at once; `publish` waits until it answers."""
        api = cls()
        api._launch()
        atexit.register(api.stop)  # however the process ends, the server goes with it
        return api

    def _launch(self) -> None:
        """Start uvicorn without importing Prefect here; it reads the same environment, profile
        and PREFECT_HOME as this process would."""
        spec = importlib.util.find_spec("prefect")
        assert spec is not None and spec.origin is not None, "prefect is not installed"
        self.port = _free_port()
        env = {
            **os.environ,
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
        }
        command = [
            sys.executable, "-c", SERVE, "--app-dir", str(Path(spec.origin).parents[1]),
            "--factory", "prefect.server.api.server:create_app", "--host", HOST,
            "--port", str(self.port), "--log-level", "error", "--lifespan", "on",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=_own_session(os.getpid()),
        )

    def _output(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-3000:]

    def wait_ready(self) -> None:
        """Block until the server answers; a port taken meanwhile gets another one."""
        timeout = float(os.environ.get(STARTUP_TIMEOUT_ENV) or 180)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            code = self.process.poll()
            if code == PORT_IN_USE_EXIT:
                self._launch()
                continue
            if code is not None:
                raise ServiceError(
                    f"the temporary Prefect API exited with status {code} during start-up:\n"
                    f"{self._output()}\nStart a Prefect server (`make up`) and export "
                    "PREFECT_API_URL to use it instead"
                )
            if http_ok(f"{self.url}/health"):
                return
            time.sleep(0.1)
        self.stop()
        raise ServiceError(
            f"the temporary Prefect API did not answer within {timeout:.0f}s (a busy machine?). "
            f"Raise ${STARTUP_TIMEOUT_ENV}, or start a Prefect server (`make up`) and export "
            "PREFECT_API_URL"
        )

    def publish(self) -> None:
        """Wait until the server answers, then point this process's Prefect client at it. No
        UI URL: the server has no UI (as in ephemeral mode), so no "View at" links are logged."""
        self.wait_ready()
        self._before = _set_environ({"PREFECT_API_URL": self.url, "PREFECT_UI_URL": ""})

    def stop(self, timeout: float = 5) -> None:
        """Send what Prefect still queues, SIGTERM the server's group (SIGKILL after `timeout`),
        forget its URL. Idempotent."""
        if self._before is not None and self.process is not None and self.process.poll() is None:
            _drain_prefect()
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            self.process = None
        if self._before is not None:
            _set_environ(self._before)
            self._before = None
        self._log.close()


def _set_environ(values: dict[str, str | None]) -> dict[str, str | None]:
    """Set (None: unset) variables and rebuild Prefect's settings, which it reads once, at
    import; returns the previous values."""
    import prefect.context

    previous = {name: os.environ.get(name) for name in values}
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    prefect.context.refresh_global_settings_context()
    return previous


def _drain_prefect() -> None:
    """Deliver the logs and events Prefect's background workers still hold for this API."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(RuntimeError):  # a worker that never started
            worker.drain_all(timeout=5)


@contextlib.contextmanager
def temporary_api(needed: bool = True) -> Iterator[TemporaryApi | None]:
    """A started TemporaryApi for the block (call `publish` before the first flow), stopped at
    its end; None when not `needed` or when the settings already name a Prefect API. Spawned
    before Prefect is imported: a URL set in a Prefect profile (rare; `make up` exports
    $PREFECT_API_URL) is found only afterwards, and that server is stopped unused."""
    if not needed or os.environ.get("PREFECT_API_URL"):
        yield None
        return
    api = TemporaryApi.spawn()
    try:
        if configured_api_url():
            api.stop()
            yield None
        else:
            yield api
    finally:
        api.stop()
