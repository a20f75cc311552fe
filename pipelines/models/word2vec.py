"""word2vec (Mikolov et al. 2013) with gensim: skip-gram or CBOW, negative sampling.

What this module adds around gensim, top to bottom (the sentences it trains on and the
per-token vectors it gives transfer, both in the tokenizer's ids, are in `word2vec_vocab.py`):

1. A correct per-epoch loss. gensim's `get_latest_training_loss()` has three known quirks:
   it is cumulative over a `train()` call; it is tallied in float32, so large sums stop
   growing (gensim #2735: stuck at 134217728 = 2**27); and each worker thread reads the shared
   tally at the start of a job and writes it back at the end, so concurrent jobs overwrite each
   other (#2743: measured here, 2 workers report about half the loss of 1 worker). The fix
   gensim's maintainers proposed (#2617) is done here without patching gensim:
   `TallyingWord2Vec` gives every job a private tally (a view of the model) and adds it to a
   float64 epoch total under a lock; the `EpochLoss` callback resets it at each epoch start
   and records it at the end. Same training maths: only the bookkeeping differs.
2. Resume at epoch boundaries. Each epoch is one `train(epochs=1, start_alpha, end_alpha)`
   call with the linear decay from `alpha_at`, which gives exactly the rates one multi-epoch
   call would use. After each epoch a checkpoint holds vectors, output weights, vocabulary
   counts and the RNG state as .npy/JSON (no pickle: gensim's own `save` pickles the model);
   a restart rebuilds the model from it and continues with the next epoch. With workers=1 the
   result is bit-identical to an uninterrupted run (job order and RNG draws are fixed); with
   more workers, thread scheduling makes any two gensim runs differ anyway.
3. A held-out loss on the valid split (`word2vec_eval`, which also holds the intrinsic sets).
4. Saving as word2vec binary + a `word count` vocabulary file (`save_vectors`). Not
   `KeyedVectors.save`: that pickles, and loading a pickle runs whatever code it names; the
   word2vec format is plain data that any tool reads.
"""

from __future__ import annotations

import json
import math
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from gensim.models import KeyedVectors, Word2Vec
from gensim.models.callbacks import CallbackAny2Vec
from gensim.models.word2vec_inner import train_batch_cbow, train_batch_sg

from pipelines.models.word2vec_eval import valid_loss_per_word
from pipelines.models.word2vec_vocab import (
    ReplayedSentences,
    ShardSentences,
    Word2VecError,
    word_vocab,
)
from pretrainlab.config import Word2VecSpec
from storage.atomic import atomic_dir, atomic_path, read_manifest, write_json, write_manifest

ALPHA, MIN_ALPHA = 0.025, 0.0001  # gensim's default learning-rate schedule (linear decay)
VECTORS_FILE, VOCAB_FILE, META_FILE = "vectors.bin", "vocab.txt", "word2vec.json"
FORMAT = "pretrainlab-word2vec"
CHECKPOINT_FORMAT = "pretrainlab-word2vec-checkpoint-v1"

LogFn = Callable[[dict[str, float], int], None]


# ----------------------------------------------------------------------------- a correct loss


class _JobView:
    """The model as one training job sees it: every attribute is the model's except the loss
    tally, which is private to the job (gensim's Cython reads and writes it on `model`)."""

    def __init__(self, model: Word2Vec) -> None:
        self._model = model
        self.wv = model.wv  # read twice per token by gensim: a plain attribute, not __getattr__
        self.running_training_loss = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


class TallyingWord2Vec(Word2Vec):
    """gensim's Word2Vec with a race-free float64 loss tally per epoch (see module docstring)."""

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._tally_lock = threading.Lock()
        self.reset_tally()

    def reset_tally(self) -> None:
        self.tally_loss, self.tally_words = 0.0, 0

    def _do_train_job(
        self, sentences: list[list[str]], alpha: float, inits: tuple[Any, Any]
    ) -> tuple[int, int]:
        # gensim 4's Word2Vec._do_train_job, with the loss tallied on a per-job view
        work, neu1 = inits
        job = _JobView(self)
        if self.sg:
            effective = train_batch_sg(job, sentences, alpha, work, self.compute_loss)
        else:
            effective = train_batch_cbow(job, sentences, alpha, work, neu1, self.compute_loss)
        with self._tally_lock:
            self.tally_loss += float(job.running_training_loss)
            self.tally_words += effective
        return effective, self._raw_word_count(sentences)


