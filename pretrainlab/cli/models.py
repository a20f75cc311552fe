"""The lab's own commands: models (list, compare, promote) and housekeeping (gc)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pretrainlab.cli.common import (
    FormatOption,
    OutputFormat,
    SpecOption,
    StoreOption,
    cell,
    fail,
    out,
    print_rows,
    render,
    store_and_uri,
)
from pretrainlab.config import PretrainlabError

models_app = typer.Typer(
    help="Registered model versions: list, compare, promote to champion, serve over REST.",
    no_args_is_help=True,
)
LIST_EXTRA = ("valid_ppl", "tokens_per_s")


@models_app.command("list")
def models_list(
    spec_path: SpecOption = None,
    store: StoreOption = Path(".pretrainlab"),
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Every registered version: aliases, family, creation time, key pretraining metrics.

    Examples:

      pretrainlab models list

      pretrainlab models list --spec configs/demo.yaml --format csv
    """
    from storage import versions

    store, uri = store_and_uri(spec_path, store)
    try:
        result = versions.list_versions(store, uri)
    except PretrainlabError as error:
        fail(error)
    if fmt is not OutputFormat.table:
        print_rows(result, fmt)
        return
    table = Table("name", "version", "aliases", "family", "created", "headline", *LIST_EXTRA, "run")
    for row in result.to_pylist():
        headline = f"{row['headline_metric'] or ''} {cell(row['headline_value'])}".strip()
        table.add_row(
            row["name"],
            str(row["version"]),
            row["aliases"],
            row["family"],
            cell(row["created"]),
            headline,
            *(cell(row[key]) for key in LIST_EXTRA),
            (row["run_id"] or "")[:8],
        )
    out.print(table)


def _delta(change: float | None) -> str:
    if change is None:
        return ""
    colour = "green" if change > 0 else "red" if change < 0 else "dim"
    return f"[{colour}]{change:+.4g}[/]"


def _compare_tables(comparison) -> list[Table]:
    """Wide tables: one column per version, then its delta vs the first."""
    labels = [v.label for v in comparison.versions]
    tables = []
    for section, keys in (
        ("spec", ("key",)),
        ("pretrain", ("key",)),
        ("downstream", ("task", "mode", "budget", "key")),
    ):
        rows = [r for r in comparison.rows if r["section"] == section]
        if not rows:
            continue
        deltas = [f"Δ {label}" for label in labels[1:]] if section != "spec" else []
        table = Table(*keys, *labels, *deltas, title=f"{section}", title_justify="left")
        grouped: dict[tuple, dict[str, dict]] = {}
        for row in rows:
            grouped.setdefault(tuple(row[k] for k in keys), {})[row["version"]] = row
        for key, cells in grouped.items():
            values = [cell(cells.get(label, {}).get("value")) for label in labels]
            changes = [cells.get(label, {}).get("delta") for label in labels[1:]]
            shown = [_delta(d) for d in changes]
            table.add_row(*(str(k) for k in key), *values, *(shown if deltas else []))
        tables.append(table)
    return tables


@models_app.command("compare")
def models_compare(
    refs: Annotated[
        list[str], typer.Argument(help="NAME@vN, NAME/N, NAME@alias or NAME (all its versions).")
    ],
    spec_path: SpecOption = None,
    store: StoreOption = Path(".pretrainlab"),
    fmt: FormatOption = OutputFormat.table,
    all_metrics: Annotated[
        bool, typer.Option("--all-metrics", help="Every test metric, not only the headline.")
    ] = False,
) -> None:
    """Versions side by side: spec differences, pretraining metrics, downstream test scores
    (mean over seeds per task x mode x budget), each with its delta vs the first version.

    Examples:

      pretrainlab models compare demo-bert@v1 demo-bert@v2

      pretrainlab models compare demo-bert@champion demo-gpt@champion --format csv

      pretrainlab models compare demo-bert   # every version of it
    """
    from storage import version_compare

    store, uri = store_and_uri(spec_path, store)
    try:
        comparison = version_compare.compare(store, refs, uri, headline_only=not all_metrics)
    except PretrainlabError as error:
        fail(error)
    if fmt is OutputFormat.json:  # numbers stay numbers (the CSV's value column is text)
        sys.stdout.write(json.dumps(comparison.rows, default=str, indent=1) + "\n")
        return
    if fmt is OutputFormat.csv:
        sys.stdout.write(str(render(comparison.table(), fmt)) + "\n")
        return
    for table in _compare_tables(comparison):
        out.print(table)


