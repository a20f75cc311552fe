"""The `pretrainlab` command: run the pipeline, fetch demo data, ask the catalog anything.

The models and gc commands live in cli/models.py, the services in cli/operate.py; this module
assembles them into one `app` (the console script `pretrainlab = pretrainlab.cli:app`).
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pretrainlab.cli import models, operate
from pretrainlab.cli.common import (
    DEBUG_ENV,
    OutputFormat,
    console,
    fail,
    load,
    out,
    quiet_expected_errors,
    render,
    store_tracking,
)
from pretrainlab.config import PretrainlabError, Spec
from pretrainlab.temporary_api import TemporaryApi, temporary_api

app = typer.Typer(
    help="pretrainlab: what is pretraining worth, and which kind? Measured on your corpus.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Demo data: fetch and list the real text this lab ships with.")
app.add_typer(data_app, name="data")
app.add_typer(models.models_app, name="models")
app.command("gc")(models.gc_command)
for command in (operate.up, operate.down, operate.status):
    app.command()(command)
app.command(hidden=True)(operate.screenshots)

DebugOption = Annotated[
    bool,
    typer.Option(
        "--debug", help="Show the traceback of expected errors too (or PRETRAINLAB_DEBUG=1)."
    ),
]


def _debug(on: bool) -> None:
    if on:
        os.environ[DEBUG_ENV] = "1"  # child processes (torchrun ranks) see it too


@app.callback()
def main(debug: DebugOption = False) -> None:
    """pretrainlab: what is pretraining worth, and which kind? Measured on your corpus."""
    _debug(debug)


@app.command()
def run(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC", help="Experiment spec (YAML).")],
    until: Annotated[
        str, typer.Option(help="Last stage: ingest, tokenize, pretrain, transfer or report.")
    ] = "",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what is cached, run nothing.")
    ] = False,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override a spec field: KEY=VALUE.")
    ] = None,
    debug: DebugOption = False,
) -> None:
    """Run the pipeline on SPEC; every stage reuses its cached output when nothing changed.

    An error you can fix prints its message once; --debug adds the tracebacks. Ctrl-C while a
    model trains saves a checkpoint first; the same command resumes.

    Examples:

      pretrainlab run configs/demo.yaml

      pretrainlab run configs/demo.yaml --until ingest --dry-run

      pretrainlab run my.yaml --set corpus.valid_fraction=0.1
    """
    _debug(debug)
    # At exit, skip the collector's last pass over the ~1M objects Prefect, MLflow and pandas
    # leave (~1 s): they die with the process. Cycles are not finalized: every file and
    # connection the pipeline writes to is closed by its own `with` before this.
    atexit.register(gc.freeze)
    spec = load(spec_path, overrides)
    results = None
    try:
        # Started first, the Prefect API boots on the other core while this process imports the
        # stage code and checks the caches (seconds each); an unchanged run stops it unused.
        with temporary_api(needed=not dry_run) as api:
            results = _run_stages(spec, spec_path, until, dry_run, api)
    except PretrainlabError as error:
        if _stopped_training(error):  # a checkpoint, not a failure: say how to go on
            console.print(
                f"[bold yellow]stopped:[/] {error}\n"
                f"resume with: {_resume_command(spec_path, until, overrides)}",
                highlight=False,
            )
            raise typer.Exit(2) from None
        fail(error)
    except KeyboardInterrupt:
        console.print(
            "[bold red]interrupted[/]; finished stages are kept. Resume with: "
            f"{_resume_command(spec_path, until, overrides)}",
            highlight=False,
        )
        raise typer.Exit(130) from None
    if results is not None:
        _print_results(results)


def _run_stages(
    spec: Spec, spec_path: Path, until: str, dry_run: bool, api: TemporaryApi | None
) -> dict[str, dict] | None:
    """The results of every stage up to `until`, cached or run; None after a dry run's table."""
    with _loading():
        from tasks.ingest import plan_corpus_plain
        from tasks.preflight import needs_tasks, require_inputs
        from tasks.stamps import STAGES, up_to_date

    stage = until or STAGES[-1]
    if stage not in STAGES:
        raise PretrainlabError(f"--until {until!r}: choose one of {', '.join(STAGES)}")
    # every source and task file first: a broken one fails in seconds, before any work
    require_inputs(spec, str(spec_path), tasks=needs_tasks(stage))
    stages = STAGES[: STAGES.index(stage) + 1]
    unchanged = None if dry_run else up_to_date(spec, stages, plan_corpus_plain(spec).corpus_id)
    if unchanged is not None:  # nothing to do: no flow run
        console.print("every stage is unchanged since its last run (no flow run started)")
        return unchanged
    with _loading():
        from flows.pipeline import check_services, pipeline, plan
        from tasks.tracking import open_tracking

    statuses = plan(spec, stage)
    if dry_run:
        _print_plan(spec_path, statuses)
        return None
    check_services(spec)  # before any flow runs: a down MLflow server fails in seconds
    quiet_expected_errors()
    if api is not None:
        # What the first stage's MLflow record does (its imports; on a first run the database),
        # done while the API finishes booting on the other core.
        with _loading():
            open_tracking(spec)
        api.publish()
    return pipeline(spec, until=stage, preflighted=True)


