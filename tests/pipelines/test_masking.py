"""BERT masking: the paper's 15% / 80-10-10 rule, measured on >= 100k tokens."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.models.masking import IGNORE_INDEX, mask_tokens

VOCAB = 1000
PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIAL_IDS = (PAD, UNK, CLS, SEP, MASK)
SEQ_LEN = 64


def _sequences(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`[CLS] A [SEP] B [SEP] [PAD]...` rows of random content ids (never special)."""
    g = np.random.default_rng(seed)
    ids = g.integers(len(SPECIAL_IDS), VOCAB, (n, SEQ_LEN))
    special = np.zeros((n, SEQ_LEN), dtype=bool)
    for row in range(n):
        used = int(g.integers(40, SEQ_LEN + 1))
        seam = int(g.integers(2, used - 2))
        ids[row, 0], ids[row, seam], ids[row, used - 1] = CLS, SEP, SEP
        ids[row, used:] = PAD
        special[row, [0, seam, used - 1]] = True
        special[row, used:] = True
    return ids, special


def _mask_rows(ids, special, shares=(0.15, 0.8, 0.1), seed=0):
    """Mask each row with its own generator, as the BERT objective does."""
    masked, labels = [], []
    for row in range(len(ids)):
        g = np.random.default_rng([seed, row])
        m, lab = mask_tokens(
            ids[row], special[row], VOCAB, MASK, g, *shares, special_ids=SPECIAL_IDS
        )
        masked.append(m)
        labels.append(lab)
    return np.stack(masked), np.stack(labels)


@pytest.fixture(scope="module")
def corpus():
    ids, special = _sequences(2200)  # 140,800 positions, ~104k maskable tokens
    masked, labels = _mask_rows(ids, special)
    return ids, special, masked, labels


def test_statistics_follow_the_paper(corpus):
    ids, special, masked, labels = corpus
    candidates = ~special
    assert int(candidates.sum()) >= 100_000
    chosen = labels != IGNORE_INDEX
    share = chosen.sum() / candidates.sum()
    assert abs(float(share) - 0.15) < 0.003

    n = int(chosen.sum())
    to_mask = (masked == MASK) & chosen
    unchanged = (masked == ids) & chosen
    to_random = chosen & ~to_mask & ~unchanged
    # a random draw equal to the original (p = 1/995) counts as unchanged: within tolerance
    assert abs(int(to_mask.sum()) / n - 0.8) < 0.012
    assert abs(int(to_random.sum()) / n - 0.1) < 0.01
    assert abs(int(unchanged.sum()) / n - 0.1) < 0.01


def test_specials_never_chosen_and_labels_only_at_chosen(corpus):
    ids, special, masked, labels = corpus
    chosen = labels != IGNORE_INDEX
    assert not (chosen & special).any()
    assert np.array_equal(masked[special], ids[special])  # [CLS] [SEP] [PAD] untouched
    assert np.array_equal(labels[chosen], ids[chosen])  # label = the original token
    assert np.array_equal(masked[~chosen], ids[~chosen])  # nothing else changes
    assert (labels[~chosen] == IGNORE_INDEX).all()


def test_random_replacements_come_from_the_non_special_vocabulary(corpus):
    ids, _, masked, labels = corpus
    replaced = (labels != IGNORE_INDEX) & (masked != MASK) & (masked != ids)
    drawn = masked[replaced]
    assert len(drawn) > 1000
    assert not np.isin(drawn, SPECIAL_IDS).any()
    assert int(drawn.min()) >= len(SPECIAL_IDS) and int(drawn.max()) < VOCAB
    assert len(np.unique(drawn)) > 0.6 * (VOCAB - len(SPECIAL_IDS))  # spread, not one token


def test_count_per_sequence_is_the_rounded_share():
    ids, special = _sequences(300, seed=1)
    _, labels = _mask_rows(ids, special, seed=1)
    for row in range(len(ids)):
        expected = 0.15 * int((~special[row]).sum())
        got = int((labels[row] != IGNORE_INDEX).sum())
        assert int(expected) <= got <= int(expected) + 1


def test_short_sequences_are_not_biased_by_rounding():
    """10 candidates x 15% = 1.5 tokens: 1 or 2 per sequence, 1.5 on average (round() gives 2)."""
    ids = np.arange(10, 22)
    special = np.zeros(12, dtype=bool)
    special[[0, 11]] = True
    counts = [
        int(
            (
                mask_tokens(
                    ids,
                    special,
                    VOCAB,
                    MASK,
                    np.random.default_rng(i),
                    0.15,
                    0.8,
                    0.1,
                    special_ids=SPECIAL_IDS,
                )[1]
                != IGNORE_INDEX
            ).sum()
        )
        for i in range(2000)
    ]
    assert set(counts) == {1, 2}
    assert abs(np.mean(counts) - 1.5) < 0.05


def test_ablation_all_mask():
    ids, special = _sequences(200, seed=2)
    masked, labels = _mask_rows(ids, special, shares=(0.15, 1.0, 0.0), seed=2)
    chosen = labels != IGNORE_INDEX
    assert chosen.sum() > 1000
    assert (masked[chosen] == MASK).all()
    assert np.array_equal(masked[~chosen], ids[~chosen])


def test_ablation_no_replacement_keeps_every_token():
    ids, special = _sequences(100, seed=3)
    masked, labels = _mask_rows(ids, special, shares=(0.15, 0.0, 0.0), seed=3)
    assert np.array_equal(masked, ids)
    assert (labels != IGNORE_INDEX).sum() > 500


def test_deterministic_per_generator_seed():
    ids, special = _sequences(4, seed=4)

    def run(seed):
        g = np.random.default_rng(seed)
        return mask_tokens(ids, special, VOCAB, MASK, g, 0.15, 0.8, 0.1, special_ids=SPECIAL_IDS)

    first, again, other = run(7), run(7), run(8)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not np.array_equal(first[1], other[1])
    assert first[0].shape == ids.shape and first[0].dtype == ids.dtype


def test_bad_arguments_are_refused():
    ids, special = _sequences(1)
    g = np.random.default_rng(0)
    with pytest.raises(ValueError, match="sum to <= 1"):
        mask_tokens(ids, special, VOCAB, MASK, g, 0.15, 0.8, 0.3, special_ids=SPECIAL_IDS)
    with pytest.raises(ValueError, match="mlm_probability"):
        mask_tokens(ids, special, VOCAB, MASK, g, 0.0, 0.8, 0.1, special_ids=SPECIAL_IDS)
    with pytest.raises(ValueError, match="shape"):
        mask_tokens(ids, special[:, :10], VOCAB, MASK, g, 0.15, 0.8, 0.1, special_ids=SPECIAL_IDS)