@models_app.command("promote")
def models_promote(
    name: Annotated[str, typer.Argument(help="Registered model, e.g. demo-bert.")],
    mode: Annotated[str, typer.Option(help="Transfer mode whose test scores decide.")] = (
        "finetune"
    ),
    budget: Annotated[str, typer.Option(help="Label budget whose scores decide.")] = "all",
    tasks: Annotated[
        list[str] | None, typer.Option("--task", help="A task that counts (repeat); default all.")
    ] = None,
    metric: Annotated[
        str | None, typer.Option(help="Test metric; default each task's headline.")
    ] = None,
    aggregate: Annotated[str, typer.Option(help="Over tasks: mean or min (worst).")] = "mean",
    margin: Annotated[float, typer.Option(help="Must beat the champion by more than this.")] = 0.0,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would happen, change nothing.")
    ] = False,
    spec_path: SpecOption = None,
    store: StoreOption = Path(".pretrainlab"),
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Move the `champion` alias to the best version by a rule on downstream test scores, only
    if it beats the current champion by more than --margin; the rule, the numbers and the time
    are stored as tags (`champion_reason`) on the version and the registered model.

    Examples:

      pretrainlab models promote demo-bert --dry-run

      pretrainlab models promote demo-bert --mode frozen --budget 100 --margin 0.01

      pretrainlab models promote demo-gpt --task polarity --task wic --aggregate min
    """
    from pipelines.report.promotion import Rule
    from tasks.promote import promote

    if aggregate not in ("mean", "min"):
        fail(PretrainlabError(f"--aggregate {aggregate!r}: choose mean or min"))
    if margin < 0:
        fail(PretrainlabError(f"--margin {margin}: must be >= 0"))
    rule = Rule(mode, budget, tuple(tasks or ()), metric, aggregate, margin)  # type: ignore[arg-type]
    store, uri = store_and_uri(spec_path, store)
    try:
        decision = promote(store, name, rule, uri, dry_run=dry_run)
    except PretrainlabError as error:
        fail(error)
    if fmt is OutputFormat.json:
        record = {**decision.record(), "applied": decision.applied, "dry_run": dry_run}
        sys.stdout.write(json.dumps(record, indent=1) + "\n")
        return
    _print_decision(decision, dry_run)


@models_app.command("serve")
def models_serve(
    ref: Annotated[str, typer.Argument(help="NAME@alias or NAME/N, e.g. demo-bert@candidate.")],
    port: Annotated[int | None, typer.Option(help="Port on 127.0.0.1 (default: a free one).")] = (
        None
    ),
    spec_path: SpecOption = None,
    store: StoreOption = Path(".pretrainlab"),
) -> None:
    """Serve a registered version over REST on 127.0.0.1 until Ctrl-C (`mlflow models serve`,
    this environment): POST {"inputs": ["a sentence", ...]} to /invocations for embeddings.

    Examples:

      pretrainlab models serve demo-bert@candidate --port 5001
    """
    from storage import versions
    from tasks import mlflow_model

    store, uri = store_and_uri(spec_path, store)
    port = port or mlflow_model.free_port()
    try:
        server = mlflow_model.serve(ref, port, versions.tracking_for(store, uri))
    except PretrainlabError as error:
        fail(error)
    address = f"http://{mlflow_model.LOOPBACK}:{port}/invocations"
    out.print(f"serving {ref} at {address}", highlight=False)
    try:
        raise typer.Exit(server.wait())
    except KeyboardInterrupt:
        server.terminate()
        raise typer.Exit(server.wait()) from None


def _print_decision(decision, dry_run: bool) -> None:
    table = Table("version", "score", *decision.tasks, "note", title=f"{decision.name}: ranking")
    for version in sorted({*decision.scores, *decision.ineligible}):
        per_task = decision.per_task.get(version, {})
        note = "champion" if version == decision.champion else ""
        if version in decision.ineligible:
            note = decision.ineligible[version]
        elif version == decision.best:
            note = ", ".join(filter(None, [note, "best"]))
        table.add_row(
            f"v{version}",
            cell(decision.scores.get(version)),
            *(cell(per_task.get(t)) for t in decision.tasks),
            note,
        )
    out.print(table)
    out.print(f"rule: {decision.rule.describe()}", highlight=False, soft_wrap=True)
    if decision.promote:
        verb = "would move" if dry_run else "moved"
        out.print(
            f"[green]{verb} champion[/] -> v{decision.best}: {decision.reason}",
            highlight=False,
            soft_wrap=True,
        )
    else:
        out.print(f"[yellow]champion unchanged[/]: {decision.reason}", highlight=False)


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} TB"



def gc_command(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would go and how much; delete nothing.")
    ] = False,
    keep_days: Annotated[
        float, typer.Option(help="Keep anything modified (or any run started) this recently.")
    ] = 7.0,
    keep_checkpoints: Annotated[
        bool, typer.Option("--keep-checkpoints", help="Keep finished models' checkpoints.")
    ] = False,
    show_kept: Annotated[
        bool, typer.Option("--show-kept", help="Also list what stays and why.")
    ] = False,
    spec_path: SpecOption = None,
    store: StoreOption = Path(".pretrainlab"),
) -> None:
    """Remove cached outputs and checkpoints that no registered model version, result row or
    recent run references. Never touches mlflow.db, mlartifacts/, results or reports.

    Examples:

      pretrainlab gc --dry-run

      pretrainlab gc --keep-days 1 --spec configs/demo.yaml
    """
    from storage import gc

    store, uri = store_and_uri(spec_path, store)
    try:
        found = gc.gc(store, uri, keep_days, dry_run=dry_run, keep_checkpoints=keep_checkpoints)
    except PretrainlabError as error:
        fail(error)
    title = "would remove" if dry_run else "removed"
    table = Table("kind", "path", "size", title=f"{title} ({found.store})", title_justify="left")
    skipped = {id(o) for o in found.skipped}
    for output in found.remove:
        if id(output) not in skipped:
            path = str(output.path.relative_to(found.store))
            table.add_row(output.kind, path, _size(output.bytes))
    if found.remove:
        out.print(table)
    freed = found.bytes - sum(o.bytes for o in found.skipped)
    kept_bytes = sum(o.bytes for o in found.kept)
    out.print(
        f"{title}: {len(found.remove) - len(found.skipped)} item(s), {_size(freed)}; kept "
        f"{len(found.kept)} (referenced or recent, {_size(kept_bytes)})",
        highlight=False,
        soft_wrap=True,
    )
    for output in found.skipped:
        out.print(f"skipped (modified meanwhile): {output.path}", highlight=False, soft_wrap=True)
    if show_kept:
        kept = Table("kind", "path", "size", "why kept", title="kept", title_justify="left")
        for output in found.kept:
            path = str(output.path.relative_to(found.store))
            kept.add_row(output.kind, path, _size(output.bytes), output.keep or "")
        out.print(kept)


