"""BERT's masked-language-model corruption (Devlin et al. 2019, section 3.1 and appendix C.2).

Of the tokens that are not special ([CLS], [SEP], [PAD]) a share `mlm_probability` (15%) is
chosen for prediction. Each chosen token is then replaced by [MASK] with probability
`mask_replace_prob` (80%), by a random token with probability `random_replace_prob` (10%), or
left unchanged (the remaining 10%). Why not always [MASK]: the fine-tuning input never contains
[MASK], so the model must also build good representations of tokens it sees as themselves.
All three shares come from `BERTSpec`, so the masking ablation (e.g. 100/0/0) is one knob.

The number chosen is `mlm_probability * n` with stochastic rounding (floor, plus one with
probability equal to the fraction): exact to one token per sequence, and unbiased on average
even for short sequences, unlike a plain `round`.

Determinism: every draw comes from the `generator` the caller passes. The BERT objective seeds
one per example from (seed, step, example index), so a batch is the same whether one process
or several DDP ranks build it. NumPy, not torch: this runs once per example on the CPU, where
NumPy's per-call overhead is several times smaller on sequence-sized arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

IGNORE_INDEX = -100  # CrossEntropyLoss's ignore_index: positions that carry no MLM label


def mask_tokens(
    input_ids: np.ndarray,
    special_mask: np.ndarray,
    vocab_size: int,
    mask_id: int,
    generator: np.random.Generator,
    mlm_probability: float,
    mask_replace_prob: float,
    random_replace_prob: float,
    *,
    special_ids: Sequence[int],
) -> tuple[np.ndarray, np.ndarray]:
    """Corrupt `input_ids` for MLM; return (masked_ids, labels), both shaped like `input_ids`.

    `special_mask` (bool, same shape) marks positions never chosen: [CLS], [SEP], [PAD].
    `special_ids` are never drawn as random replacements (the "non-special vocabulary").
    `labels` holds the original id at the chosen positions and IGNORE_INDEX (-100) elsewhere.
    """
    _check_shares(mlm_probability, mask_replace_prob, random_replace_prob)
    if special_mask.shape != input_ids.shape:
        raise ValueError(
            f"special_mask has shape {special_mask.shape}, input_ids {input_ids.shape}: "
            "they must match"
        )
    candidates = np.flatnonzero(~special_mask.astype(bool, copy=False))
    chosen = candidates[_choose(len(candidates), mlm_probability, generator)]

    masked = input_ids.reshape(-1).copy()
    labels = np.full_like(masked, IGNORE_INDEX)
    labels[chosen] = masked[chosen]

    # One uniform draw per chosen token splits it into [MASK] / random / unchanged.
    action = generator.random(len(chosen))
    masked[chosen[action < mask_replace_prob]] = mask_id
    replace = (action >= mask_replace_prob) & (action < mask_replace_prob + random_replace_prob)
    allowed = _non_special_ids(vocab_size, tuple(special_ids))
    masked[chosen[replace]] = allowed[generator.integers(len(allowed), size=int(replace.sum()))]
    return masked.reshape(input_ids.shape), labels.reshape(input_ids.shape)


def _choose(n: int, share: float, generator: np.random.Generator) -> np.ndarray:
    """Indices of `share * n` of range(n) (stochastically rounded), drawn without replacement."""
    expected = share * n
    k = int(expected)
    if generator.random() < expected - k:
        k += 1
    return generator.permutation(n)[:k]


@lru_cache(maxsize=16)
def _non_special_ids(vocab_size: int, special_ids: tuple[int, ...]) -> np.ndarray:
    """The ids a random replacement is drawn from: the vocabulary without its special tokens."""
    keep = np.ones(vocab_size, dtype=bool)
    keep[[i for i in special_ids if 0 <= i < vocab_size]] = False
    if not keep.any():
        raise ValueError(f"a vocabulary of {vocab_size} ids has no non-special token to draw")
    allowed = np.flatnonzero(keep)
    allowed.flags.writeable = False  # shared by every call through the cache
    return allowed


def _check_shares(mlm_probability: float, mask_replace: float, random_replace: float) -> None:
    if not 0 < mlm_probability < 1:
        raise ValueError(f"mlm_probability must be in (0, 1), got {mlm_probability}")
    if mask_replace < 0 or random_replace < 0 or mask_replace + random_replace > 1:
        raise ValueError(
            f"mask_replace_prob ({mask_replace}) and random_replace_prob ({random_replace}) must "
            "be >= 0 and sum to <= 1 (the rest of the chosen tokens stay unchanged)"
        )