class EpochLoss(CallbackAny2Vec):
    """Per-epoch training loss (sum over the epoch's word/context pairs) and loss per word."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.loss_per_word: list[float] = []

    def on_epoch_begin(self, model: TallyingWord2Vec) -> None:
        model.reset_tally()

    def on_epoch_end(self, model: TallyingWord2Vec) -> None:
        self.losses.append(model.tally_loss)
        self.loss_per_word.append(model.tally_loss / max(model.tally_words, 1))


# ----------------------------------------------------------------------------- schedule


def alpha_at(epoch: float, epochs: int) -> float:
    """gensim's linear learning-rate decay from ALPHA to MIN_ALPHA, at a (fractional) epoch."""
    return ALPHA - (ALPHA - MIN_ALPHA) * min(epoch / epochs, 1.0)


def planned_epochs(spec: Word2VecSpec, corpus_words: int, budget_words: int | None) -> int:
    """Epochs to run: spec.epochs, fewer when a word budget is reached sooner. The learning
    rate decays over the planned epochs, so a budgeted run still ends at MIN_ALPHA."""
    if budget_words is None:
        return spec.epochs
    return max(1, min(spec.epochs, math.ceil(budget_words / max(corpus_words, 1))))


# ----------------------------------------------------------------------------- model


def _model_params(spec: Word2VecSpec, min_count: int) -> dict[str, Any]:
    return {
        "sg": int(spec.sg),
        "hs": 0,  # negative sampling only
        "negative": spec.negative,
        "vector_size": spec.vector_size,
        "window": spec.window,
        "sample": spec.sample,
        "min_count": min_count,
        "seed": spec.seed,
        "alpha": ALPHA,
        "min_alpha": MIN_ALPHA,
    }


def new_model(spec: Word2VecSpec, min_count: int) -> TallyingWord2Vec:
    return TallyingWord2Vec(**_model_params(spec, min_count), workers=spec.workers)


@dataclass
class Word2VecState:
    """Progress of a run; saved with every epoch checkpoint."""

    params: dict[str, Any]
    epochs_planned: int
    epochs_done: int = 0
    losses: list[float] = field(default_factory=list)
    loss_per_word: list[float] = field(default_factory=list)
    raw_words: int = 0  # words streamed, all epochs
    trained_words: int = 0  # after min_count and down-sampling
    wall_s: float = 0.0  # epochs + checkpoints, summed over resumes
    corpus_count: int = 0
    corpus_total_words: int = 0


@dataclass(frozen=True)
class Word2VecResult:
    epochs_done: int
    epochs_planned: int
    losses: list[float]  # training loss per epoch (sum over the epoch)
    loss_per_word: list[float]  # the same per effective word: comparable across corpora
    raw_words: int
    trained_words: int
    wall_s: float
    words_per_s: float  # throughput: raw words / wall_s
    vocab_size: int
    stopped_reason: str  # epochs | budget_words | budget_minutes | stop_after_epoch
    resumed_from: int  # epochs already done when this call started
    valid_loss_per_word: float | None = None  # held-out, as loss_per_word; None: no valid text


# ----------------------------------------------------------------------------- checkpoints


def _latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    done = [p for p in checkpoint_dir.glob("epoch-*") if read_manifest(p) is not None]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def save_checkpoint(model: TallyingWord2Vec, state: Word2VecState, checkpoint_dir: Path) -> Path:
    """Everything the next epoch needs, as .npy + JSON; older epochs are then removed."""
    final = checkpoint_dir / f"epoch-{state.epochs_done}"
    name, keys, pos, has_gauss, cached = model.random.get_state()
    with atomic_dir(final) as tmp:
        np.save(tmp / "vectors.npy", model.wv.vectors)
        np.save(tmp / "syn1neg.npy", model.syn1neg)
        np.save(tmp / "counts.npy", model.wv.expandos["count"])
        np.save(tmp / "sample_int.npy", model.wv.expandos["sample_int"])
        np.save(tmp / "rng_keys.npy", keys)
        write_json(tmp / "vocab.json", model.wv.index_to_key)
        rng = {"name": name, "pos": int(pos), "has_gauss": int(has_gauss), "cached": cached}
        write_manifest(tmp, {"format": CHECKPOINT_FORMAT, "state": asdict(state), "rng": rng})
    for old in checkpoint_dir.glob("epoch-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(
    checkpoint_dir: Path, spec: Word2VecSpec, min_count: int
) -> tuple[TallyingWord2Vec, Word2VecState] | None:
    """The model and progress of the latest finished epoch, or None when there is none."""
    path = _latest_checkpoint(checkpoint_dir)
    if path is None:
        return None
    manifest = read_manifest(path) or {}
    if manifest.get("format") != CHECKPOINT_FORMAT:
        raise Word2VecError(f"{path}: not a word2vec checkpoint; delete it or use another dir")
    state = Word2VecState(**manifest["state"])
    wanted = _model_params(spec, min_count)
    if state.params != wanted:
        changed = sorted(k for k in wanted if state.params.get(k) != wanted[k])
        raise Word2VecError(
            f"{path}: checkpoint was trained with other settings ({', '.join(changed)}); "
            "use a fresh checkpoint_dir for these settings or delete this one"
        )
    try:
        words = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
        arrays = {
            n: np.load(path / f"{n}.npy", allow_pickle=False)
            for n in ("vectors", "syn1neg", "counts", "sample_int", "rng_keys")
        }
    except (OSError, ValueError) as error:
        raise Word2VecError(f"{path}: unreadable checkpoint ({error}); delete it") from None
    model = new_model(spec, min_count)
    _restore_vocab(model, words, arrays["counts"], state)
    if not np.array_equal(model.wv.expandos["sample_int"], arrays["sample_int"]):
        raise Word2VecError(f"{path}: vocabulary does not rebuild identically; delete it")
    model.wv.vectors[...] = arrays["vectors"]
    model.syn1neg[...] = arrays["syn1neg"]
    rng = manifest["rng"]
    model.random.set_state(
        (rng["name"], arrays["rng_keys"], rng["pos"], rng["has_gauss"], rng["cached"])
    )
    return model, state


