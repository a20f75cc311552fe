"""Start-up: what a tiny `pretrainlab run` costs before any real work, cold and warm.

Run:  .venv/bin/python -m benchmarks.startup [--runs 3]

`pretrainlab run SPEC --until ingest` on a 25-byte corpus, so the figure is the fixed cost of
every run: Python and imports, the run's temporary Prefect API, two flow runs, the MLflow record.
Cold: a fresh store and PREFECT_HOME, as on a first run (Prefect's and MLflow's databases are
created). Warm: both exist but nothing is cached for the spec (each run ingests a new corpus).
The figures are medians of `--runs` runs of each, interleaved so a busy spell hits both; CPU
seconds (the process and its children, from wait4) say how much of the wall time is the
machine's load. Then where the warm time goes: the same imports alone, and the temporary API's
boot alone (the run overlaps the two).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import Row, print_rows, write_rows

GOAL_WARM_S = 8.0
IMPORTS = "import pretrainlab.cli.main, tasks.ingest, tasks.stamps, flows.pipeline"
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


def _timed(command: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds and CPU seconds (it and its children) of one command, and its output."""
    started = time.perf_counter()
    with tempfile.TemporaryFile(mode="w+") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        log.seek(0)
        output = log.read()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{' '.join(command)} failed (exit {code}):\n{output[-3000:]}")
    return seconds, usage.ru_utime + usage.ru_stime, output


def _run(spec: Path, env: dict[str, str]) -> tuple[float, float]:
    cli = Path(sys.executable).with_name("pretrainlab")
    command = [str(cli), "run", str(spec), "--until", "ingest"]
    seconds, cpu, _ = _timed(command, env)
    return seconds, cpu


def measure(runs: int, workdir: Path) -> dict[str, list[float]]:
    """Cold and warm runs interleaved, then the imports and the API's boot alone."""
    warm_env = _env(workdir / "prefect-warm")
    warm_store = workdir / "store-warm"
    _run(_spec(workdir, warm_store, "prime"), warm_env)  # the store and PREFECT_HOME now exist
    found: dict[str, list[float]] = {
        k: [] for k in ("cold", "cold_cpu", "warm", "warm_cpu", "imports", "api")
    }
    for i in range(runs):
        cold_env = _env(workdir / f"prefect-cold-{i}")
        seconds, cpu = _run(_spec(workdir, workdir / f"store-cold-{i}", f"cold-{i}"), cold_env)
        found["cold"].append(seconds)
        found["cold_cpu"].append(cpu)
        seconds, cpu = _run(_spec(workdir, warm_store, f"warm-{i}"), warm_env)
        found["warm"].append(seconds)
        found["warm_cpu"].append(cpu)
        print(
            f"  run {i + 1}: cold {found['cold'][-1]:.1f} s, warm {seconds:.1f} s "
            f"(CPU {found['cold_cpu'][-1]:.1f} / {cpu:.1f} s), load {os.getloadavg()[0]:.2f}",
            flush=True,
        )
    for _ in range(runs):
        found["imports"].append(_timed([sys.executable, "-c", IMPORTS], warm_env)[0])
        found["api"].append(float(_timed([sys.executable, "-c", API_BOOT], warm_env)[2]))
    return found


def rows(runs: int, workdir: Path) -> list[Row]:
    load_before = os.getloadavg()[0]
    found = measure(runs, workdir)
    med = {key: statistics.median(values) for key, values in found.items()}
    load = f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    rest = med["warm"] - max(med["imports"], med["api"])
    return [
        Row(
            "start-up, warm (`run --until ingest`, 25 B)",
            "s",
            None,
            med["warm"],
            "<=",
            GOAL_WARM_S,
            note=(
                f"median of {runs}, CPU {med['warm_cpu']:.1f} s; store and PREFECT_HOME exist, "
                f"nothing cached. Where it goes: Python + imports {med['imports']:.1f} s, the "
                f"temporary Prefect API boots in {med['api']:.1f} s beside them, the other "
                f"{rest:.1f} s are the two flow runs, the MLflow record and exit; {load}"
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
