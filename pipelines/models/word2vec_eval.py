"""How good a word2vec model is: intrinsic sets where they cover the vocabulary, else the loss.

The intrinsic sets (WordSim-353 and SimLex-999 Spearman, Google analogies) are English. On a
corpus in another language (or a tiny English one) they cover few or none of the vocabulary's
words, and a score over the handful of covered pairs is noise (over none it is NaN). So each
set's coverage, the share of its pairs/questions whose words all have a vector, is logged, and
a set covering less than `COVERAGE_FLOOR` is skipped: its score is absent, not NaN.

The held-out loss (`valid_loss_per_word`) works in every language: the negative-sampling loss
of the valid split under the trained vectors, per predicted word, as gensim tallies training
loss (`loss_per_word`), with the random parts (window shrinking, negative draws) seeded, so the
same model gives the same number. It is the headline when no intrinsic set is covered.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from gensim.models import KeyedVectors, Word2Vec
from gensim.test.utils import datapath

# Below this share of covered pairs/questions a set is skipped. The project's small English
# corpora cover 11-38% of the sets (Lee news); other languages cover ~0%.
COVERAGE_FLOOR = 0.1
RESTRICT_VOCAB = 300_000  # gensim's default: only the most frequent words are looked up
PAIR_SETS = (("wordsim353", "wordsim353.tsv"), ("simlex999", "simlex999.txt"))
ANALOGIES = "questions-words.txt"
HEADLINES = ("wordsim353_spearman", "simlex999_spearman", "analogy_accuracy")
VALID_WORDS = 200_000  # valid words scored at most (a bounded, fixed prefix of the split)
CHUNK = 16_384  # (input, target) pairs scored at a time


# ----------------------------------------------------------------------------- coverage


def _pairs(path: str) -> list[list[str]]:
    """The word pairs of a similarity file, read as gensim's evaluate_word_pairs reads them."""
    with open(path, encoding="utf-8") as handle:
        rows = [line.rstrip("\n").split("\t") for line in handle if not line.startswith("#")]
    return [row[:2] for row in rows if len(row) == 3]


def _questions(path: str) -> list[list[str]]:
    with open(path, encoding="utf-8") as handle:
        rows = [line.split() for line in handle if line.strip() and not line.startswith(":")]
    return [row for row in rows if len(row) == 4]


def coverage(kv: KeyedVectors, items: list[list[str]]) -> float:
    """Share of `items` whose words all have a vector (case-insensitive, as gensim looks up)."""
    if not items:
        return 0.0
    known = {word.upper() for word in kv.index_to_key[:RESTRICT_VOCAB]}
    return sum(all(w.upper() in known for w in item) for item in items) / len(items)


def intrinsic_eval(kv: KeyedVectors, floor: float = COVERAGE_FLOOR) -> dict[str, float]:
    """Each set's `<set>_coverage`; for a set covering at least `floor`, its score and OOV rate.

    WordSim-353 / SimLex-999: `<set>_spearman` and `<set>_oov` (share of pairs skipped for a
    word without a vector). Google analogies: `analogy_accuracy`, `analogy_oov`,
    `analogy_questions`. A skipped set has only its coverage: no score, never NaN.
    """
    metrics: dict[str, float] = {}
    for name, filename in PAIR_SETS:
        path = datapath(filename)
        metrics[f"{name}_coverage"] = share = coverage(kv, _pairs(path))
        if share < floor or share == 0:
            continue
        _, spearman, oov_percent = kv.evaluate_word_pairs(path)
        if np.isfinite(spearman[0]):  # a constant similarity column has no correlation
            metrics[f"{name}_spearman"] = float(spearman[0])
            metrics[f"{name}_oov"] = float(oov_percent) / 100
    path = datapath(ANALOGIES)
    questions = _questions(path)
    metrics["analogy_coverage"] = share = coverage(kv, questions)
    if share >= floor and share > 0:
        _, sections = kv.evaluate_word_analogies(path)
        total = sections[-1]  # gensim appends the "Total accuracy" section last
        answered = len(total["correct"]) + len(total["incorrect"])
        metrics["analogy_accuracy"] = len(total["correct"]) / answered
        metrics["analogy_oov"] = 1.0 - answered / len(questions)
        metrics["analogy_questions"] = float(answered)
    return metrics


