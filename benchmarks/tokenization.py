"""Tokenization throughput: the stage (`encode_corpus`) vs a bare `tokenizers` loop, same text.

Run:  .venv/bin/python -m benchmarks.tokenization [--mb 20] [--workers 1 2] [--rounds 2]

Real text (gensim's Wikipedia sample and Lee news corpus, ~3.3 MB) is repeated to `--mb` MB
and written as a corpus of Parquet parts. A WordPiece tokenizer is trained on the original
text once. Then, in one run on one machine:
- baseline: a bare `Tokenizer.encode_batch` loop (batch 1000, no specials) over sentences
  split beforehand and held in memory: reading, splitting and writing are not timed;
- the same loop with `encode_batch_fast` (no offsets), the call the stage uses;
- the stage: read Parquet, split sentences, encode, write token shards, count statistics.
Throughput is MB of document text (UTF-8) per second and tokens per second; the ratio is the
stage over the baseline (goal >= 0.8). The stage must produce exactly the baseline's tokens.
Contenders run interleaved for `--rounds` rounds and the best time of each is kept, so a busy
spell on a shared machine does not favour one of them.
"""

from __future__ import annotations

import argparse
import bz2
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tokenizers import Tokenizer

from benchmarks.common import Row, peak_rss_mb, print_rows, reset_peak_rss, write_rows
from pipelines.data.encoding import encode_corpus
from pipelines.data.sentences import split_sentences
from pipelines.data.tokenizer_training import save_tokenizer, train_tokenizer
from pretrainlab.config import WordPieceSpec

WIKI = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
BATCH = 1000
BASELINE = "bare encode_batch (baseline)"
FAST = "bare encode_batch_fast"
NO_CUT = 1_000_000  # max_sentence_tokens: nothing is cut, so both sides do the same work


def real_documents() -> list[str]:
    """Wikipedia paragraphs (markup stripped) and Lee news articles: ~3.3 MB of English.

    gensim is imported here: encoding workers are spawned and re-import this module, and
    gensim's import time would be charged to them."""
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki
    from gensim.test.utils import datapath

    with bz2.open(datapath(WIKI)) as handle:
        pages = [filter_wiki(text) for _, text, _ in extract_pages(handle)]
    docs = [
        para.replace("'''", "").replace("''", "").strip()
        for page in pages
        for para in page.split("\n\n")
    ]
    docs = [d for d in docs if len(d) > 80]
    docs += Path(datapath("lee_background.cor")).read_text(encoding="utf-8").splitlines()
    return docs