@contextlib.contextmanager
def _loading() -> Iterator[None]:
    """Imports create ~1M objects that live as long as the process: no cyclic collection while
    they load (~1 s of CPU on a start-up of ~5 s), and none over them afterwards (`freeze`)."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.freeze()


def _print_plan(spec_path: Path, statuses) -> None:
    table = Table("stage", "status", "output", "detail", title=f"dry run: {spec_path}")
    for status in statuses:
        mark = "[green]cached[/]" if status.cached else "[yellow]would run[/]"
        table.add_row(status.stage, mark, status.output, status.detail)
    out.print(table)


def _stopped_training(error: Exception) -> bool:
    """A training stopped by SIGTERM or Ctrl-C at a checkpoint (tasks.models is loaded
    whenever a model trained, so this never imports torch just to ask)."""
    models = sys.modules.get("tasks.models")
    return models is not None and isinstance(error, models.PretrainInterrupted)


def _resume_command(spec_path: Path, until: str, overrides: list[str] | None) -> str:
    """The command that continues this run: cached stages are skipped, training resumes."""
    words = ["pretrainlab", "run", str(spec_path)]
    words += ["--until", until] if until else []
    for override in overrides or []:
        words += ["--set", override]
    return shlex.join(words)


def _print_results(results: dict[str, dict]) -> None:
    for name, result in results.items():
        hit = "[green]cached[/]" if result.get("cache_hit") else "[yellow]built[/]"
        console.print(
            f"[bold]{name}[/] {hit}: {result.get('output', '')}", highlight=False, soft_wrap=True
        )


@data_app.command("fetch")
def data_fetch(
    names: Annotated[list[str] | None, typer.Argument(help="Datasets (default: all).")] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Cache dir ($PRETRAINLAB_DATA_DIR).")
    ] = None,
) -> None:
    """Download and verify the demo data (sha256) into a cache outside git; idempotent.

    Examples:

      pretrainlab data fetch

      pretrainlab data fetch polarity-sentences --data-dir /data/pretrainlab
    """
    from pipelines import demo_data

    try:
        paths = demo_data.fetch(
            names or None,
            data_dir,
            progress=lambda name, status: console.print(f"  {name}: {status}", highlight=False),
        )
    except PretrainlabError as error:
        fail(error)
    where = data_dir or demo_data.default_data_dir()
    console.print(f"[green]{len(paths)} dataset(s) ready[/] in {where}")


@data_app.command("list")
def data_list() -> None:
    """List the demo datasets a spec can name as `dataset:`."""
    from pipelines import demo_data

    table = Table("dataset", "kind", "description")
    for name, info in demo_data.DATASETS.items():
        table.add_row(name, info.kind, info.description)
    out.print(table)


@app.command()
def query(
    sql: Annotated[str, typer.Argument(help="Any DuckDB SQL over the catalog.")],
    spec_path: Annotated[
        Path | None, typer.Option("--spec", help="Take store and tracking URI from a spec.")
    ] = None,
    store: Annotated[Path, typer.Option(help="Store root (without --spec).")] = Path(
        ".pretrainlab"
    ),
    fmt: Annotated[OutputFormat, typer.Option("--format", help="table, csv or json.")] = (
        OutputFormat.table
    ),
) -> None:
    """Answer any question about the lab with SQL (corpus, rejects, tokens_*, runs, metrics...).

    Examples:

      pretrainlab query "select split, count(*) from corpus group by 1"

      pretrainlab query "select key, value from metrics where key like 'docs%'" --format csv

      pretrainlab query "show tables"
    """
    from storage import catalog

    store, uri = store_tracking(spec_path, store)
    try:
        result = catalog.query(store, sql, tracking_uri=uri)
    except PretrainlabError as error:
        fail(error)
    rendered = render(result, fmt)
    if isinstance(rendered, str):
        sys.stdout.write(rendered + "\n")
    else:
        out.print(rendered)


@app.command("check")
def check(
    spec_path: Annotated[
        Path | None, typer.Argument(metavar="SPEC", help="Experiment spec (YAML).")
    ] = None,
    example: Annotated[
        bool, typer.Option("--example", help="Print every field with its default and meaning.")
    ] = False,
) -> None:
    """Validate a spec and its inputs in seconds, writing nothing; print the spec with every
    default filled in (stdout) and what was checked (stderr).

    Checked: every field (modes and families too); every corpus source resolves to readable
    files (demo datasets fetched); every task file loads (columns, format, labels, splits).
    Every problem is listed, one line each, and the exit status is 2.

    Examples:

      pretrainlab check configs/demo.yaml

      pretrainlab check --example > my-spec.yaml
    """
    import time

    import yaml

    from pretrainlab.config import example_spec_yaml

    if example or spec_path is None:
        sys.stdout.write(example_spec_yaml())
        return
    started = time.perf_counter()
    spec = load(spec_path)
    from tasks.preflight import require_inputs

    try:
        checked = require_inputs(spec, str(spec_path))
    except PretrainlabError as error:
        fail(error)
    out.print(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), highlight=False)
    for line in checked.summary():
        console.print(line, highlight=False, soft_wrap=True)
    seconds = time.perf_counter() - started
    console.print(f"[green]{spec_path}: spec and inputs OK[/] ({seconds:.1f} s, nothing written)")
