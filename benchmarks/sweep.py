"""The transfer sweep on each runner: serial (thread runner) vs 2 local Dask workers vs a local
Ray, same cells, same models; wall and CPU time, and whether the result rows are identical.

Run:  .venv/bin/python -m benchmarks.sweep [--quick] [--workdir DIR] [--json PATH]

The demo's four models are pretrained once (`pretrainlab run configs/demo.yaml --until
pretrain`, reused from `--workdir` when it is there). Each runner then runs the transfer stage
of the same sweep on its own copy of that store without any result files, in a fresh
`pretrainlab run` process (`--until transfer --set compute.runner=...`): wall time is the whole
command (its fixed start-up and stage checks included, the same for every runner), CPU time is
that process tree's. Under the determinism contract (pipelines/transfer/protocol.py: per-cell
seeds, `compute.cell_threads` torch threads per cell on every runner) the rows must be identical
(keys and values, MLflow run ids aside); the note says whether they are.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from benchmarks.common import Row, print_rows, timed_command, write_rows

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
RUNNERS = ("thread", "dask", "ray")
NOT_COPIED = ("results", "predictions", "features", "reports", "catalog.duckdb", "stamps")
KEY = ("task", "family", "mode", "budget", "seed", "lr", "split", "metric", "layer", "epoch")


def sweep_spec(workdir: Path, quick: bool) -> Path:
    """The demo spec with its sweep cut to POS (the task every mode runs on): scratch, frozen and
    fine-tuning at 50 labels, two seeds (`--quick`: fine-tuning and frozen, one seed)."""
    spec = yaml.safe_load(DEMO.read_text(encoding="utf-8"))
    t = spec["transfer"]
    t["tasks"] = [task for task in t["tasks"] if task["name"] == "pos"]
    t["modes"] = ["frozen", "finetune"] if quick else ["scratch", "frozen", "finetune"]
    t["budgets"], t["seeds"] = [50], [0] if quick else [0, 1]
    t.pop("adapt", None)
    t["probe_tasks"] = []
    path = workdir / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def _cli(spec: Path, *args: str, api_url: str | None = None) -> tuple[float, float]:
    """Run `pretrainlab run` to completion: (wall seconds, CPU seconds of its process tree)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}  # fmt: skip
    if api_url:  # Ray's workers report to a Prefect server the driver shares with them
        env["PREFECT_API_URL"] = api_url
    timed = timed_command([sys.executable, "-m", "pretrainlab.cli", "run", str(spec), *args], env)
    return timed.seconds, timed.cpu


def _fresh_copy(base: Path, target: Path) -> None:
    """The pretrained store without any transfer output, so every cell runs."""
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(base, target, ignore=lambda _d, names: [n for n in names if n in NOT_COPIED])


@contextmanager
def _prefect_server(needed: bool) -> Iterator[str | None]:
    """A Prefect API on 127.0.0.1 for the run (Ray's workers must reach one; the thread and
    Dask runs use the CLI's own private API), stopped afterwards. Its start-up is not timed."""
    if not needed:
        yield None
        return
    from pretrainlab.temporary_api import TemporaryApi

    api = TemporaryApi.spawn()
    try:
        api.wait_ready()
        yield api.url
    finally:
        api.stop()


def result_rows(store: Path) -> list[tuple]:
    """Every result row of the store (run ids aside), sorted: what identity compares."""
    rows = []
    for path in sorted((store / "results").rglob("*.parquet")):
        for r in pq.read_table(path).to_pylist():
            rows.append((*(r.get(k) for k in KEY), r["value"]))
    return sorted(rows, key=repr)


def rows(workdir: Path, quick: bool) -> list[Row]:
    spec = sweep_spec(workdir, quick)
    base = workdir / "base"
    _cli(spec, "--until", "pretrain", "--set", f"store={base}")
    timings: dict[str, tuple[float, float, int]] = {}
    found: dict[str, list[tuple]] = {}
    for runner in RUNNERS:
        store = workdir / runner
        _fresh_copy(base, store)
        with _prefect_server(runner == "ray") as api_url:
            wall, cpu = _cli(spec, "--until", "transfer", "--set", f"store={store}",
                             "--set", f"compute.runner={runner}", api_url=api_url)  # fmt: skip
        found[runner] = result_rows(store)
        cells = len(list((store / "results").rglob("*.parquet")))
        timings[runner] = (wall, cpu, cells)
        print(f"{runner}: {wall:.1f} s wall, {cpu:.1f} s CPU, {cells} result files", flush=True)
    serial_wall, serial_cpu, cells = timings["thread"]
    out = []
    for runner in ("dask", "ray"):
        wall, cpu, n = timings[runner]
        same = found[runner] == found["thread"]
        out.append(Row(
            f"transfer sweep: {runner} (2 local workers) vs serial", "cells/min",
            round(60 * cells / serial_wall, 2), round(60 * n / wall, 2), ">=", 1.0,
            note=(f"{n} cells; wall {serial_wall:.0f} s serial vs {wall:.0f} s; CPU "
                  f"{serial_cpu:.0f} s vs {cpu:.0f} s; result rows "
                  f"{'identical' if same else 'DIFFER'} ({len(found[runner])} rows)"),
        ))  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer cells")
    parser.add_argument("--workdir", type=Path, help="keep the stores here (pretraining reused)")
    parser.add_argument("--json", type=Path, help="write the rows here (for benchmarks.suite)")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    workdir.mkdir(parents=True, exist_ok=True)
    found = rows(workdir, args.quick)
    print_rows(found)
    if args.json:
        write_rows(found, args.json)


if __name__ == "__main__":
    main()
