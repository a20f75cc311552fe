"""The `pretrainlab` command: run the pipeline, fetch demo data, ask the catalog anything."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pretrainlab.config import PretrainlabError, Spec, load_spec

app = typer.Typer(
    help="pretrainlab: what is pretraining worth, and which kind? Measured on your corpus.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Demo data: fetch and list the real text this lab ships with.")
app.add_typer(data_app, name="data")
console = Console(stderr=True)
out = Console()

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # our own progress lines say enough
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# The embedded Prefect API starts in ~5-10 s, far longer on a loaded 2-core machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


class OutputFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


def _fail(error: Exception) -> None:
    console.print(f"[bold red]error:[/] {error}", highlight=False)
    raise typer.Exit(2)


def _spec(path: Path, overrides: list[str] | None) -> Spec:
    try:
        return load_spec(path, overrides or [])
    except PretrainlabError as error:
        _fail(error)
        raise  # unreachable; keeps type checkers calm


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
) -> None:
    """Run the pipeline on SPEC; every stage reuses its cached output when nothing changed.

    Examples:

      pretrainlab run configs/demo.yaml

      pretrainlab run configs/demo.yaml --until ingest --dry-run

      pretrainlab run my.yaml --set corpus.valid_fraction=0.1
    """
    from flows.pipeline import STAGES, pipeline, plan

    spec = _spec(spec_path, overrides)
    stage = until or STAGES[-1]
    if stage not in STAGES:
        _fail(PretrainlabError(f"--until {until!r}: choose one of {', '.join(STAGES)}"))
    try:
        statuses = plan(spec, stage)  # pre-flight: bad sources fail here, before any work
        if dry_run:
            table = Table("stage", "status", "output", "detail", title=f"dry run: {spec_path}")
            for status in statuses:
                mark = "[green]cached[/]" if status.cached else "[yellow]would run[/]"
                table.add_row(status.stage, mark, status.output, status.detail)
            out.print(table)
            return
        results = pipeline(spec, until=stage)
    except PretrainlabError as error:
        _fail(error)
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
    from storage import demo_data

    try:
        paths = demo_data.fetch(
            names or None,
            data_dir,
            progress=lambda name, status: console.print(f"  {name}: {status}", highlight=False),
        )
    except PretrainlabError as error:
        _fail(error)
    where = data_dir or demo_data.default_data_dir()
    console.print(f"[green]{len(paths)} dataset(s) ready[/] in {where}")


@data_app.command("list")
def data_list() -> None:
    """List the demo datasets a spec can name as `dataset:`."""
    from storage import demo_data

    table = Table("dataset", "kind", "description")
    for name, info in demo_data.DATASETS.items():
        table.add_row(name, info.kind, info.description)
    out.print(table)


def _render(result, fmt: OutputFormat) -> str | Table:
    rows = result.to_pylist()
    if fmt is OutputFormat.json:
        return json.dumps(rows, default=str, ensure_ascii=False, indent=1)
    if fmt is OutputFormat.csv:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=result.column_names, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue().rstrip("\n")
    table = Table(*result.column_names)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row.values()))
    return table


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

    if spec_path is not None:
        spec = _spec(spec_path, None)
        store, uri = Path(spec.store), spec.tracking_uri()
    else:
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{store.resolve() / 'mlflow.db'}"
    try:
        result = catalog.query(store, sql, tracking_uri=uri)
    except PretrainlabError as error:
        _fail(error)
    rendered = _render(result, fmt)
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
    """Validate a spec and print it with every default filled in.

    Examples:

      pretrainlab check configs/demo.yaml

      pretrainlab check --example > my-spec.yaml
    """
    import yaml

    from pretrainlab.config import example_spec_yaml

    if example or spec_path is None:
        sys.stdout.write(example_spec_yaml())
        return
    spec = _spec(spec_path, None)
    out.print(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), highlight=False)


if __name__ == "__main__":
    app()
