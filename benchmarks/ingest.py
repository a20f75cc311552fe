"""Ingest throughput and memory against bare-library baselines, measured in one run.

    .venv/bin/python -m benchmarks.ingest [--mb 100] [--scale]

Generates ~N MB of unique documents (real sentences from gensim's Lee news corpus and
Wikipedia sample, shuffled, each prefixed with a counter) and measures, each in a fresh
subprocess so peak RSS numbers are separate:
  (a) ceiling: pyarrow reads the file as lines (multi-threaded C++) and writes Parquet;
  (b) plain:   a single-process Python script doing the stage's work (decode, NFC, strip,
               sha256, dedup, doc_id/split, Parquet parts) the obvious way, line by line;
  (c) stage:   pipelines.data.ingest.ingest.
The goal is (c)/(b) >= 1.0: the stage's checks (rejects, binary, bounded memory) must not
cost more than they save. `--scale` also runs (c) at 10N MB: peak RSS should stay flat.
"""

from __future__ import annotations

import argparse
import importlib
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import Row, peak_rss_mb, print_rows, write_rows

ROWS_PER_SHARD = 50_000
WIKI_SAMPLE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
WRITE_OPTIONS = {"compression": "zstd", "compression_level": 3, "row_group_size": 16_384}


def _sentences(workdir: Path) -> list[str]:
    """Real sentences: the Lee news corpus and the first articles of the Wikipedia sample."""
    import pyarrow.parquet as pq
    from gensim.test.utils import datapath

    from pipelines.data.ingest import IngestSettings, SourceInput, ingest

    lee = Path(datapath("lee_background.cor")).read_text(encoding="utf-8")
    wiki = Path(datapath(WIKI_SAMPLE))
    ingest([SourceInput([wiki], limit=12)], IngestSettings(), workdir / "wiki")
    articles = pq.read_table(workdir / "wiki" / "part-00000.parquet").column("text").to_pylist()
    text = lee + "\n" + "\n".join(articles)
    return [s.strip() + "." for s in text.replace("\n", " ").split(". ") if len(s.strip()) > 20]


def generate(path: Path, megabytes: float, seed: int = 0) -> int:
    """Write unique one-line documents until the file holds `megabytes` MB; return its size."""
    sentences = _sentences(path.parent / f"sentences-{seed}")
    rng = random.Random(seed)
    target, written, i = int(megabytes * 1e6), 0, 0
    with path.open("w", encoding="utf-8") as out:
        while written < target:
            chunk = []
            for _ in range(1000):
                doc = f"{i}: " + " ".join(rng.sample(sentences, rng.randint(1, 8)))
                chunk.append(doc)
                i += 1
            data = "\n".join(chunk) + "\n"
            out.write(data)
            written += len(data.encode("utf-8"))
    return path.stat().st_size


# --- the three measured programs (each runs in its own subprocess) ------------------------------


def run_ceiling(src: Path, out: Path) -> dict:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    table = pacsv.read_csv(
        src,
        read_options=pacsv.ReadOptions(column_names=["text"]),
        parse_options=pacsv.ParseOptions(delimiter="\x01", quote_char=False, escape_char=False),
        convert_options=pacsv.ConvertOptions(column_types={"text": pa.string()}),
    )
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / "part-00000.parquet", **WRITE_OPTIONS)
    return {"docs": table.num_rows}


def run_plain(src: Path, out: Path) -> dict:
    """The obvious script: per line decode, NFC, strip, hash, dedup; pa.table per shard."""
    import hashlib
    import unicodedata

    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    columns: dict[str, list] = {"doc_id": [], "source": [], "text": [], "n_chars": [], "split": []}
    parts = docs = 0

    def flush() -> None:
        nonlocal parts, columns
        pq.write_table(pa.table(columns), out / f"part-{parts:05d}.parquet", **WRITE_OPTIONS)
        parts += 1
        columns = {name: [] for name in columns}

    with open(src, "rb") as handle:
        for raw in handle:
            text = unicodedata.normalize("NFC", raw.decode("utf-8")).strip()
            if not text:
                continue
            digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            columns["doc_id"].append(digest[:16])
            columns["source"].append(str(src))
            columns["text"].append(text)
            columns["n_chars"].append(len(text))
            columns["split"].append("valid" if int(digest[16:24], 16) / 2**32 < 0.05 else "train")
            docs += 1
            if len(columns["text"]) >= ROWS_PER_SHARD:
                flush()
    if columns["text"]:
        flush()
    return {"docs": docs, "parts": parts}


def run_stage(src: Path, out: Path) -> dict:
    from pipelines.data.ingest import IngestSettings, SourceInput, ingest

    stats = ingest(
        [SourceInput([src], label=str(src))], IngestSettings(rows_per_shard=ROWS_PER_SHARD), out
    )
    return {"docs": stats.docs_written, "parts": stats.parts}


