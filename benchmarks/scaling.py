"""Scaling sweep: ingest and tokenise the demo text at x1, x4 and x16; time and peak RSS.

Run:  .venv/bin/python -m benchmarks.scaling [--sizes 1 4 16] [--plot docs/scaling.png]

The demo corpus (configs/demo.yaml's four sources, fetched by `pretrainlab data fetch`) is
ingested once to get its documents. For each size k the documents are written k times as one
JSONL file, every copy's documents prefixed with the copy number so deduplication keeps them
all. Then, each in a fresh process (so the peak RSS is that stage's own):
- ingest: `pipelines.data.ingest.ingest` of the JSONL file into a corpus;
- tokenise: `pipelines.data.encoding.encode_corpus` of that corpus (WordPiece 8k trained once on
  x1, workers=1 so the whole stage lives in the measured process).
Streaming stages should take time linear in the size and flat peak memory. The plot shows
both; the rows give seconds, MB/s and peak RSS per size, and the x16/x1 growth of each.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from benchmarks.common import Row, peak_rss_mb, print_rows, write_rows

DEMO_SOURCES = ("enwiki-sample", "lee-news", "polarity-reviews-text", "pos-oanc")
STAGES = ("ingest", "tokenise")
REPEATS = {"ingest": 3, "tokenise": 1}  # ingest takes seconds: repeat it, keep the fastest
MAX_SENTENCE_TOKENS = 128  # the demo's
RSS_GROWTH_GOAL = 1.5  # peak RSS at the largest size / at x1: flat
TIME_PER_MB_GOAL = 1.3  # seconds per MB at the largest size / at x1: linear


def demo_documents(workdir: Path) -> list[str]:
    """The demo corpus' documents, as the pipeline's ingest stage reads them."""
    from pipelines.data.ingest import IngestSettings, SourceInput, ingest
    from pipelines.demo_data import dataset_files, dataset_format, dataset_text_field

    sources = [
        SourceInput(
            dataset_files(name),
            format=dataset_format(name),
            text_field=dataset_text_field(name) or "text",
            label=name,
        )
        for name in DEMO_SOURCES
    ]
    out = workdir / "demo-corpus"
    ingest(sources, IngestSettings(), out)
    return [
        t
        for part in sorted(out.glob("part-*.parquet"))
        for t in pq.read_table(part)["text"].to_pylist()
    ]


def write_copies(docs: list[str], copies: int, path: Path) -> int:
    """`copies` unique copies of `docs` as JSONL; returns the bytes of document text."""
    text_bytes = 0
    with path.open("w", encoding="utf-8") as out:
        for copy in range(copies):
            for doc in docs:
                text = f"copy {copy}: {doc}"
                text_bytes += len(text.encode("utf-8"))
                out.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    return text_bytes


# ----------------------------------------------------------------------------- child process


def run_stage(stage: str, src: Path, out: Path, tokenizer: Path) -> dict:
    if stage == "ingest":
        from pipelines.data.ingest import IngestSettings, SourceInput, ingest

        stats = ingest([SourceInput([src], format="jsonl", label="scaled")], IngestSettings(), out)
        return {"docs": stats.docs_written}
    from pipelines.data.encoding import encode_corpus

    stats = encode_corpus(src, tokenizer, out, "bert", MAX_SENTENCE_TOKENS, workers=1)
    return {"tokens": stats["tokens"]}


def measure_here(stage: str, src: Path, out: Path, tokenizer: Path) -> None:
    """Child: import first (not timed), run one stage, print seconds and peak RSS as JSON."""
    import pipelines.data.encoding
    import pipelines.data.ingest

    del pipelines  # imported for their start-up cost only

    started = time.perf_counter()
    result = run_stage(stage, src, out, tokenizer)
    seconds = time.perf_counter() - started
    print(json.dumps({**result, "seconds": seconds, "peak_rss_mb": peak_rss_mb()}))


def measure(stage: str, src: Path, out: Path, tokenizer: Path) -> dict:
    command = [sys.executable, "-m", "benchmarks.scaling", "--measure", stage]
    command += ["--input", str(src), "--out", str(out), "--tokenizer", str(tokenizer)]
    completed = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- sweep and plot


def sweep(sizes: list[int], workdir: Path) -> dict[str, list[dict]]:
    from pipelines.data.tokenizer_training import save_tokenizer, train_tokenizer
    from pretrainlab.config import WordPieceSpec

    docs = demo_documents(workdir)
    tokenizer = workdir / "tokenizer"
    save_tokenizer(train_tokenizer(WordPieceSpec(vocab_size=8000), docs), tokenizer)
    results: dict[str, list[dict]] = {stage: [] for stage in STAGES}
    for k in sizes:
        src = workdir / f"demo-x{k}.jsonl"
        megabytes = write_copies(docs, k, src) / 1e6
        corpus, tokens = workdir / f"corpus-x{k}", workdir / f"tokens-x{k}"
        for stage, (a, b) in zip(STAGES, ((src, corpus), (corpus, tokens)), strict=True):
            tries = []
            for n in range(REPEATS[stage]):  # fastest of a few: one busy spell is not the trend
                if n:
                    shutil.rmtree(b)
                tries.append(measure(stage, a, b, tokenizer))
            result = min(tries, key=lambda t: t["seconds"])
            result["peak_rss_mb"] = max(t["peak_rss_mb"] for t in tries)
            result |= {"size": k, "mb": megabytes, "mb_per_s": megabytes / result["seconds"]}
            results[stage].append(result)
            print(
                f"  x{k:<3} {stage:<9} {megabytes:7.1f} MB  {result['seconds']:7.2f} s  "
                f"{result['mb_per_s']:6.2f} MB/s  peak RSS {result['peak_rss_mb']:6.0f} MB",
                flush=True,
            )
        if results["ingest"][-1]["docs"] != k * len(docs):
            raise SystemExit(
                f"x{k}: ingest kept {results['ingest'][-1]['docs']} of {k * len(docs)} documents"
            )
        src.unlink()
    return results


def plot(results: dict[str, list[dict]], path: Path, machine_line: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for stage, points in results.items():
        mb = [p["mb"] for p in points]
        left.plot(mb, [p["seconds"] for p in points], "o-", label=stage)
        linear = [points[0]["seconds"] * m / mb[0] for m in mb]
        left.plot(mb, linear, ":", color="grey")
        right.plot(mb, [p["peak_rss_mb"] for p in points], "o-", label=stage)
    left.set(xlabel="corpus text", ylabel="wall time (s)", title="time (dotted: linear from x1)")
    left.set_yscale("log")
    right.set(xlabel="corpus text", ylabel="peak RSS (MB)", title="peak memory (flat = streaming)")
    right.set_ylim(bottom=0)
    ticks = [p["mb"] for p in points]
    labels = [f"x{p['size']}\n{p['mb']:.0f} MB" for p in points]
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xticks(ticks, labels)
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(
        f"Demo text x{', x'.join(str(p['size']) for p in points)}: {machine_line}", fontsize=9
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def to_rows(results: dict[str, list[dict]]) -> list[Row]:
    out = []
    for stage, points in results.items():
        for p in points:
            out.append(
                Row(
                    f"scaling {stage}: demo text x{p['size']}",
                    "s",
                    None,
                    p["seconds"],
                    "",
                    0.0,
                    None,
                    p["peak_rss_mb"],
                    f"{p['mb']:.0f} MB, {p['mb_per_s']:.1f} MB/s",
                )
            )
        first, last = points[0], points[-1]
        span = f"x{first['size']} to x{last['size']}"
        out.append(
            Row(
                f"scaling {stage}: peak RSS growth {span}",
                "x",
                None,
                last["peak_rss_mb"] / first["peak_rss_mb"],
                "<=",
                RSS_GROWTH_GOAL,
                note="flat memory: the stage streams",
                on_ratio=False,
            )
        )
        per_mb = (last["seconds"] / last["mb"]) / (first["seconds"] / first["mb"])
        out.append(
            Row(
                f"scaling {stage}: time per MB {span}",
                "x",
                None,
                per_mb,
                "<=",
                TIME_PER_MB_GOAL,
                note="linear time: ~1 (start-up makes x1 slower per MB)",
                on_ratio=False,
            )
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--plot", type=Path, default=Path("docs/scaling.png"))
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--measure", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        measure_here(args.measure, args.input, args.out, args.tokenizer)
        return
    from benchmarks.common import machine

    info = machine()
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        results = sweep(sorted(args.sizes), Path(tmp))
    plot(results, args.plot, f"{info['cpu']}, {info['cores']} cores, {info['date']}")
    print(f"plot: {args.plot}")
    result = to_rows(results)
    print_rows(result)
    if args.json:
        write_rows(result, args.json)


if __name__ == "__main__":
    main()
