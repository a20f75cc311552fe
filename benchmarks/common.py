"""What every benchmark shares: the result row, peak-memory probes, the machine, RESULTS.md.

Each benchmark module has a `rows(...)` function returning `Row`s and a `--json PATH` flag that
writes them; `benchmarks.suite` runs every module in its own process (so peak RSS is its own)
and writes the rows as one Markdown table.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

NA_NO_GPU = "n/a (no GPU here)"


@dataclass
class Row:
    """One line of the table: the bare library's figure, pretrainlab's, and the goal.

    By default the goal is on the ratio pretrainlab / bare (higher is better: both are
    throughputs); with `on_ratio=False` (the re-run, the scaling growth) it is on pretrainlab's
    own figure, in `unit`.
    """

    benchmark: str
    unit: str
    bare: float | None
    ours: float | None
    goal_op: str  # ">=", "<=", or "" for a row that only informs
    goal: float
    rss_bare_mb: float | None = None
    rss_ours_mb: float | None = None
    note: str = ""
    on_ratio: bool = True
    # Set by `Repeats.fill`: the median of per-pair ratios over interleaved repeats, its spread.
    median_ratio: float | None = None
    ratio_min: float | None = None
    ratio_max: float | None = None
    repeats: int | None = None
    mfu: float | None = None  # pretraining: model FLOPs/s over the measured (or datasheet) peak

    @property
    def ratio(self) -> float | None:
        if self.median_ratio is not None:
            return self.median_ratio
        if self.bare is None or self.ours is None or self.bare == 0:
            return None
        return self.ours / self.bare

    def ratio_text(self) -> str:
        """`0.97 (0.91-1.02, n=5)`: the median ratio and the min-max of the repeats."""
        if self.ratio is None:
            return "-"
        if self.median_ratio is None or self.ratio_min is None or self.ratio_max is None:
            return f"{self.ratio:.2f}"
        return f"{self.ratio:.2f} ({self.ratio_min:.2f}-{self.ratio_max:.2f}, n={self.repeats})"

    @property
    def measured(self) -> float | None:
        """What the goal applies to: the ratio, or the figure itself when there is no bare."""
        return self.ratio if self.on_ratio else self.ours

    @property
    def met(self) -> bool | None:
        value = self.measured
        if value is None or not self.goal_op:
            return None
        return value >= self.goal if self.goal_op == ">=" else value <= self.goal

    def goal_text(self) -> str:
        if not self.goal_op:
            return "-"
        return f"{self.goal_op} {self.goal:g}" + ("" if self.on_ratio else f" {self.unit}")


# ----------------------------------------------------------------------------- repeats


@dataclass(frozen=True)
class Repeats:
    """Throughputs of interleaved repeats: bare[i] and ours[i] ran back to back, so their
    ratio is the fair one on a machine whose load drifts; the median ratio is the figure."""

    bare: list[float]
    ours: list[float]

    @property
    def ratios(self) -> list[float]:
        return [o / b for b, o in zip(self.bare, self.ours, strict=True) if b > 0]

    @property
    def median_ratio(self) -> float:
        return statistics.median(self.ratios)

    def fill(self, row: Row) -> Row:
        """`row` with the median throughputs, the median ratio and its min-max spread."""
        ratios = self.ratios
        row.bare, row.ours = statistics.median(self.bare), statistics.median(self.ours)
        row.median_ratio, row.ratio_min, row.ratio_max = (
            statistics.median(ratios),
            min(ratios),
            max(ratios),
        )
        row.repeats = len(ratios)
        return row


def interleaved(
    bare: Callable[[], float],
    ours: Callable[[], float],
    repeats: int,
    before: Callable[[], None] = lambda: None,
) -> Repeats:
    """Run bare, ours, bare, ours, ... `repeats` times each; each call returns its throughput.

    `before()` runs ahead of every call, untimed (e.g. a peak-RSS reset)."""
    got = Repeats([], [])
    for _ in range(repeats):
        for run, into in ((bare, got.bare), (ours, got.ours)):
            before()
            into.append(run())
    return got


def write_rows(rows: list[Row], path: Path) -> None:
    path.write_text(json.dumps([asdict(row) for row in rows], indent=1), encoding="utf-8")


def read_rows(path: Path) -> list[Row]:
    return [Row(**item) for item in json.loads(path.read_text(encoding="utf-8"))]


# ------------------------------------------------------------------------ child commands


@dataclass(frozen=True)
class Timed:
    """One finished command: wall seconds, CPU seconds and peak RSS (MB) of it and the children
    it waited for, and its output (stdout and stderr)."""

    seconds: float
    cpu: float
    peak_rss_mb: float
    output: str


def timed_command(command: list[str], env: dict[str, str]) -> Timed:
    """Run `command` to completion (output to a temporary file, so no pipe can fill up); a
    failure exits the benchmark with the command's exit code and output tail."""
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
    return Timed(seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, output)


