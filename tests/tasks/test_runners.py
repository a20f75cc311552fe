"""The task runner named in the spec, and a down Dask scheduler failing fast by its address."""

from __future__ import annotations

import importlib.util
import socket
import time
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from flows.tokenization import tokenization
from pretrainlab.config import ComputeSpec, SpecError, spec_from_dict
from tasks.runners import (
    RunnerError,
    check_scheduler,
    scheduler_endpoint,
    task_runner,
    worker_gpu,
    worker_index,
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_default_is_a_thread_pool_of_the_configured_size() -> None:
    runner = task_runner(ComputeSpec())
    assert isinstance(runner, ThreadPoolTaskRunner) and runner._max_workers == 1
    assert task_runner(ComputeSpec(threads=3))._max_workers == 3


def test_dask_without_address_builds_a_local_cluster_of_n_processes() -> None:
    api = "http://127.0.0.1:4999/api"
    runner = task_runner(ComputeSpec(runner="dask", dask={"n_workers": 3}), api_url=api)
    assert isinstance(runner, DaskTaskRunner)
    assert runner.cluster_kwargs["n_workers"] == 3
    assert runner.cluster_kwargs["processes"] is True
    assert runner.cluster_kwargs["env"] == {  # workers report here, one OpenMP thread each
        "PREFECT_API_URL": api, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"
    }


def test_dask_address_that_listens_is_used_with_a_prefect_server() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"tcp://127.0.0.1:{server.getsockname()[1]}"
        compute = ComputeSpec(runner="dask", dask={"address": address})
        with (
            temporary_settings(restore_defaults={PREFECT_API_URL}),  # as in `pretrainlab run`
            pytest.raises(RunnerError, match="PREFECT_API_URL is not set"),
        ):
            task_runner(compute)  # remote workers cannot reach an ephemeral API
        with temporary_settings({PREFECT_API_URL: "http://10.0.0.2:4200/api"}):
            runner = task_runner(compute)
    assert isinstance(runner, DaskTaskRunner) and runner.address == address


def test_down_scheduler_fails_fast_naming_the_address() -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(RunnerError) as error:
        task_runner(ComputeSpec(runner="dask", dask={"address": address}))
    assert time.monotonic() - started < 6
    message = str(error.value)
    assert address in message and "compute.dask.address" in message
    assert "dask scheduler" in message  # what to start


def test_scheduler_addresses_parse_or_say_the_expected_form() -> None:
    assert scheduler_endpoint("tcp://10.0.0.5:8786") == ("10.0.0.5", 8786)
    assert scheduler_endpoint("scheduler:9000") == ("scheduler", 9000)
    assert scheduler_endpoint("tls://sched.example") == ("sched.example", 8786)
    with pytest.raises(RunnerError, match="expected tcp://HOST:PORT"):
        scheduler_endpoint("http://10.0.0.5:8786")
    with pytest.raises(RunnerError, match="port is not a number"):
        check_scheduler("tcp://host:notaport")


@pytest.mark.skipif(importlib.util.find_spec("prefect_ray") is not None, reason="has prefect-ray")
def test_ray_without_the_extra_says_what_to_install() -> None:
    with pytest.raises(RunnerError, match="pip install prefect-ray"):
        task_runner(ComputeSpec(runner="ray"))


def test_unknown_runner_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match=r"compute\.runner"):
        spec_from_dict({"corpus": {"sources": [{"path": "x"}]}, "compute": {"runner": "spark"}})


def test_tokenization_checks_the_scheduler_before_any_work(tmp_path: Path) -> None:
    spec = spec_from_dict(
        {
            "store": str(tmp_path / "store"),
            "corpus": {"sources": [{"path": "x"}]},
            "compute": {"runner": "dask", "dask": {"address": f"127.0.0.1:{free_port()}"}},
        }
    )
    with pytest.raises(RunnerError, match="no Dask scheduler answers"):
        tokenization.fn(spec, "no-such-corpus")  # fails before reading the corpus
    assert not (tmp_path / "store").exists()


def test_each_worker_of_a_multi_gpu_process_takes_its_own_gpu() -> None:
    assert [worker_gpu(4, worker) for worker in range(6)] == [0, 1, 2, 3, 0, 1]
    assert worker_gpu(1, 3) is None and worker_gpu(0, 3) is None  # its only GPU, or the CPU


def test_local_dask_workers_take_distinct_gpu_slots() -> None:
    from distributed import Client, LocalCluster

    assert worker_index() == 0  # outside a worker
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        workers = list(client.scheduler_info()["workers"])
        slots = [client.submit(worker_index, pure=False, workers=[address]).result()
                 for address in workers]  # as a task runs there: Prefect's tasks are Dask tasks
    assert sorted(slots) == [0, 1]