def headline(
    scores: dict[str, float], valid_loss: float | None, train_loss: float | None
) -> tuple[str, float | None]:
    """The registered headline: the first covered intrinsic score, else the held-out loss
    (else, with no valid split, the last epoch's training loss per word)."""
    for name in HEADLINES:
        if name in scores:
            return name, scores[name]
    if valid_loss is not None:
        return "valid_loss_per_word", valid_loss
    return "final_epoch_loss_per_word", train_loss


# ----------------------------------------------------------------------------- held-out loss


def _valid_ids(model: Word2Vec, sentences: Iterable[list[str]]) -> tuple[np.ndarray, np.ndarray]:
    """Vocabulary ids of up to VALID_WORDS valid words (others dropped, as in training) and
    the sentence each belongs to."""
    index = model.wv.key_to_index
    ids: list[int] = []
    owners: list[int] = []
    for number, sentence in enumerate(sentences):
        kept = [index[w] for w in sentence if w in index]
        ids += kept
        owners += [number] * len(kept)
        if len(ids) >= VALID_WORDS:
            break
    return np.asarray(ids[:VALID_WORDS], np.int64), np.asarray(owners[:VALID_WORDS], np.int64)


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -x)


def _pair_losses(
    model: Word2Vec, inputs: np.ndarray, targets: np.ndarray, rng: np.random.Generator
) -> float:
    """Summed negative-sampling loss of `inputs` predicting `targets` (n,): inputs are word
    ids (n,) whose vectors are looked up a chunk at a time, or input vectors (n, d)."""
    out = model.syn1neg
    total = 0.0
    for start in range(0, len(targets), CHUNK):
        l1, target = inputs[start : start + CHUNK], targets[start : start + CHUNK]
        if l1.ndim == 1:
            l1 = model.wv.vectors[l1]
        draws = rng.integers(0, model.cum_table[-1], size=(len(target), model.negative))
        noise = np.searchsorted(model.cum_table, draws, side="right")
        positive = np.einsum("nd,nd->n", l1, out[target])
        negative = np.einsum("nd,nkd->nk", l1, out[noise])
        kept = noise != target[:, None]  # gensim skips a draw of the target itself
        total -= float(_log_sigmoid(positive).sum() + (_log_sigmoid(-negative) * kept).sum())
    return total


def _window_pairs(owner: np.ndarray, window: np.ndarray, size: int) -> tuple[np.ndarray, ...]:
    """(centre, context) positions: same sentence, at most the centre's shrunk window apart."""
    n = len(owner)
    centres, contexts = [], []
    for d in range(1, size + 1):
        left, right = np.arange(max(n - d, 0)), np.arange(d, max(n, d))
        for centre, context in ((right, left), (left, right)):
            ok = (owner[centre] == owner[context]) & (window[centre] >= d)
            centres.append(centre[ok])
            contexts.append(context[ok])
    return np.concatenate(centres), np.concatenate(contexts)


def valid_loss_per_word(
    model: Word2Vec, sentences: Iterable[list[str]], seed: int = 0
) -> float | None:
    """Negative-sampling loss per valid word (None for an empty valid split); no update.

    Skip-gram: every context word within the (randomly shrunk) window predicts the centre
    word; CBOW: the mean of the context vectors does. Subsampling is off: every word counts.
    """
    ids, owner = _valid_ids(model, sentences)
    if len(ids) < 2:
        return None
    rng = np.random.default_rng(seed)
    window = model.window - rng.integers(0, model.window, size=len(ids))  # gensim's shrinking
    centre, context = _window_pairs(owner, window, model.window)
    if model.sg:
        return _pair_losses(model, ids[context], ids[centre], rng) / len(ids)
    vectors = model.wv.vectors
    context_sum = np.zeros((len(ids), vectors.shape[1]), dtype=vectors.dtype)
    np.add.at(context_sum, centre, vectors[ids[context]])
    context_n = np.bincount(centre, minlength=len(ids))
    has = context_n > 0
    mean = context_sum[has] / context_n[has, None]
    return _pair_losses(model, mean, ids[has], rng) / len(ids)
