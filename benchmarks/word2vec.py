"""word2vec words/s: `train_word2vec_on_shards` vs bare gensim on the same sentences.

Run through `python -m benchmarks.pretrain --families word2vec` (it owns the token shards).

Bare gensim gets the sentences as a list in memory (reading shards is not timed), once with its
default bookkeeping (no loss) and once with `compute_loss=True` (the same work as the pipeline,
which always tallies the per-epoch loss); the pipeline reads them from the shards (once, then
replays them from memory), writes an epoch checkpoint and scores the held-out split. Each times
everything from an untrained model to trained vectors (vocabulary scan included). Repeats are
interleaved (bare, pretrainlab, bare with loss, ...); the ratio is the median of the per-repeat
ratios. Goal: ratio >= 0.95.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import Repeats
from benchmarks.common import Row as ResultRow


def word2vec_row(
    tokens_dir: Path, tokenizer_dir: Path, workdir: Path, min_count: int, repeats: int, sg: bool
) -> dict:
    """Per-repeat words/s and words per CPU-second of the three contenders, and their ratios."""
    from gensim.models import Word2Vec

    from pipelines.models.word2vec import train_word2vec_on_shards
    from pipelines.models.word2vec_vocab import ShardSentences, word_vocab
    from pretrainlab.config import Word2VecSpec

    vocab, specials = word_vocab(tokenizer_dir)
    sentences = list(ShardSentences(tokens_dir, vocab, drop_ids=specials))
    words = sum(len(s) for s in sentences)
    spec = Word2VecSpec(sg=sg, epochs=5, workers=2)

    def bare(compute_loss: bool) -> None:
        Word2Vec(
            sentences,
            sg=int(sg),
            vector_size=spec.vector_size,
            window=spec.window,
            negative=spec.negative,
            sample=spec.sample,
            min_count=min_count,
            workers=spec.workers,
            epochs=spec.epochs,
            seed=spec.seed,
            compute_loss=compute_loss,
        )

    def ours() -> None:
        with tempfile.TemporaryDirectory(dir=workdir) as checkpoints:
            train_word2vec_on_shards(tokens_dir, tokenizer_dir, spec, min_count, checkpoints)

    contenders: dict[str, Callable[[], None]] = {
        "bare": lambda: bare(False),
        "loop": ours,
        "bare_loss": lambda: bare(True),
    }
    wall: dict[str, list[float]] = {name: [] for name in contenders}
    cpu: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):  # interleaved: bare, ours, bare with loss, bare, ours, ...
        for name, run in contenders.items():
            wall0, cpu0 = time.perf_counter(), time.process_time()
            run()
            wall[name].append(spec.epochs * words / (time.perf_counter() - wall0))
            cpu[name].append(spec.epochs * words / max(time.process_time() - cpu0, 1e-9))
    return {
        "mode": "skip-gram" if sg else "cbow",
        "words": words,
        "wall": Repeats(wall["bare"], wall["loop"]),
        "wall_vs_loss": Repeats(wall["bare_loss"], wall["loop"]),
        "cpu": Repeats(cpu["bare"], cpu["loop"]),
    }


def word2vec_line(result: dict) -> str:
    """One printed line: words/s instead of tokens/s, no MFU."""
    wall, cpu = result["wall"], result["cpu"]
    row = word2vec_result(result)
    return (
        f"{'w2v ' + result['mode'][:4]:8} {row.bare:11,.0f} {row.ours:11,.0f} "
        f"{row.ratio_text():>24} cpu ratio {cpu.median_ratio:.3f}  "
        f"(vs bare with loss: {result['wall_vs_loss'].median_ratio:.3f}; "
        f"ratios {', '.join(f'{r:.2f}' for r in wall.ratios)})"
    )


def word2vec_result(result: dict) -> ResultRow:
    """The table row (peak RSS is the whole benchmark process's, so none is reported)."""
    row = ResultRow(
        f"pretrain word2vec {result['mode']}",
        "words/s",
        None,
        None,
        ">=",
        0.95,
        None,
        None,
        f"{result['words']:,} words x 5 epochs; gensim on a list in memory vs the pipeline "
        f"from shards; by CPU time {result['cpu'].median_ratio:.2f}; vs gensim with "
        f"compute_loss {result['wall_vs_loss'].median_ratio:.2f}",
    )
    return result["wall"].fill(row)