PROGRAMS = {"ceiling": run_ceiling, "plain": run_plain, "stage": run_stage}


# Imported before the clock starts, so no program is charged for loading its libraries. pandas
# is on the plain list because pa.table() imports it on first use (~0.25 s CPU).
IMPORTS = {
    "ceiling": ["pyarrow.csv", "pyarrow.parquet"],
    "plain": ["pyarrow.parquet", "pandas"],
    "stage": ["pipelines.data.ingest"],
}


def measure_here(program: str, src: Path, out: Path) -> None:
    """Child process: run one program, print its time and this process's peak RSS as JSON."""
    for module in IMPORTS[program]:
        importlib.import_module(module)
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    result = PROGRAMS[program](src, out)
    seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu_started
    print(json.dumps({**result, "seconds": seconds, "cpu_s": cpu, "peak_rss_mb": peak_rss_mb()}))


def _cpu_seconds() -> float:
    """User + system CPU of this process (all threads): steadier than wall time on a busy box."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(program: str, src: Path, workdir: Path) -> dict:
    out = workdir / f"out-{program}-{src.stem}"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.ingest",
            "--measure",
            program,
            "--input",
            str(src),
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    result["mb_per_s"] = src.stat().st_size / 1e6 / result["seconds"]
    result["mb_per_cpu_s"] = src.stat().st_size / 1e6 / result["cpu_s"]
    return result


def report(name: str, result: dict) -> None:
    print(
        f"  {name:<8} {result['mb_per_s']:7.1f} MB/s  {result['seconds']:6.2f} s wall  "
        f"{result['mb_per_cpu_s']:7.1f} MB/cpu-s  peak RSS {result['peak_rss_mb']:6.1f} MB  "
        f"docs {result['docs']:,}"
    )


def to_rows(results: dict[str, dict], megabytes: float) -> list[Row]:
    """The table rows: the stage vs the plain script (the goal) and vs pyarrow's copy."""
    stage, plain, ceiling = results["stage"], results["plain"], results["ceiling"]
    note = f"{megabytes:.0f} MB, {stage['docs']:,} docs; by CPU time "
    return [
        Row(
            "ingest (vs a plain Python script)",
            "MB/s",
            plain["mb_per_s"],
            stage["mb_per_s"],
            ">=",
            0.7,
            plain["peak_rss_mb"],
            stage["peak_rss_mb"],
            note + f"{stage['mb_per_cpu_s'] / plain['mb_per_cpu_s']:.2f}",
        ),
        Row(
            "ingest (vs pyarrow read+write, no checks)",
            "MB/s",
            ceiling["mb_per_s"],
            stage["mb_per_s"],
            "",
            0.0,
            ceiling["peak_rss_mb"],
            stage["peak_rss_mb"],
            "the ceiling: a copy without decoding checks, dedup or splits",
        ),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=100, help="size of the generated corpus")
    parser.add_argument("--scale", action="store_true", help="also run the stage at 10x --mb")
    parser.add_argument("--measure", choices=sorted(PROGRAMS), help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.measure:
        measure_here(args.measure, args.input, args.out)
        return
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        workdir = Path(tmp)
        src = workdir / "corpus.txt"
        size = generate(src, args.mb)
        print(f"ingest benchmark: {size / 1e6:.1f} MB of one-line documents ({src})")
        results = {name: measure(name, src, workdir) for name in PROGRAMS}
        for name, result in results.items():
            report(name, result)
        if results["plain"]["docs"] != results["stage"]["docs"]:
            raise SystemExit(
                f"plain and stage disagree: {results['plain']['docs']} vs "
                f"{results['stage']['docs']} documents"
            )
        stage, plain = results["stage"], results["plain"]
        print(
            f"  stage / plain = {stage['mb_per_s'] / plain['mb_per_s']:.2f} by wall time, "
            f"{stage['mb_per_cpu_s'] / plain['mb_per_cpu_s']:.2f} by CPU time (goal >= 1.0); "
            f"stage / ceiling = {stage['mb_per_s'] / results['ceiling']['mb_per_s']:.2f}"
        )
        rows = to_rows(results, size / 1e6)
        if args.json:
            write_rows(rows, args.json)
            print_rows(rows)
        if args.scale:
            big = workdir / "corpus10x.txt"
            big_size = generate(big, 10 * args.mb, seed=1)
            src.unlink()
            scaled = measure("stage", big, workdir)
            print(f"scale: {big_size / 1e6:.0f} MB")
            report("stage", scaled)
            growth = scaled["peak_rss_mb"] / results["stage"]["peak_rss_mb"]
            print(f"  peak RSS at 10x the data: x{growth:.2f} (flat = ~1)")


if __name__ == "__main__":
    main()
