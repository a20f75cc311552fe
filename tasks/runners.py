"""The Prefect task runner the spec asks for: where per-shard tasks and transfer cells run.

`compute.runner: thread` (default) keeps shards in this process; `dask` hands them to a Dask
cluster (a local one of `n_workers` processes, or an existing scheduler at `address`) through
prefect-dask; `ray` to a Ray cluster through prefect-ray, an optional extra imported only when
asked for. A cluster that cannot be reached fails here, in seconds and naming the address,
before any shard is encoded.

Workers in other processes report their task runs to the Prefect API. A local Dask cluster is
handed this process's API URL (the ephemeral server `pretrainlab run` starts included); workers
of an existing cluster must reach a real server, so there `PREFECT_API_URL` must be set.

GPUs: on a multi-GPU machine each worker takes its own GPU. A local Dask cluster's worker i runs
its cells on GPU i mod (GPUs visible); a Ray cell asks for `compute.ray.gpus_per_cell` GPUs and
Ray shows it only those (as cuda:0), as dask-cuda workers see only their own.

Workers this module starts (local Dask processes, Ray workers) get `OMP_NUM_THREADS=1`: a cell
sets its own torch thread count (`compute.cell_threads`), and one thread per worker keeps
workers on a shared machine from oversubscribing its cores. `submit_all` hands calls to a
started runner, collects their results in the driver as they finish, and submits a call whose
worker died again.
"""

from __future__ import annotations

import contextlib
import os
import socket
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from prefect import Task
from prefect.client.orchestration import get_client
from prefect.exceptions import CrashedRun
from prefect.futures import PrefectFuture, as_completed
from prefect.settings import PREFECT_API_URL
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from pretrainlab.config import ComputeSpec, PretrainlabError
from tasks.progress import stage_logger

CONNECT_TIMEOUT_S = 5.0
DASK_DEFAULT_PORT = 8786
WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# What a call raises when the process running it died (not an error of the call itself).
WORKER_DIED = {"KilledWorker", "WorkerCrashedError", "NodeDiedError", "CommClosedError",
               "ActorDiedError", "OwnerDiedError", "ObjectLostError", "CrashedRun"}


class RunnerError(PretrainlabError, RuntimeError):
    """A task runner that cannot start; the message names the setting, the address and the fix."""


def scheduler_endpoint(address: str) -> tuple[str, int]:
    """(host, port) of a Dask scheduler address: `tcp://host:port`, `tls://…` or `host:port`."""
    parsed = urllib.parse.urlsplit(address if "://" in address else f"tcp://{address}")
    if parsed.scheme not in ("tcp", "tls") or not parsed.hostname:
        raise RunnerError(
            f"compute.dask.address {address!r}: expected tcp://HOST:PORT (or tls://HOST:PORT), "
            "e.g. tcp://10.0.0.5:8786"
        )
    try:
        port = parsed.port or DASK_DEFAULT_PORT
    except ValueError:
        raise RunnerError(f"compute.dask.address {address!r}: the port is not a number") from None
    return parsed.hostname, port