# ----------------------------------------------------------------------------- memory


def peak_rss_mb() -> float:
    """This process's peak RSS. Linux's ru_maxrss survives exec, so a child started from a big
    parent would report the parent's peak; VmHWM belongs to the current program only."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def reset_peak_rss() -> None:
    """Start a new peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM), so two
    contenders run in one process each get their own peak. Elsewhere the peak only grows."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def current_rss_mb() -> float:
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return peak_rss_mb()


# ----------------------------------------------------------------------------- the machine


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def machine() -> dict[str, object]:
    import torch

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": gpu_name(),
        "load_1min": round(os.getloadavg()[0], 2),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


# ----------------------------------------------------------------------------- the table


def _num(value: float | None) -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def _rss(row: Row) -> str:
    if row.rss_bare_mb is None and row.rss_ours_mb is None:
        return "n/a"
    bare = f"{row.rss_bare_mb:,.0f}" if row.rss_bare_mb is not None else "-"
    ours = f"{row.rss_ours_mb:,.0f}" if row.rss_ours_mb is not None else "-"
    return f"{bare} / {ours}"


def _mfu(row: Row) -> str:
    return f"{row.mfu:.1%}" if row.mfu is not None else "-"


def markdown(rows: list[Row], before: dict, after: dict, command: str, seconds: float) -> str:
    """RESULTS.md: the machine, then one table row per `Row`."""
    gpu = before["gpu"] or "no GPU"
    lines = [
        "# Benchmark results",
        "",
        f"Written by `{command}` on {before['date']} in {seconds / 60:.1f} min.",
        f"Machine: {before['cpu']}, {before['cores']} cores, torch {before['torch']} "
        f"({before['torch_threads']} CPU threads), Python {before['python']}, {gpu}. "
        f"Load average (1 min) {before['load_1min']} at the start, {after['load_1min']} at the "
        "end: the machine is shared, so wall-clock figures carry that noise; each benchmark runs "
        "its contenders interleaved in one run so a busy spell hits both.",
        "",
        "Ratio = pretrainlab / bare library (both throughputs: higher is better). Where a ratio "
        "shows (min-max, n=N) it is the median of N per-pair ratios of interleaved repeats "
        "(bare, pretrainlab, bare, pretrainlab, ...), each pair run back to back, and the two "
        "throughput columns are the medians. Peak RSS is each contender's own peak "
        "(bare / pretrainlab).",
        "",
        "| benchmark | unit | bare library | pretrainlab | ratio | goal | met | MFU | "
        "peak RSS MB | notes |",
        "|---|---|---:|---:|---:|---|---|---:|---:|---|",
    ]
    for row in rows:
        met = {True: "yes", False: "**no**", None: "n/a" if row.goal_op else "-"}[row.met]
        lines.append(
            f"| {row.benchmark} | {row.unit} | {_num(row.bare)} | {_num(row.ours)} | "
            f"{row.ratio_text()} | "
            f"{row.goal_text()} | {met} | {_mfu(row)} | {_rss(row)} | "
            f"{row.note.replace('|', '/')} |"
        )
    return "\n".join(lines) + "\n"


