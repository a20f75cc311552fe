"""Carving a task's train/dev/test splits and capping them, by hash and stratified by label.

It sees each example only as its hash keys and its label set, so every choice is a function of
the examples' content, never of their order in a file:
- `carve`: the split of an example is fixed by the hash of its inputs (stable when the file
  grows; duplicates never straddle train and test). Then, for each label the hash put only in
  dev/test that has two or more examples, its lowest-hash carrier (with its duplicates) moves
  to train: a label seen in dev/test is in train wherever the data allow.
- `cap`: the first `limit` examples in hash order; with `cover`, first the lowest-hash carrier
  of each label, rarest label first, so a `max_examples` cap loses no label it can keep.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

Key = tuple[str, Any]  # (hash of the inputs, what orders examples with equal inputs): hash order


def unit(key: str) -> float:
    """A hex hash as a number in [0, 1)."""
    return int(key[:16], 16) / float(1 << 64)


def _carriers(labels: Sequence[frozenset[str]], order: Sequence[int]) -> dict[str, list[int]]:
    """label -> the indices of the examples that carry it, in `order`."""
    carriers: dict[str, list[int]] = defaultdict(list)
    for i in order:
        for label in sorted(labels[i]):
            carriers[label].append(i)
    return carriers


def carve(
    keys: Sequence[Key],
    labels: Sequence[frozenset[str]],
    fractions: dict[str, float],
    given: Counter[str],
) -> list[str]:
    """The split of each example: "test" / "dev" by the hash for the splits in `fractions`,
    else "train"; then stratified. `given` counts the examples per label of the dev/test
    files given as such (a label with one carved example and one given still has two)."""
    test_cut = fractions.get("test", 0.0)
    dev_cut = test_cut + fractions.get("dev", 0.0)
    units = [unit(inputs) for inputs, _ in keys]
    where = ["test" if u < test_cut else "dev" if u < dev_cut else "train" for u in units]
    order = sorted(range(len(keys)), key=keys.__getitem__)
    carriers = _carriers(labels, order)
    seen = {label for label, held in carriers.items() if any(where[i] == "train" for i in held)}
    sizes = Counter(where)
    for label in sorted(carriers):  # sorted: the moves do not depend on the file's order
        if label in seen or len(carriers[label]) + given[label] < 2:
            continue
        first = carriers[label][0]
        group = [i for i, key in enumerate(keys) if key[0] == keys[first][0]]  # duplicates
        if sizes[where[first]] <= len(group):
            continue  # never empty dev or test to fill train
        sizes[where[first]] -= len(group)
        for i in group:
            where[i] = "train"
            seen.update(labels[i])
    return where


def cap(
    keys: Sequence[Key], labels: Sequence[frozenset[str]], limit: int | None, cover: bool
) -> list[int]:
    """The indices kept (in file order): `limit` of them in hash order, with `cover` first one
    carrier of each label, rarest label first."""
    if limit is None or len(keys) <= limit:
        return list(range(len(keys)))
    order = sorted(range(len(keys)), key=keys.__getitem__)
    kept: set[int] = set()
    if cover:
        carriers = _carriers(labels, order)
        covered: set[str] = set()
        for label in sorted(carriers, key=lambda name: (len(carriers[name]), name)):
            if label not in covered and len(kept) < limit:
                kept.add(carriers[label][0])
                covered.update(labels[carriers[label][0]])
    for i in order:
        if len(kept) >= limit:
            break
        kept.add(i)
    return sorted(kept)
