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
models_app = typer.Typer(
    help="Registered model versions: list, compare, promote to champion, serve over REST.",
    no_args_is_help=True,
)
app.add_typer(models_app, name="models")
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
    from tasks.ingest import plan_corpus_plain
    from tasks.stamps import STAGES, up_to_date

    spec = _spec(spec_path, overrides)
    stage = until or STAGES[-1]
    if stage not in STAGES:
        _fail(PretrainlabError(f"--until {until!r}: choose one of {', '.join(STAGES)}"))
    try:
        stages = STAGES[: STAGES.index(stage) + 1]
        unchanged = None if dry_run else up_to_date(spec, stages, plan_corpus_plain(spec).corpus_id)
        if unchanged is not None:  # nothing to do: answer without starting Prefect
            console.print("every stage is unchanged since its last run (no flow run started)")
            _print_results(unchanged)
            return
        from flows.pipeline import pipeline, plan

        statuses = plan(spec, stage)  # pre-flight: bad sources fail here, before any work
        if dry_run:
            table = Table("stage", "status", "output", "detail", title=f"dry run: {spec_path}")
            for status in statuses:
                mark = "[green]cached[/]" if status.cached else "[yellow]would run[/]"
                table.add_row(status.stage, mark, status.output, status.detail)
            out.print(table)
            return
        from storage.tracking import check_tracking_reachable

        check_tracking_reachable(spec.tracking_uri())  # before Prefect starts: fails in seconds
        results = pipeline(spec, until=stage)
    except PretrainlabError as error:
        _fail(error)
    _print_results(results)


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


def _service_settings():
    from pretrainlab import services

    try:
        return services.Settings.from_env()
    except PretrainlabError as error:
        _fail(error)
        raise  # unreachable


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


@app.command()
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
        _fail(error)
    _print_services(states, settings)


@app.command()
def down() -> None:
    """Stop the services `up` started (worker first); nothing else is touched."""
    from pretrainlab import services

    settings = _service_settings()
    stopped = services.stop(settings)
    message = f"stopped: {', '.join(stopped)}" if stopped else "nothing was running"
    console.print(f"{message} ({settings.run_dir})", highlight=False)


@app.command()
def status() -> None:
    """What is up: each service's state, pid, URL and log; the work pool and its workers."""
    from pretrainlab import services

    settings = _service_settings()
    _print_services(services.status(settings), settings)


# ------------------------------------------------------------------ models and housekeeping

SpecOption = Annotated[
    Path | None, typer.Option("--spec", help="Take store and tracking URI from a spec.")
]
StoreOption = Annotated[Path, typer.Option(help="Store root (without --spec).")]
FormatOption = Annotated[OutputFormat, typer.Option("--format", help="table, csv or json.")]
LIST_EXTRA = ("valid_ppl", "tokens_per_s")


def _store_and_uri(spec_path: Path | None, store: Path) -> tuple[Path, str | None]:
    """--spec wins; else the store, with $MLFLOW_TRACKING_URI or <store>/mlflow.db."""
    if spec_path is None:
        return store, None
    spec = _spec(spec_path, None)
    return Path(spec.store), spec.tracking_uri()


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"
    if hasattr(value, "strftime"):
        return value.strftime("%Y-%m-%d %H:%M")
    return str(value)


def _print_rows(result, fmt: OutputFormat, title: str | None = None) -> None:
    if fmt is not OutputFormat.table:
        sys.stdout.write(str(_render(result, fmt)) + "\n")
        return
    table = Table(*result.column_names, title=title)
    for row in result.to_pylist():
        table.add_row(*(_cell(v) for v in row.values()))
    out.print(table)


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

    store, uri = _store_and_uri(spec_path, store)
    try:
        result = versions.list_versions(store, uri)
    except PretrainlabError as error:
        _fail(error)
    if fmt is not OutputFormat.table:
        _print_rows(result, fmt)
        return
    table = Table("name", "version", "aliases", "family", "created", "headline", *LIST_EXTRA, "run")
    for row in result.to_pylist():
        headline = f"{row['headline_metric'] or ''} {_cell(row['headline_value'])}".strip()
        table.add_row(
            row["name"],
            str(row["version"]),
            row["aliases"],
            row["family"],
            _cell(row["created"]),
            headline,
            *(_cell(row[key]) for key in LIST_EXTRA),
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
            values = [_cell(cells.get(label, {}).get("value")) for label in labels]
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
    from storage import versions

    store, uri = _store_and_uri(spec_path, store)
    try:
        comparison = versions.compare(store, refs, uri, headline_only=not all_metrics)
    except PretrainlabError as error:
        _fail(error)
    if fmt is OutputFormat.json:  # numbers stay numbers (the CSV's value column is text)
        sys.stdout.write(json.dumps(comparison.rows, default=str, indent=1) + "\n")
        return
    if fmt is OutputFormat.csv:
        sys.stdout.write(str(_render(comparison.table(), fmt)) + "\n")
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
    from storage import versions

    if aggregate not in ("mean", "min"):
        _fail(PretrainlabError(f"--aggregate {aggregate!r}: choose mean or min"))
    if margin < 0:
        _fail(PretrainlabError(f"--margin {margin}: must be >= 0"))
    rule = versions.Rule(mode, budget, tuple(tasks or ()), metric, aggregate, margin)  # type: ignore[arg-type]
    store, uri = _store_and_uri(spec_path, store)
    try:
        decision = versions.promote(store, name, rule, uri, dry_run=dry_run)
    except PretrainlabError as error:
        _fail(error)
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

    store, uri = _store_and_uri(spec_path, store)
    port = port or mlflow_model.free_port()
    try:
        server = mlflow_model.serve(ref, port, versions.tracking_for(store, uri))
    except PretrainlabError as error:
        _fail(error)
    address = f"http://{mlflow_model.LOOPBACK}:{port}/invocations"
    console.print(f"serving {ref} at {address}", highlight=False)
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
            _cell(decision.scores.get(version)),
            *(_cell(per_task.get(t)) for t in decision.tasks),
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


@app.command("gc")
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

    store, uri = _store_and_uri(spec_path, store)
    try:
        found = gc.gc(store, uri, keep_days, dry_run=dry_run, keep_checkpoints=keep_checkpoints)
    except PretrainlabError as error:
        _fail(error)
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


@app.command(hidden=True)
def screenshots(
    experiment: Annotated[str, typer.Option(help="Whose registered versions to compare.")] = "demo",
    out_dir: Annotated[Path, typer.Option("--out", help="Where the PNGs go.")] = Path(
        "docs/screenshots"
    ),
    browser: Annotated[str, typer.Option(help="Headless Chromium binary.")] = "chromium",
) -> None:
    """PNGs of the Prefect deployment, its latest run and an MLflow version comparison
    (`make screenshots`; needs `make up`, `make deploy` and one completed pipeline run)."""
    from pretrainlab import services

    settings = _service_settings()
    try:
        taken = services.take_screenshots(
            services.screenshot_pages(settings, experiment), out_dir, browser
        )
    except PretrainlabError as error:
        _fail(error)
    for path in taken:
        console.print(f"wrote {path}", highlight=False)


if __name__ == "__main__":
    app()