# Where pretrainlab stays under 0.95x its bare library, what the remaining cost is and why it is
# worth paying (issue 18). The suite prints the line under the table for every row below 0.95.
GAPS = {
    "pretrain gpt": "batches are cut from the packed token stream on the fly (the bare loop's "
    "are prebuilt, untimed), dropout is reseeded per step and loss/grad norm are read back each "
    "step for the NaN check: a fixed cost per step (batch building 0.3% of a tiny fp32 step's "
    "CPU, ~0% at the cpu preset; measured) that weighs more on a faster step (tiny, bf16). "
    "Worth it: exact resume and 1 process = N, because a batch is a pure function of (seed, "
    "step).",
    "pretrain bert": "NSP pair sampling and 80/10/10 masking per step in Python (the bare "
    "loop's batches are prebuilt, untimed): 0.9 ms of CPU a step, 7% of a tiny step, 2% at "
    "the cpu preset (measured). Worth it: batches as a pure function of (seed, step) give exact "
    "resume and DDP parity; the masked-only MLM head already saves 2-3x.",
    "pretrain word2vec": "one Parquet read of the shards for the vocabulary scan (bare gensim "
    "gets a list in memory, untimed; the epochs now replay it from memory), the race-free "
    "float64 per-job loss tally (gensim's compute_loss is racy), an epoch checkpoint and the "
    "held-out loss pass: fixed costs per run, large where a run lasts seconds (CBOW on a small "
    "corpus). Worth it: a correct loss curve, resume after a kill, a valid score.",
    "frozen features": "the task-generic input path (items and groups for classify, pair, tag "
    "and WiC; a pooling matmul per layer) around the same forward pass, on a run of ~1 s "
    "where loading dominates; by CPU time 0.94-0.95 at quick sizes. Worth it: one code path "
    "for four task kinds, and the features are computed once per (model, task) and cached.",
    "fine-tuning": "the step protocol's bookkeeping (dev evaluation and early stopping, "
    "warmup schedule, the head's generic pooling) on steps of a few ms at quick sizes; "
    "0.98-0.99 at the cpu preset. Worth it: every mode trained to convergence the same way.",
    "transfer sweep": "not a library gap: the speed-up of two local worker processes over the "
    "serial runner on the same cells. Each worker starts a Python with torch, transformers and "
    "Prefect and the cluster starts before the first cell, a fixed ~15-30 s that only pays off "
    "when the cells together take minutes (the quick sweep's 8 cells take ~75 s serially). "
    "Worth it: the rows are identical on every runner, so a big sweep can go wide.",
}


def gap_lines(rows: list[Row], goal: float = 0.95) -> str:
    """Markdown: one line per ratio row under `goal`, from GAPS (or a line saying none is
    written yet, so a new gap never goes unexplained silently)."""
    lines = []
    for row in rows:
        if row.ratio is None or not row.on_ratio or row.ratio >= goal:
            continue
        why = next((text for key, text in GAPS.items() if key in row.benchmark), None)
        lines.append(
            f"- **{row.benchmark}** ({row.ratio_text()}): "
            + (why or "no explanation written yet: profile it (benchmarks/common.py GAPS).")
        )
    if not lines:
        return ""
    return (
        f"\n## Below {goal:g}x the bare library: the remaining cost, and why\n\n"
        + "\n".join(lines)
        + "\n"
    )


def print_rows(rows: list[Row]) -> None:
    for row in rows:
        print(
            f"  {row.benchmark:<34} bare {_num(row.bare):>10}  pretrainlab {_num(row.ours):>10} "
            f"{row.unit:<12} ratio {row.ratio_text():>22}  goal {row.goal_text():<10} {row.note}"
        )
