"""Every benchmark, one table: runs each module in its own process and writes RESULTS.md.

Run:  .venv/bin/python -m benchmarks.suite [--quick] [--out benchmarks/RESULTS.md]   (make bench)

Each benchmark runs the bare library and pretrainlab on the same work and reports rows (see
benchmarks/common.py); a fresh process per benchmark keeps peak RSS figures apart. The
pretraining and transfer ratios are the median of >= 5 interleaved pairs (bare, pretrainlab,
bare, ...) with their min-max (`benchmarks.common.interleaved`); pretraining rows add MFU
against the matmul peak measured in the same process (benchmarks/peak.py). `--quick` runs
every benchmark at a smoke-test size (a few minutes; figures are not meaningful). The GPU rows
(GPT-2 small and BERT-base sized, bf16 autocast, tokens/s and MFU) run only when CUDA is
visible and say "n/a (no GPU here)" otherwise. A benchmark that fails gives a row saying so,
and the suite exits 1 after writing the table.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import NA_NO_GPU, Row, gap_lines, gpu_name, machine, markdown, read_rows

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("RESULTS.md")
QUICK_DIR = Path(__file__).with_name("out")  # git-ignored: a smoke run never replaces results


@dataclass(frozen=True)
class Bench:
    name: str
    module: str
    full: tuple[str, ...]
    quick: tuple[str, ...]


BENCHES = (
    Bench("ingest", "benchmarks.ingest", ("--mb", "50"), ("--mb", "5")),
    Bench("tokenise", "benchmarks.tokenization", ("--mb", "10"), ("--mb", "1", "--rounds", "1")),
    Bench(
        "pretrain (CPU)",
        "benchmarks.pretrain",
        ("--preset", "cpu", "--device", "cpu"),
        ("--preset", "tiny", "--device", "cpu", "--steps", "10", "--repeats", "5", "--mb", "0.5"),
    ),
    Bench(
        "transfer",
        "benchmarks.transfer",
        ("--preset", "cpu"),
        ("--preset", "tiny", "--repeats", "5"),
    ),
    Bench("sweep", "benchmarks.sweep", (), ("--quick",)),
    Bench("re-run", "benchmarks.rerun", ("--runs", "2"), ("--runs", "2")),
    Bench("start-up", "benchmarks.startup", ("--runs", "3"), ("--runs", "1")),
    Bench(
        "scaling",
        "benchmarks.scaling",
        ("--sizes", "1", "4", "16", "--plot", str(ROOT / "docs" / "scaling.png")),
        ("--sizes", "1", "2", "--plot", str(QUICK_DIR / "scaling.png")),
    ),
)
GPU_BENCH = Bench(
    "pretrain (GPU)",
    "benchmarks.pretrain",
    ("--preset", "gpu", "--device", "cuda", "--families", "gpt", "bert"),
    (
        "--preset",
        "gpu",
        "--device",
        "cuda",
        "--families",
        "gpt",
        "bert",
        "--steps",
        "10",
        "--repeats",
        "5",
    ),
)
GPU_ROWS = {"gpt": "GPT-2 small, 124M params", "bert": "BERT-base, 110M params"}


def run_bench(bench: Bench, quick: bool, workdir: Path) -> tuple[list[Row], bool]:
    """The benchmark's rows, or one row saying it failed; and whether it succeeded."""
    out = workdir / f"{bench.name.replace(' ', '_')}.json"
    command = [sys.executable, "-m", bench.module, *(bench.quick if quick else bench.full)]
    command += ["--json", str(out)]
    print(f"\n=== {bench.name}: {shlex.join(command[1:])}", flush=True)
    started = time.perf_counter()
    completed = subprocess.run(command, check=False)
    seconds = time.perf_counter() - started
    print(f"=== {bench.name}: {seconds:.0f} s", flush=True)
    if completed.returncode != 0 or not out.exists():
        note = f"failed (exit {completed.returncode}): run `python -m {bench.module}` to see why"
        return [Row(bench.name, "-", None, None, "", 0.0, note=note)], False
    return read_rows(out), True


def gpu_rows(quick: bool, workdir: Path) -> tuple[list[Row], bool]:
    if gpu_name() is None:
        return [
            Row(
                f"pretrain {family} (GPU, bf16)",
                "tokens/s",
                None,
                None,
                ">=",
                0.9,
                note=f"{NA_NO_GPU}; {size}; MFU goal >= 45%",
            )
            for family, size in GPU_ROWS.items()
        ], True
    return run_bench(GPU_BENCH, quick, workdir)


def write_table(
    rows: list[Row], pending: list[str], args: argparse.Namespace, before: dict, started: float
) -> str:
    """(Re)write the table; called after every benchmark, so a stopped run leaves its rows."""
    command = "python -m benchmarks.suite" + (" --quick" if args.quick else "")
    text = markdown(rows, before, machine(), command, time.perf_counter() - started)
    text += gap_lines(rows)
    if args.quick:
        text = text.replace("# Benchmark results", "# Benchmark results (--quick: smoke sizes)")
    if pending:
        text += f"\nNot run yet (the suite was still running): {', '.join(pending)}.\n"
    args.out.write_text(text, encoding="utf-8")
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke-test sizes, not figures")
    parser.add_argument(
        "--out", type=Path, default=None, help=f"the table (default {RESULTS}; --quick: out/)"
    )
    names = [b.name for b in BENCHES] + [GPU_BENCH.name]
    parser.add_argument("--only", nargs="+", choices=names, default=names)
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = QUICK_DIR / "RESULTS.md" if args.quick else RESULTS
    args.out.parent.mkdir(parents=True, exist_ok=True)
    before, started = machine(), time.perf_counter()
    rows: list[Row] = []
    ok = True
    pending = [name for name in names if name in args.only]
    with tempfile.TemporaryDirectory(prefix="bench-suite-") as tmp:
        for bench in (*BENCHES, GPU_BENCH):
            if bench.name not in pending:
                continue
            if bench is GPU_BENCH:
                got, fine = gpu_rows(args.quick, Path(tmp))
            else:
                got, fine = run_bench(bench, args.quick, Path(tmp))
            rows += got
            ok &= fine
            pending.remove(bench.name)
            text = write_table(rows, pending, args, before, started)
    print(f"\n{text}\nwritten to {args.out}")
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
