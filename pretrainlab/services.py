"""Local services for operating the lab: Prefect server, a process worker, an MLflow server.

`make up` / `pretrainlab up` starts the three on 127.0.0.1 with logs and pid files in a run
directory (default `.pretrainlab/run`); `make down` stops exactly the processes those pid files
name. Each service is started in its own session, so its process group holds it and every child
it spawns (uvicorn workers, the worker's flow-run subprocesses) and nothing else: stopping a
service signals that group only. Ports and names come from environment variables (see
`Settings.from_env`) so two checkouts or a test can run side by side.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pretrainlab.config import PretrainlabError, store_tracking_uri
from storage.atomic import pid_alive

HOST = "127.0.0.1"
ENV_RUN_DIR = "PRETRAINLAB_RUN_DIR"
ENV_STORE = "PRETRAINLAB_STORE"
ENV_PREFECT_PORT = "PRETRAINLAB_PREFECT_PORT"
ENV_MLFLOW_PORT = "PRETRAINLAB_MLFLOW_PORT"
ENV_POOL = "PRETRAINLAB_WORK_POOL"
SERVICES = ("mlflow", "prefect", "worker")  # start order; stopped in reverse


class ServiceError(PretrainlabError, RuntimeError):
    """A service cannot start or stop; the message names the port, log file or pid and the fix."""


@dataclass(frozen=True)
class Settings:
    """Where the services live and listen. Paths are absolute so any cwd can stop them."""

    run_dir: Path
    store: Path
    prefect_port: int = 4200
    mlflow_port: int = 5000
    pool: str = "pretrainlab"
    extra_env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from $PRETRAINLAB_* variables; defaults: .pretrainlab, ports 4200 and 5000."""
        env = os.environ if environ is None else environ
        store = Path(env.get(ENV_STORE, ".pretrainlab")).expanduser().resolve()
        run_dir = Path(env.get(ENV_RUN_DIR, str(store / "run"))).expanduser().resolve()
        return cls(
            run_dir=run_dir,
            store=store,
            prefect_port=_port(env, ENV_PREFECT_PORT, 4200),
            mlflow_port=_port(env, ENV_MLFLOW_PORT, 5000),
            pool=env.get(ENV_POOL, "pretrainlab"),
        )

    @property
    def prefect_url(self) -> str:
        return f"http://{HOST}:{self.prefect_port}"

    @property
    def prefect_api_url(self) -> str:
        return f"{self.prefect_url}/api"

    @property
    def mlflow_url(self) -> str:
        return f"http://{HOST}:{self.mlflow_port}"

    def client_env(self) -> dict[str, str]:
        """What a shell needs so `prefect` and pretrainlab talk to these servers."""
        return {"PREFECT_API_URL": self.prefect_api_url, "MLFLOW_TRACKING_URI": self.mlflow_url}


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ServiceError(f"${name}={raw!r}: expected a TCP port number (1-65535)")
    return int(raw)


@dataclass(frozen=True)
class ServiceState:
    """One service as `status` sees it."""

    name: str
    pid: int | None
    running: bool
    healthy: bool
    url: str
    log: Path
    detail: str = ""


# ------------------------------------------------------------------------------ commands


def _bin(name: str) -> str:
    """The console script next to this interpreter (the venv's), else whatever PATH finds."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def _command(name: str, settings: Settings) -> list[str]:
    if name == "prefect":
        return [_bin("prefect"), "server", "start", "--host", HOST,
                "--port", str(settings.prefect_port)]  # fmt: skip
    if name == "mlflow":
        return [
            _bin("mlflow"), "server",
            "--backend-store-uri", store_tracking_uri(settings.store),
            "--artifacts-destination", str(settings.store / "mlflow-artifacts"),
            "--host", HOST, "--port", str(settings.mlflow_port), "--workers", "1",
        ]  # fmt: skip
    return [_bin("prefect"), "worker", "start", "--pool", settings.pool, "--type", "process",
            "--name", f"{settings.pool}-local", "--install-policy", "never"]  # fmt: skip


def _env(name: str, settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            # The server's database and the worker's state live in the run dir, not ~/.prefect.
            "PREFECT_HOME": str(settings.run_dir / "prefect-home"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_API_URL": settings.prefect_api_url,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            **settings.extra_env,
        }
    )
    if name == "prefect":
        env.pop("PREFECT_API_URL", None)
    if name == "worker":
        # Flow runs the worker spawns inherit this: they report to the servers started here.
        env.update(settings.client_env())
    return env


# ----------------------------------------------------------------------------- processes


def _pid_file(settings: Settings, name: str) -> Path:
    return settings.run_dir / f"{name}.pid"


def _log_file(settings: Settings, name: str) -> Path:
    return settings.run_dir / f"{name}.log"


def _read_pid(settings: Settings, name: str) -> int | None:
    try:
        return int(json.loads(_pid_file(settings, name).read_text())["pid"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def _alive(pid: int) -> bool:
    """True when `pid` runs and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return pid_alive(pid)  # no /proc (macOS): existence is all we can tell
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _ours(settings: Settings, name: str, pid: int) -> bool:
    """The pid file's process is still the one we started (pids get reused)."""
    record = json.loads(_pid_file(settings, name).read_text())
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return _alive(pid)
    return _alive(pid) and record.get("marker", "") in cmdline