def write_corpus(docs: list[str], directory: Path, target_mb: float, parts: int) -> list[str]:
    """Repeat `docs` to `target_mb` MB and write them as a corpus; return the texts written."""
    texts: list[str] = []
    size = 0
    while size < target_mb * 1e6:
        for doc in docs:
            texts.append(doc)
            size += len(doc.encode("utf-8"))
    per = -(-len(texts) // parts)
    for i in range(parts):
        chunk = texts[i * per : (i + 1) * per]
        start = i * per
        table = pa.table(
            {
                "doc_id": [f"doc{start + j:08d}" for j in range(len(chunk))],
                "source": ["bench"] * len(chunk),
                "text": chunk,
                "n_chars": [len(t) for t in chunk],
                "split": ["valid" if (start + j) % 20 == 0 else "train" for j in range(len(chunk))],
            }
        )
        pq.write_table(table, directory / f"part-{i:05d}.parquet")
    return texts


@dataclass
class Timing:
    """Best wall-clock and CPU seconds over the rounds (CPU includes worker processes)."""

    wall: float = float("inf")
    cpu: float = float("inf")
    tokens: int = 0
    rss_mb: float = 0.0  # this process's peak while it ran (worker processes not included)


def measure(run: Callable[[], int], timing: Timing) -> None:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    reset_peak_rss()
    cpu, wall = time.process_time(), time.perf_counter()
    timing.tokens = run()
    wall = time.perf_counter() - wall
    timing.rss_mb = max(timing.rss_mb, peak_rss_mb())
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = time.process_time() - cpu + (after.ru_utime + after.ru_stime)
    cpu -= children.ru_utime + children.ru_stime
    timing.wall, timing.cpu = min(timing.wall, wall), min(timing.cpu, cpu)


def bare_loop(encode: Callable[..., list], sentences: list[str]) -> int:
    """A plain batch loop that keeps every sentence's ids; returns the token count."""
    tokens = 0
    for i in range(0, len(sentences), BATCH):
        ids = [e.ids for e in encode(sentences[i : i + BATCH], add_special_tokens=False)]
        tokens += sum(map(len, ids))
    return tokens


def stage(corpus: Path, tokenizer_dir: Path, out: Path, workers: int) -> int:
    """The whole stage: read, split, encode, write, count; returns the token count."""
    stats = encode_corpus(corpus, tokenizer_dir, out, "bert", NO_CUT, workers=workers)
    shutil.rmtree(out)
    return stats["tokens"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=20.0, help="corpus size in MB of text")
    parser.add_argument("--parts", type=int, default=8, help="corpus part files")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; best is kept")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-tokenization-") as tmp:
        root = Path(tmp)
        corpus = root / "corpus"
        corpus.mkdir()
        docs = real_documents()
        texts = write_corpus(docs, corpus, args.mb, args.parts)
        megabytes = sum(len(t.encode("utf-8")) for t in texts) / 1e6

        started = time.perf_counter()
        tokenizer_dir = root / "tokenizer"
        save_tokenizer(train_tokenizer(WordPieceSpec(vocab_size=8000), docs), tokenizer_dir)
        trained = time.perf_counter() - started
        tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
        started = time.perf_counter()
        sentences = [s for t in texts for s in split_sentences(t)]
        split_s = time.perf_counter() - started
        print(
            f"corpus: {megabytes:.1f} MB, {len(texts):,} docs, {len(sentences):,} sentences, "
            f"{args.parts} parts; {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}; "
            f"WordPiece 8k trained in {trained:.1f} s; splitting alone: {megabytes / split_s:.1f} "
            "MB/s"
        )

        runs: dict[str, Callable[[], int]] = {
            BASELINE: lambda: bare_loop(tok.encode_batch, sentences),
            FAST: lambda: bare_loop(tok.encode_batch_fast, sentences),
        }
        for workers in args.workers:
            runs[f"encode_corpus, workers={workers}"] = lambda w=workers: stage(
                corpus, tokenizer_dir, root / "tokens", w
            )
        timings = {name: Timing() for name in runs}
        for _ in range(args.rounds):  # interleaved, so a busy spell hits every contender
            for name, run in runs.items():
                measure(run, timings[name])
        report(timings, megabytes)
        print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    if args.json:
        rows = to_rows(timings, megabytes)
        write_rows(rows, args.json)
        print_rows(rows)


def to_rows(timings: dict[str, Timing], megabytes: float) -> list[Row]:
    """One row per stage configuration: MB/s against the bare encode_batch loop."""
    base, fast = timings[BASELINE], timings[FAST]
    return [
        Row(
            f"tokenise ({name})",
            "MB/s",
            megabytes / base.wall,
            megabytes / t.wall,
            ">=",
            0.8,
            base.rss_mb,
            t.rss_mb,
            f"{megabytes:.0f} MB; by CPU time {base.cpu / t.cpu:.2f}; vs encode_batch_fast "
            f"{fast.wall / t.wall:.2f}; the stage also reads Parquet, splits, writes shards",
        )
        for name, t in timings.items()
        if name not in (BASELINE, FAST)
    ]


def report(timings: dict[str, Timing], megabytes: float) -> None:
    base, fast = timings[BASELINE], timings[FAST]
    print(
        f"{'':<30} {'wall s':>7} {'MB/s':>6} {'Mtok/s':>6} {'ratio':>5} {'vs fast':>7}"
        f" | {'cpu s':>6} {'ratio':>5} {'vs fast':>7}"
    )
    for name, t in timings.items():
        if t.tokens != base.tokens:
            raise SystemExit(f"{name} produced {t.tokens} tokens, the baseline {base.tokens}")
        print(
            f"{name:<30} {t.wall:7.2f} {megabytes / t.wall:6.2f} {t.tokens / t.wall / 1e6:6.2f} "
            f"{base.wall / t.wall:5.2f} {fast.wall / t.wall:7.2f} | {t.cpu:6.2f} "
            f"{base.cpu / t.cpu:5.2f} {fast.cpu / t.cpu:7.2f}"
        )
    print(
        "ratio = baseline seconds / seconds (goal >= 0.8); the stage also reads Parquet, splits "
        "sentences and writes shards.\nCPU seconds measure work; on a busy shared machine they "
        "are steadier than wall-clock."
    )


if __name__ == "__main__":
    main()