def _restore_vocab(
    model: TallyingWord2Vec, words: list[str], counts: np.ndarray, state: Word2VecState
) -> None:
    """Rebuild the vocabulary (counts -> down-sampling, negative-sampling table) in the saved
    order. gensim's frequency sort reverses ties on every call, so the order is set here."""
    model.build_vocab_from_freq(dict(zip(words, counts.tolist(), strict=True)))
    wv = model.wv
    order = [wv.key_to_index[w] for w in words]
    wv.index_to_key = list(words)
    wv.key_to_index = {w: i for i, w in enumerate(words)}
    for key in wv.expandos:
        wv.expandos[key] = wv.expandos[key][order]
    model.make_cum_table()  # the negative-sampling table follows the index order
    model.corpus_count = state.corpus_count
    model.corpus_total_words = state.corpus_total_words


# ----------------------------------------------------------------------------- training


def train_word2vec(
    sentences: Iterable[list[str]],
    spec: Word2VecSpec,
    min_count: int,
    checkpoint_dir: str | Path,
    log: LogFn | None = None,
    budget_words: int | None = None,
    budget_minutes: float | None = None,
    stop_after_epoch: int | None = None,
    valid: Iterable[list[str]] = (),
    on_epoch: Callable[[KeyedVectors, Word2VecResult], None] | None = None,
) -> tuple[KeyedVectors, Word2VecResult]:
    """Train (or resume from the latest epoch checkpoint) and return the vectors + stats.

    `sentences` must be restartable (a list, or `ShardSentences`). `log(metrics, epoch)` gets
    each epoch's loss, loss per word, words/s and learning rate. `stop_after_epoch` is a test
    hook: return after that epoch's checkpoint, as if killed. `valid` sentences give the
    result's held-out `valid_loss_per_word`. `on_epoch(vectors, stats so far)` runs after each
    epoch's checkpoint (pretraining points are kept there).
    """
    checkpoint_dir = Path(checkpoint_dir)
    restored = load_checkpoint(checkpoint_dir, spec, min_count)
    if restored is None:
        model = new_model(spec, min_count)
        model.build_vocab(sentences)
        if not model.wv.index_to_key:
            raise Word2VecError(
                f"no word occurs min_count={min_count} times in the sentences: the vocabulary "
                "is empty (lower tokenizers.word.min_count or add text)"
            )
        state = Word2VecState(
            params=_model_params(spec, min_count),
            epochs_planned=planned_epochs(spec, model.corpus_total_words, budget_words),
            corpus_count=model.corpus_count,
            corpus_total_words=model.corpus_total_words,
        )
    else:
        model, state = restored
    resumed_from = state.epochs_done
    tracker = EpochLoss()
    reason = "epochs" if state.epochs_planned == spec.epochs else "budget_words"
    while state.epochs_done < state.epochs_planned:
        if budget_minutes is not None and state.wall_s >= budget_minutes * 60:
            reason = "budget_minutes"
            break
        epoch = state.epochs_done
        start = time.perf_counter()
        trained, raw = model.train(
            sentences,
            total_examples=state.corpus_count,
            epochs=1,
            start_alpha=alpha_at(epoch, state.epochs_planned),
            end_alpha=alpha_at(epoch + 1, state.epochs_planned),
            compute_loss=True,
            callbacks=[tracker],
        )
        epoch_s = time.perf_counter() - start
        state.epochs_done += 1
        state.losses.append(tracker.losses[-1])
        state.loss_per_word.append(tracker.loss_per_word[-1])
        state.raw_words += raw
        state.trained_words += trained
        state.wall_s += epoch_s
        save_checkpoint(model, state, checkpoint_dir)
        state.wall_s += time.perf_counter() - start - epoch_s  # the save counts as loop time
        if log is not None:
            log(
                {
                    "loss": state.losses[-1],
                    "loss_per_word": state.loss_per_word[-1],
                    "words_per_s": raw / max(epoch_s, 1e-9),
                    "lr": alpha_at(epoch, state.epochs_planned),
                    "words_seen": float(state.raw_words),
                },
                state.epochs_done,
            )
        if on_epoch is not None:
            on_epoch(model.wv, _result(state, len(model.wv), reason, resumed_from))
        if stop_after_epoch is not None and state.epochs_done >= stop_after_epoch:
            reason = "stop_after_epoch"
            break
    result = _result(state, len(model.wv), reason, resumed_from)
    held_out = valid_loss_per_word(model, valid, seed=spec.seed)
    return model.wv, replace(result, valid_loss_per_word=held_out)