def port_in_use(port: int, host: str = HOST) -> bool:
    """True when something already listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def http_ok(url: str, timeout: float = 2) -> bool:
    """True when GET `url` answers 200 within `timeout` (a health check)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _health_url(name: str, settings: Settings) -> str | None:
    if name == "prefect":
        return f"{settings.prefect_api_url}/health"
    if name == "mlflow":
        return f"{settings.mlflow_url}/health"
    return None


def _service_port(name: str, settings: Settings) -> int | None:
    return {"prefect": settings.prefect_port, "mlflow": settings.mlflow_port}.get(name)


def _spawn(name: str, settings: Settings) -> int:
    command = _command(name, settings)
    log = _log_file(settings, name)
    with log.open("ab") as sink:
        sink.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
        sink.flush()
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=_env(name, settings),
            cwd=os.getcwd(),
            start_new_session=True,  # its own process group: stop signals it and its children
        )
    marker = " ".join(command[1:3])  # e.g. "server start", "worker start", "server --backend…"
    _pid_file(settings, name).write_text(json.dumps({"pid": process.pid, "marker": marker}))
    return process.pid


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _wait_healthy(name: str, settings: Settings, pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    check = _ready_check(name, settings)
    while time.monotonic() < deadline:
        if not _alive(pid):
            raise ServiceError(
                f"{name} exited during start-up; see {_log_file(settings, name)}:\n"
                f"{_tail(_log_file(settings, name))}"
            )
        if check():
            return
        time.sleep(0.5)
    raise ServiceError(
        f"{name} did not become ready within {timeout:.0f}s; see {_log_file(settings, name)}:\n"
        f"{_tail(_log_file(settings, name))}"
    )


def _ready_check(name: str, settings: Settings) -> Callable[[], bool]:
    url = _health_url(name, settings)
    if url is not None:
        return lambda: http_ok(url)
    return lambda: bool(online_workers(settings))


def start(settings: Settings, timeout: float = 180) -> list[ServiceState]:
    """Start whatever of mlflow, prefect and worker is not already running; wait until ready.

    A port held by a process we did not start is an error naming the port and the variable to
    change, raised before anything is started.
    """
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    settings.store.mkdir(parents=True, exist_ok=True)
    todo = [name for name in SERVICES if not _running(settings, name)]
    for name in todo:
        port = _service_port(name, settings)
        if port is not None and port_in_use(port):
            variable = ENV_PREFECT_PORT if name == "prefect" else ENV_MLFLOW_PORT
            raise ServiceError(
                f"cannot start {name}: port {port} on {HOST} is already in use by another "
                f"process. Stop that process, or choose a free port: {variable}=<port> make up"
            )
    # The two servers start side by side (each takes ~10 s); the worker needs Prefect's API.
    for group in ([n for n in todo if n != "worker"], [n for n in todo if n == "worker"]):
        pids = {name: _spawn(name, settings) for name in group}
        try:
            for name, pid in pids.items():
                _wait_healthy(name, settings, pid, timeout)
        except ServiceError:
            for name in pids:
                _stop_one(settings, name)
            raise
    return status(settings)


def _running(settings: Settings, name: str) -> bool:
    pid = _read_pid(settings, name)
    if pid is None:
        return False
    if _ours(settings, name, pid):
        return True
    _pid_file(settings, name).unlink(missing_ok=True)  # stale: the process is gone
    return False


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _proc_table() -> dict[int, tuple[int, int, str, str]]:
    """pid -> (parent pid, process group, state, start time) of every process, from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        table[int(entry.name)] = (int(fields[1]), int(fields[2]), fields[0], fields[19])
    return table


def _descendants(pid: int) -> set[tuple[int, str]]:
    """Every process below `pid` as (pid, start time), in any session: the worker starts each
    flow run in a session of its own, so signalling its group alone would orphan a running flow.
    The start time tells a descendant from a later process that reuses its pid."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for child, (parent, *_) in table.items():
        children.setdefault(parent, []).append(child)
    found, frontier = set(), [pid]
    while frontier:
        below = children.get(frontier.pop(), [])
        found.update((child, table[child][3]) for child in below)
        frontier.extend(below)
    return found


def _live(pgid: int, family: set[tuple[int, str]]) -> set[int]:
    """Live (non-zombie) processes of group `pgid` or of `family` (pid, start time)."""
    return {
        pid
        for pid, (_, group, state, started) in _proc_table().items()
        if state != "Z" and (group == pgid or (pid, started) in family)
    }


def _group_alive(pgid: int) -> bool:
    return bool(_live(pgid, set()))


def _stop_one(settings: Settings, name: str, timeout: float = 20) -> bool:
    """SIGTERM the service's process group and every descendant (flow runs included, which get
    to checkpoint), SIGKILL what is left after `timeout`."""
    pid = _read_pid(settings, name)
    if pid is None:
        return False
    stopped = False
    if _ours(settings, name, pid):
        family = _descendants(pid)
        _signal_group(pid, signal.SIGTERM)
        for child, _ in family:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(child, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _live(pid, family) and time.monotonic() < deadline:
            time.sleep(0.2)
        _signal_group(pid, signal.SIGKILL)
        for child in _live(pid, family):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(child, signal.SIGKILL)
        stopped = True
    _pid_file(settings, name).unlink(missing_ok=True)
    return stopped


def stop(settings: Settings, names: Iterable[str] = SERVICES) -> list[str]:
    """Stop the services this run dir started (worker first); returns the names stopped."""
    return [name for name in reversed(SERVICES) if name in names and _stop_one(settings, name)]


# -------------------------------------------------------------------------------- status


def prefect_api(settings: Settings, path: str, body: dict[str, Any] | None = None) -> Any:
    """GET (or POST `body` to) the Prefect server's REST API; its JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{settings.prefect_api_url}{path}",
        data=data,
        method="GET" if body is None else "POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read() or b"null")


def online_workers(settings: Settings) -> list[str]:
    """Names of the pool's workers the Prefect server sees online (heartbeat recent)."""
    try:
        workers = prefect_api(settings, f"/work_pools/{settings.pool}/workers/filter", {})
    except (urllib.error.URLError, OSError, ValueError):
        return []
    return [w["name"] for w in workers if w.get("status") == "ONLINE"]


def pool_state(settings: Settings) -> str:
    """A sentence on the work pool: its status and workers, or why there is none."""
    try:
        pool = prefect_api(settings, f"/work_pools/{settings.pool}")
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return f"work pool {settings.pool!r} does not exist yet (the worker creates it)"
        return f"work pool {settings.pool!r}: HTTP {error.code}"
    except (urllib.error.URLError, OSError, ValueError):
        return "Prefect server not reachable"
    workers = online_workers(settings)
    if not workers:
        return (
            f"work pool {settings.pool!r} is {pool.get('status')}: no worker online, so runs "
            "stay Scheduled; start one with `make up`"
        )
    return f"work pool {settings.pool!r} is {pool.get('status')}; workers: {', '.join(workers)}"


def status(settings: Settings) -> list[ServiceState]:
    """What is up: pid, liveness and health of each service, with its URL and log file."""
    states = []
    for name in SERVICES:
        pid = _read_pid(settings, name)
        running = pid is not None and _ours(settings, name, pid)
        url = {"prefect": settings.prefect_url, "mlflow": settings.mlflow_url}.get(
            name, f"pool {settings.pool}"
        )
        if name == "worker":
            healthy = running and bool(online_workers(settings))
            detail = pool_state(settings)
        else:
            health = _health_url(name, settings)
            healthy = health is not None and http_ok(health)
            port = _service_port(name, settings)
            detail = ""
            if not running and port is not None and port_in_use(port):
                detail = f"port {port} is held by a process not started from {settings.run_dir}"
        states.append(
            ServiceState(
                name,
                pid if running else None,
                running,
                healthy,
                url,
                _log_file(settings, name),
                detail,
            )
        )
    return states
