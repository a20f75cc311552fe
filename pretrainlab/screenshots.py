"""PNGs of the running lab for the README: the Prefect deployment and run, MLflow's versions.

`make screenshots` (needs `make up`, `make deploy` and one completed pipeline run) drives a
headless Chromium over the pages `screenshot_pages` names.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pretrainlab.services import ServiceError, Settings, prefect_api


def screenshot_pages(settings: Settings, experiment: str) -> dict[str, str]:
    """The UI pages the README shows: the nightly deployment, its latest completed run, the
    registered models of `experiment`, and MLflow's side-by-side of their pretraining runs."""
    from mlflow import MlflowClient

    deployment = prefect_api(settings, "/deployments/name/pipeline/nightly")
    pages = {"prefect-deployment": f"{settings.prefect_url}/deployments/deployment/"
             f"{deployment['id']}"}  # fmt: skip
    runs = prefect_api(
        settings,
        "/flow_runs/filter",
        {"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}, "deployment_id": {
            "any_": [deployment["id"]]}}, "sort": "END_TIME_DESC", "limit": 1},
    )  # fmt: skip
    if runs:
        pages["prefect-flow-run"] = f"{settings.prefect_url}/runs/flow-run/{runs[0]['id']}"
    client = MlflowClient(tracking_uri=settings.mlflow_url, registry_uri=settings.mlflow_url)
    versions = client.search_model_versions(f"name LIKE '{experiment}-%'")
    if not versions:
        raise ServiceError(
            f"no registered model versions named {experiment}-* on {settings.mlflow_url}: run "
            "the pipeline deployment first (see README, Operate)"
        )
    by_name: dict[str, list[Any]] = {}
    for version in versions:
        by_name.setdefault(version.name, []).append(version)
    name = max(sorted(by_name), key=lambda n: len(by_name[n]))
    # Two or more versions of one model side by side; else one version of every family.
    chosen = by_name[name] if len(by_name[name]) > 1 else versions
    run_ids = sorted({v.run_id for v in chosen})
    experiment_ids = sorted({client.get_run(r).info.experiment_id for r in run_ids})
    pages["mlflow-models"] = f"{settings.mlflow_url}/#/models/{name}"
    pages["mlflow-compare-versions"] = (
        f"{settings.mlflow_url}/#/compare-runs?runs={json.dumps(run_ids)}"
        f"&experiments={json.dumps(experiment_ids)}"
    ).replace(" ", "")
    return pages


def take_screenshots(pages: Mapping[str, str], out_dir: Path, browser: str = "chromium") -> list:
    """PNG of each page with a headless browser (Debian: `apt-get install chromium`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    taken = []
    for name, url in pages.items():
        target = out_dir / f"{name}.png"
        command = [browser, "--headless", "--no-sandbox", "--disable-gpu",
                   "--hide-scrollbars", "--window-size=1600,1100",
                   "--virtual-time-budget=15000", f"--screenshot={target}", url]  # fmt: skip
        try:
            subprocess.run(command, check=True, capture_output=True, timeout=120)
        except FileNotFoundError:
            raise ServiceError(
                f"{browser!r} not found: install it (Debian: apt-get install -y chromium) or "
                "set BROWSER=<path to chromium>"
            ) from None
        except subprocess.CalledProcessError as error:
            raise ServiceError(
                f"{browser} could not capture {url}: {error.stderr.decode()[-500:]}"
            ) from None
        taken.append(target)
    return taken
