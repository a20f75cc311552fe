"""Start-up: what a tiny `pretrainlab run` costs before any real work, cold and warm.

Run:  .venv/bin/python -m benchmarks.startup [--runs 3]

`pretrainlab run SPEC --until ingest` on a 25-byte corpus, so the figure is the fixed cost of
every run: Python and imports, the run's temporary Prefect API, two flow runs, the MLflow record.
Cold: a fresh store and PREFECT_HOME, as on a first run (Prefect's and MLflow's databases are
created). Warm: both exist but nothing is cached for the spec (each run ingests a new corpus).
The figures are medians of `--runs` runs of each, interleaved so a busy spell hits both; CPU
seconds (the process and its children, from wait4) say how much of the wall time is the
machine's load. Where the warm time goes comes from the same runs: the CLI runs under a small
wrapper (`TRACED`) that notes when the temporary Prefect API's methods are entered and left.
The API's boot is also timed alone (the run overlaps it with the imports).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.common import Row, print_rows, timed_command, write_rows

GOAL_WARM_S = 8.0
# `pretrainlab run ...` with phase marks: seconds since start at each TemporaryApi call.
TRACED = """
import json, sys, time
start, marks = time.perf_counter(), {}
import pretrainlab.cli.main as cli, pretrainlab.temporary_api as api
def traced(name, method):
    def call(self, *args, **kwargs):
        marks.setdefault('> ' + name, time.perf_counter() - start)
        try:
            return method(self, *args, **kwargs)
        finally:
            marks.setdefault('< ' + name, time.perf_counter() - start)
    return call
for name in ('publish', 'wait_ready', 'stop'):
    setattr(api.TemporaryApi, name, traced(name, getattr(api.TemporaryApi, name)))
try:
    cli.app(sys.argv[1:])
finally:
    print('MARKS ' + json.dumps(marks), file=sys.stderr, flush=True)
"""
PHASES = {  # name: (from mark, to mark); None = the run's start or end
    "python, imports, cache check, MLflow store": (None, "> wait_ready"),
    "waiting for the Prefect API": ("> wait_ready", "< wait_ready"),
    "the flow runs": ("< publish", "> stop"),
    "stopping the API": ("> stop", "< stop"),
    "interpreter exit": ("< stop", None),
}
API_BOOT = (
    "import time; from pretrainlab.temporary_api import TemporaryApi; "
    "api = TemporaryApi.spawn(); t = time.perf_counter(); api.wait_ready(); "
    "print(time.perf_counter() - t); api.stop()"
)


def _env(prefect_home: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "PREFECT_HOME": str(prefect_home),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)  # the run's own temporary API, as for a new user
    env.pop("MLFLOW_TRACKING_URI", None)  # the spec's store holds the tracking database
    return env


def _spec(workdir: Path, store: Path, name: str) -> Path:
    """A spec on `store` whose corpus (25 bytes) no run has seen: nothing is cached for it."""
    corpus = workdir / f"{name}.txt"
    corpus.write_text((f"{name} tiny corpus line" + " " * 24)[:24] + "\n", encoding="ascii")
    spec = workdir / f"{name}.yaml"
    spec.write_text(
        json.dumps(
            {
                "experiment": "bench-startup",
                "store": str(store),
                "corpus": {"sources": [{"path": str(corpus)}]},
            }
        )
    )  # JSON is YAML
    return spec


def _run(spec: Path, env: dict[str, str]) -> tuple[float, float, dict[str, float]]:
    """Wall and CPU seconds of `pretrainlab run SPEC --until ingest`, and its phases."""
    command = [sys.executable, "-c", TRACED, "run", str(spec), "--until", "ingest"]
    timed = timed_command(command, env)
    seconds, cpu, output = timed.seconds, timed.cpu, timed.output
    line = next(x for x in reversed(output.splitlines()) if x.startswith("MARKS "))
    marks = {None: 0.0, **json.loads(line.removeprefix("MARKS "))}
    phases = {}
    for phase, (start, end) in PHASES.items():
        phases[phase] = (seconds if end is None else marks[end]) - marks[start]
    return seconds, cpu, phases


def measure(runs: int, workdir: Path) -> dict[str, list[float]]:
    """Cold and warm runs interleaved (with the warm runs' phases), then the API's boot alone."""
    warm_env = _env(workdir / "prefect-warm")
    warm_store = workdir / "store-warm"
    _run(_spec(workdir, warm_store, "prime"), warm_env)  # the store and PREFECT_HOME now exist
    found: dict[str, list[float]] = {
        k: [] for k in ("cold", "cold_cpu", "warm", "warm_cpu", "api", *PHASES)
    }
    for i in range(runs):
        cold_env = _env(workdir / f"prefect-cold-{i}")
        seconds, cpu, _ = _run(_spec(workdir, workdir / f"store-cold-{i}", f"cold-{i}"), cold_env)
        found["cold"].append(seconds)
        found["cold_cpu"].append(cpu)
        seconds, cpu, phases = _run(_spec(workdir, warm_store, f"warm-{i}"), warm_env)
        found["warm"].append(seconds)
        found["warm_cpu"].append(cpu)
        for phase, phase_seconds in phases.items():
            found[phase].append(phase_seconds)
        print(
            f"  run {i + 1}: cold {found['cold'][-1]:.1f} s, warm {seconds:.1f} s "
            f"(CPU {found['cold_cpu'][-1]:.1f} / {cpu:.1f} s), load {os.getloadavg()[0]:.2f}",
            flush=True,
        )
    for _ in range(runs):
        found["api"].append(float(timed_command([sys.executable, "-c", API_BOOT], warm_env).output))
    return found


def rows(runs: int, workdir: Path) -> list[Row]:
    load_before = os.getloadavg()[0]
    found = measure(runs, workdir)
    med = {key: statistics.median(values) for key, values in found.items()}
    load = f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    where = ", ".join(f"{phase} {med[phase]:.1f} s" for phase in PHASES)
    return [
        Row(
            "start-up, warm (`run --until ingest`, 25 B)",
            "s",
            None,
            med["warm"],
            "<=",
            GOAL_WARM_S,
            note=(
                f"median of {runs}, CPU {med['warm_cpu']:.1f} s (with the API's); store and "
                f"PREFECT_HOME exist, nothing cached. Where it goes (medians): {where}; the API "
                f"boots in {med['api']:.1f} s alone, beside the imports; {load}"
            ),
            on_ratio=False,
        ),
        Row(
            "start-up, cold (fresh store and PREFECT_HOME)",
            "s",
            None,
            med["cold"],
            "",
            0.0,
            note=(
                f"median of {runs}, CPU {med['cold_cpu']:.1f} s; a first run also creates "
                f"Prefect's database and MLflow's ({med['cold'] - med['warm']:+.1f} s); {load}"
            ),
            on_ratio=False,
        ),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each (median)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        result = rows(max(args.runs, 1), Path(tmp))
    print_rows(result)
    if args.json:
        write_rows(result, args.json)


if __name__ == "__main__":
    main()
