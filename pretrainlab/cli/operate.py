"""Operating the lab: start, stop and inspect the local Prefect and MLflow services."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pretrainlab.cli.common import console, fail, out
from pretrainlab.config import PretrainlabError


def _service_settings():
    from pretrainlab import services

    try:
        return services.Settings.from_env()
    except PretrainlabError as error:
        fail(error)


def _print_services(states, settings) -> None:
    table = Table("service", "state", "pid", "url", "log")
    for state in states:
        if state.healthy and state.running:
            mark = "[green]up[/]"
        elif state.healthy:
            mark = "[yellow]up, not started here[/]"
        elif state.running:
            mark = "[yellow]starting / unhealthy[/]"
        else:
            mark = "[red]down[/]"
        table.add_row(state.name, mark, str(state.pid or ""), state.url, state.log.name)
    out.print(table)
    out.print(f"logs and pid files: {settings.run_dir}", highlight=False, soft_wrap=True)
    for state in states:
        if state.detail:
            out.print(f"{state.name}: {state.detail}", highlight=False, soft_wrap=True)
    if any(state.healthy for state in states):
        out.print("Use these servers from a shell:", highlight=False)
        for key, value in settings.client_env().items():
            out.print(f"  export {key}={value}", highlight=False, soft_wrap=True)


def up() -> None:
    """Start Prefect server, a process worker and MLflow server on 127.0.0.1 (as `make up`).

    Logs and pid files go to $PRETRAINLAB_RUN_DIR (default .pretrainlab/run). Ports:
    $PRETRAINLAB_PREFECT_PORT (4200), $PRETRAINLAB_MLFLOW_PORT (5000); work pool:
    $PRETRAINLAB_WORK_POOL (pretrainlab). Services already running are left alone.
    """
    from pretrainlab import services

    settings = _service_settings()
    console.print(f"starting services (logs in {settings.run_dir}) ...", highlight=False)
    try:
        states = services.start(settings)
    except PretrainlabError as error:
        fail(error)
    _print_services(states, settings)


def down() -> None:
    """Stop the services `up` started (worker first); nothing else is touched."""
    from pretrainlab import services

    settings = _service_settings()
    stopped = services.stop(settings)
    message = f"stopped: {', '.join(stopped)}" if stopped else "nothing was running"
    console.print(f"{message} ({settings.run_dir})", highlight=False)


def status() -> None:
    """What is up: each service's state, pid, URL and log; the work pool and its workers."""
    from pretrainlab import services

    settings = _service_settings()
    _print_services(services.status(settings), settings)



def screenshots(
    experiment: Annotated[str, typer.Option(help="Whose registered versions to compare.")] = "demo",
    out_dir: Annotated[Path, typer.Option("--out", help="Where the PNGs go.")] = Path(
        "docs/screenshots"
    ),
    browser: Annotated[str, typer.Option(help="Headless Chromium binary.")] = "chromium",
) -> None:
    """PNGs of the Prefect deployment, its latest run and an MLflow version comparison
    (`make screenshots`; needs `make up`, `make deploy` and one completed pipeline run)."""
    from pretrainlab import screenshots as shots

    settings = _service_settings()
    try:
        pages = shots.screenshot_pages(settings, experiment)
        taken = shots.take_screenshots(pages, out_dir, browser)
    except PretrainlabError as error:
        fail(error)
    for path in taken:
        console.print(f"wrote {path}", highlight=False)


