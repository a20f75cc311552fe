"""Suite-wide set-up: offline hubs, one Prefect test harness, nothing leaking between tests."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"
os.environ.pop("MLFLOW_TRACKING_URI", None)

import random

import pytest


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    try:
        import numpy as np
        import torch

        np.random.seed(0)
        torch.manual_seed(0)
    except ImportError:
        pass


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test: results bit-identical whatever the machine, and on a shared
    2-core machine two threads would spin-wait each other."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect API for the whole session (~9 s to start), shared by flow tests."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(autouse=True)
def _no_tracking_uri_leaks():
    """mlflow.set_tracking_uri also sets $MLFLOW_TRACKING_URI: never let one test's store leak."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    yield
    os.environ.pop("MLFLOW_TRACKING_URI", None)
