"""What every `pretrainlab` command shares: the consoles, how an error is shown, output formats,
the --spec/--store options, and the one rule for which MLflow a command reads."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import sys
import traceback
from enum import StrEnum
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from pretrainlab.config import PretrainlabError, Spec, load_spec, tracking_uri

console = Console(stderr=True)
out = Console()

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # our own progress lines say enough
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# The embedded Prefect API starts in ~5-10 s, far longer on a loaded 2-core machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
DEBUG_ENV = "PRETRAINLAB_DEBUG"


class OutputFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


SpecOption = Annotated[
    Path | None, typer.Option("--spec", help="Take store and tracking URI from a spec.")
]
StoreOption = Annotated[Path, typer.Option(help="Store root (without --spec).")]
FormatOption = Annotated[OutputFormat, typer.Option("--format", help="table, csv or json.")]


# ------------------------------------------------------------------------------- errors


def debugging() -> bool:
    """--debug (or $PRETRAINLAB_DEBUG=1): show the tracebacks of expected errors too."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0", "false")


def fail(error: Exception) -> NoReturn:
    """An expected error: its message, once, and exit status 2 (with --debug, its traceback)."""
    if debugging():
        traceback.print_exception(error, file=sys.stderr)
    console.print(f"[bold red]error:[/] {error}", highlight=False)
    raise typer.Exit(2)


class QuietExpectedErrors(logging.Filter):
    """On the console only (Prefect's API and UI keep everything): a PretrainlabError raised in
    a task becomes one line naming the run that failed, without the traceback; the lines that
    repeat its message (each enclosing flow's traceback, the Failed states) are dropped, since
    the CLI prints the message once. Any other error keeps its traceback."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[int, str] = {}  # id(error) -> the start of its message

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, PretrainlabError):
            first = id(error) not in self.seen
            self.seen[id(error)] = (str(error).splitlines() or [""])[0][:60]
            if first:
                record.msg, record.args = f"failed: {type(error).__name__}, shown below", ()
                record.exc_info, record.exc_text = None, None
            return first
        text = record.getMessage()
        return not any(start and start in text for start in self.seen.values())


def quiet_expected_errors() -> None:
    """Install `QuietExpectedErrors` on the console handlers Prefect set up (unless --debug)."""
    if debugging():
        return
    quiet = QuietExpectedErrors()
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.addFilter(quiet)


# --------------------------------------------------------------------------------- specs


def load(path: Path, overrides: list[str] | None = None) -> Spec:
    """The spec at `path`, or its errors printed and exit status 2."""
    try:
        return load_spec(path, overrides or [])
    except PretrainlabError as error:
        fail(error)


def store_and_uri(spec_path: Path | None, store: Path) -> tuple[Path, str | None]:
    """--spec wins; else the store, with $MLFLOW_TRACKING_URI or <store>/mlflow.db left to the
    reader (None: it checks the database exists before reading it)."""
    if spec_path is None:
        return store, None
    spec = load(spec_path)
    return Path(spec.store), spec.tracking_uri()


def store_tracking(spec_path: Path | None, store: Path) -> tuple[Path, str]:
    """Like `store_and_uri`, with the spec's default when no spec is given."""
    found, uri = store_and_uri(spec_path, store)
    return found, uri or tracking_uri(None, found)


# -------------------------------------------------------------------------------- output


def render(result, fmt: OutputFormat) -> str | Table:
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



def cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"
    if hasattr(value, "strftime"):
        return value.strftime("%Y-%m-%d %H:%M")
    return str(value)


def print_rows(result, fmt: OutputFormat, title: str | None = None) -> None:
    if fmt is not OutputFormat.table:
        sys.stdout.write(str(render(result, fmt)) + "\n")
        return
    table = Table(*result.column_names, title=title)
    for row in result.to_pylist():
        table.add_row(*(cell(v) for v in row.values()))
    out.print(table)