def check_scheduler(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast when nothing listens at the scheduler's address (a TCP connect, no Dask call)."""
    host, port = scheduler_endpoint(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise RunnerError(
            f"compute.dask.address {address}: no Dask scheduler answers at {host}:{port} "
            f"({reason}). Start one there (`dask scheduler --port {port}` plus "
            "`dask worker <address>` on each machine), fix the address, or remove it to run a "
            "local cluster"
        ) from None


def current_api_url() -> str:
    """The Prefect API this process reports to, an ephemeral server included."""
    with get_client(sync_client=True) as client:
        return str(client.api_url)


def _require_api_server(setting: str, address: str | None) -> None:
    """Workers elsewhere cannot reach this process's ephemeral API: ask for a real server."""
    if not PREFECT_API_URL.value():
        raise RunnerError(
            f"{setting} {address or '(local)'}: the cluster's workers report to Prefect, but "
            "PREFECT_API_URL is not set (this run uses a private ephemeral API). Start a Prefect "
            "server (`make up`), export PREFECT_API_URL here and on every worker, and re-run"
        )


def _ray_runner_class() -> type[TaskRunner]:
    try:
        from prefect_ray import RayTaskRunner
    except ImportError:
        raise RunnerError(
            "compute.runner is 'ray' but prefect-ray is not installed: "
            "`pip install prefect-ray` on this machine (and every Ray node), or use runner: dask"
        ) from None
    return RayTaskRunner


def check_compute(compute: ComputeSpec) -> None:
    """Everything that can be checked without starting a cluster: call before heavy work."""
    if compute.runner == "dask" and compute.dask.address:
        check_scheduler(compute.dask.address)
        _require_api_server("compute.dask.address", compute.dask.address)
    elif compute.runner == "ray":
        _ray_runner_class()
        _require_api_server("compute.ray.address", compute.ray.address)


def task_runner(compute: ComputeSpec, api_url: str | None = None) -> TaskRunner:
    """A fresh task runner for `compute` (a runner is entered once per flow run), checked first.

    `api_url`: the Prefect API local Dask workers report to; default this process's."""
    check_compute(compute)
    if compute.runner == "ray":
        ray = _ray_runner_class()
        init = {"runtime_env": {"env_vars": dict(WORKER_ENV)}}  # used when this starts Ray
        if compute.ray.address:
            return ray(address=compute.ray.address, init_kwargs=init)
        return ray(init_kwargs={**init, "include_dashboard": False})
    if compute.runner == "thread":
        return ThreadPoolTaskRunner(max_workers=compute.threads)
    from prefect_dask import DaskTaskRunner

    if compute.dask.address:
        return DaskTaskRunner(address=compute.dask.address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": compute.dask.n_workers,
            "threads_per_worker": compute.dask.threads_per_worker,
            "processes": True,
            "dashboard_address": None,
            "env": {"PREFECT_API_URL": api_url or current_api_url(), **WORKER_ENV},
        }
    )


def describe(compute: ComputeSpec) -> str:
    """One line for the logs: which runner, where."""
    if compute.runner == "dask":
        where = compute.dask.address or f"local cluster, {compute.dask.n_workers} processes"
        return f"dask ({where})"
    if compute.runner == "ray":
        return f"ray ({compute.ray.address or 'local'})"
    return f"thread pool ({compute.threads} at once)"


def worker_died(error: BaseException) -> bool:
    """Whether `error` says the worker process running a call died (killed, out of memory, its
    node lost), as Dask, Ray or Prefect report it, rather than that the call failed."""
    return isinstance(error, CrashedRun) or bool(
        {t.__name__ for t in type(error).__mro__} & WORKER_DIED
    )


def submit_all(
    runner: TaskRunner,
    task: Task,
    calls: Sequence[dict[str, Any]],
    done: Callable[[int, Any], None],
    retries: int,
) -> None:
    """Run `task` once per parameter dict of `calls` on the started `runner`; `done(i, result)`
    runs here, in the driver, as each call finishes. A call whose worker died is submitted
    again, at most `retries` times. Any other error is raised once every call has finished, so
    the finished ones are all handed to `done` (a re-run reuses them)."""
    batch: dict[PrefectFuture, tuple[int, int]] = {
        runner.submit(task, parameters=call): (i, 0) for i, call in enumerate(calls)
    }
    errors: list[BaseException] = []
    while batch:
        again: dict[PrefectFuture, tuple[int, int]] = {}
        for future in as_completed(list(batch)):
            i, tries = batch[future]
            try:
                result = future.result()
            except Exception as error:  # sorted below: retried or raised
                if worker_died(error) and tries < retries:
                    stage_logger().warning(
                        f"{task.name} call {i + 1}: its worker died ({type(error).__name__}); "
                        f"submitting it again (retry {tries + 1} of {retries})"
                    )
                    again[runner.submit(task, parameters=calls[i])] = (i, tries + 1)
                else:
                    errors.append(error)
                continue
            done(i, result)
        batch = again
    if errors:
        raise errors[0]


def worker_index() -> int:
    """This worker's number: a local Dask worker's name (0..n-1); 0 anywhere else."""
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):  # not inside a Dask worker
        return 0
    return name if isinstance(name, int) else 0


def worker_gpu(visible: int, worker: int) -> int | None:
    """The GPU a worker's cells use when its process sees several: worker i takes GPU i mod
    `visible`. None when it sees one or none (its only GPU is the current one)."""
    return worker % visible if visible > 1 else None


@contextlib.contextmanager
def on_worker_gpu() -> Iterator[dict[str, str]]:
    """Run the body on this worker's GPU (the current CUDA device while it runs); yields the
    placement tags its MLflow run records."""
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    gpu = worker_gpu(visible, worker_index())
    tags = {"device": "cpu" if not visible else f"cuda:{0 if gpu is None else gpu}"}
    if (ids := os.environ.get("CUDA_VISIBLE_DEVICES")) is not None:
        tags["cuda_visible_devices"] = ids
    with torch.cuda.device(gpu) if gpu is not None else contextlib.nullcontext():
        yield tags


def cell_resources(compute: ComputeSpec) -> contextlib.AbstractContextManager:
    """What each call submitted inside asks of the runner: Ray GPUs per transfer cell."""
    if compute.runner != "ray" or not compute.ray.gpus_per_cell:
        return contextlib.nullcontext()
    from prefect_ray.context import remote_options

    return remote_options(num_gpus=compute.ray.gpus_per_cell)