def _result(state: Word2VecState, vocab_size: int, reason: str, resumed: int) -> Word2VecResult:
    return Word2VecResult(
        epochs_done=state.epochs_done,
        epochs_planned=state.epochs_planned,
        losses=list(state.losses),
        loss_per_word=list(state.loss_per_word),
        raw_words=state.raw_words,
        trained_words=state.trained_words,
        wall_s=state.wall_s,
        words_per_s=state.raw_words / max(state.wall_s, 1e-9),
        vocab_size=vocab_size,
        stopped_reason=reason,
        resumed_from=resumed,
    )


def train_word2vec_on_shards(
    tokens_dir: str | Path,
    tokenizer_dir: str | Path,
    spec: Word2VecSpec,
    min_count: int,
    checkpoint_dir: str | Path,
    **options: Any,
) -> tuple[KeyedVectors, Word2VecResult]:
    """`train_word2vec` on the train split of word-level token shards (read once, replayed
    from memory for the epochs when they fit: `ReplayedSentences`)."""
    vocab, specials = word_vocab(tokenizer_dir)
    sentences = ReplayedSentences(ShardSentences(tokens_dir, vocab, drop_ids=specials))
    valid = ShardSentences(tokens_dir, vocab, drop_ids=specials, split="valid")
    return train_word2vec(sentences, spec, min_count, checkpoint_dir, valid=valid, **options)


# ----------------------------------------------------------------------------- save & load


def save_vectors(
    kv: KeyedVectors, directory: str | Path, meta: dict[str, Any] | None = None
) -> Path:
    """word2vec binary vectors + `word count` vocabulary + a JSON summary (written last)."""
    directory = Path(directory)
    bad = [w for w in kv.index_to_key if not w or any(c.isspace() for c in w)]
    if bad:
        raise Word2VecError(
            f"cannot save {len(bad)} word(s) containing whitespace in word2vec format "
            f"(e.g. {bad[0]!r}); the word-level tokenizer never makes such tokens"
        )
    with (
        atomic_path(directory / VECTORS_FILE) as vectors,
        atomic_path(directory / VOCAB_FILE) as vocab,
    ):
        kv.save_word2vec_format(str(vectors), fvocab=str(vocab), binary=True)
    summary = {
        "format": FORMAT,
        "vector_size": kv.vector_size,
        "vocab_size": len(kv),
        **(meta or {}),
    }
    write_json(directory / META_FILE, summary)
    return directory


def load_vectors(directory: str | Path) -> KeyedVectors:
    """The KeyedVectors `save_vectors` wrote (plain parsing, no pickle), with word counts."""
    directory = Path(directory)
    try:
        summary = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise Word2VecError(
            f"{directory / META_FILE}: missing or unreadable; not a word2vec directory "
            "(save one with save_vectors)"
        ) from None
    if summary.get("format") != FORMAT:
        raise Word2VecError(f"{directory / META_FILE}: not a pretrainlab word2vec summary")
    try:
        kv = KeyedVectors.load_word2vec_format(
            str(directory / VECTORS_FILE), fvocab=str(directory / VOCAB_FILE), binary=True
        )
    except (OSError, ValueError, EOFError, UnicodeDecodeError) as error:
        raise Word2VecError(f"{directory / VECTORS_FILE}: corrupt vectors ({error})") from None
    if (len(kv), kv.vector_size) != (summary["vocab_size"], summary["vector_size"]):
        raise Word2VecError(f"{directory}: vectors do not match {META_FILE}; save them again")
    return kv
