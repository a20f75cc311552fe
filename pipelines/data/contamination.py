"""Contamination audit: how much of a task's test split the pretraining corpus already holds.

An example *overlaps* when one of its texts shares an n-gram with a corpus document, and is
*verbatim* when one of its texts occurs whole in one (a text shorter than n can only be
verbatim). Spaced text is compared as word n-grams (`ngram_words`, 13 by default as in GPT-3's
audit) over lower-cased NFKC word tokens, punctuation dropped. CJK text has no spaces to count
words by, so it is compared as a span of `ngram_chars` characters (default 50) of its word
characters: longer than the ~20-30 characters 13 English words carry in Chinese, so a shared
span is a copied passage rather than an idiom or a stock phrase.

Bounded memory: the n-grams of the TEST examples (small) go into dicts; the corpus is streamed
once in Parquet batches and each document is checked against them and dropped.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.parquet as pq

from pipelines.data.sentences import CJK_RE

if TYPE_CHECKING:
    from pipelines.data.task_data import Example, TaskData

BATCH_ROWS = 1024
_WORD = re.compile(r"\w+")
_NOT_WORD = re.compile(r"\W+")


@dataclass(frozen=True)
class AuditSettings:
    ngram_words: int = 13
    ngram_chars: int = 50


@dataclass(frozen=True)
class AuditResult:
    """Per task: how many test examples overlap / occur verbatim, and which (by test index)."""

    examples: int
    short_examples: int  # every text shorter than n: judged verbatim only
    overlapping: tuple[int, ...]
    verbatim: tuple[int, ...]
    documents: int  # corpus documents scanned

    @property
    def ngram_share(self) -> float:
        return len(self.overlapping) / self.examples if self.examples else 0.0

    @property
    def verbatim_share(self) -> float:
        return len(self.verbatim) / self.examples if self.examples else 0.0


def is_cjk(text: str) -> bool:
    """Mostly CJK characters (of its word characters): compared by character spans."""
    chars = _NOT_WORD.sub("", text)
    return bool(chars) and len(CJK_RE.findall(chars)) * 2 > len(chars)


def words_of(text: str) -> tuple[str, ...]:
    return tuple(_WORD.findall(unicodedata.normalize("NFKC", text).lower()))


def chars_of(text: str) -> str:
    return _NOT_WORD.sub("", unicodedata.normalize("NFKC", text).lower())


def example_texts(kind: str, example: Example) -> list[str]:
    """What a model reads of an example: the words of a tag example, else its text(s)."""
    if kind == "tag":
        return [" ".join(example.words)]
    return [t for t in (example.text_a, example.text_b) if t.strip()]


@dataclass
class _Index:
    """The test side, one per unit (words or characters): n-grams of long texts and whole
    short texts by length, each mapped to the examples that own them."""

    n: int
    grams: dict[object, set[int]] = field(default_factory=dict)
    short: dict[int, dict[object, set[int]]] = field(default_factory=dict)
    whole: dict[int, list[object]] = field(default_factory=dict)  # example -> its long texts

    def add(self, example: int, unit: tuple[str, ...] | str) -> None:
        if len(unit) < self.n:
            self.short.setdefault(len(unit), {}).setdefault(unit, set()).add(example)
            return
        self.whole.setdefault(example, []).append(unit)
        for gram in windows(unit, self.n):
            self.grams.setdefault(gram, set()).add(example)

    def __bool__(self) -> bool:
        return bool(self.grams or self.short)


def windows(unit: tuple[str, ...] | str, k: int) -> Iterator[object]:
    """Every contiguous span of `k` words (a tuple) or characters (a string)."""
    return (unit[i : i + k] for i in range(len(unit) - k + 1))


def _contains(doc: tuple[str, ...] | str, text: tuple[str, ...] | str) -> bool:
    if isinstance(doc, str):
        return text in doc
    return f" {' '.join(text)} " in f" {' '.join(doc)} "


def _check(index: _Index, doc: tuple[str, ...] | str, hits: set[int], verbatim: set[int]) -> None:
    """Mark the examples `doc` overlaps (n-gram) and holds verbatim."""
    if len(doc) >= index.n and index.grams:
        shared = index.grams.keys() & set(windows(doc, index.n))
        here: set[int] = set().union(*(index.grams[g] for g in shared))
        hits.update(here)
        verbatim.update(e for e in here - verbatim
                        if any(_contains(doc, t) for t in index.whole[e]))
    for k, texts in index.short.items():
        if len(doc) >= k:
            for text in texts.keys() & set(windows(doc, k)):
                verbatim.update(texts[text])
                hits.update(texts[text])


def corpus_texts(files: Iterable[Path]) -> Iterator[str]:
    """The `text` column of every corpus shard, batch by batch."""
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(BATCH_ROWS, columns=["text"]):
            yield from (t for t in batch.column(0).to_pylist() if t)


def audit(task: TaskData, corpus: Iterable[str], settings: AuditSettings) -> AuditResult:
    """One pass over `corpus` (document texts) against the test split of `task`."""
    words, chars = _Index(settings.ngram_words), _Index(settings.ngram_chars)
    short = 0
    for i, example in enumerate(task.test):
        texts = example_texts(task.kind, example)
        units = [u for t in texts if (u := chars_of(t) if is_cjk(t) else words_of(t))]
        short += bool(units) and all(
            len(u) < (chars.n if isinstance(u, str) else words.n) for u in units)  # fmt: skip
        for unit in units:
            (chars if isinstance(unit, str) else words).add(i, unit)
    hits: set[int] = set()
    verbatim: set[int] = set()
    documents = 0
    for text in corpus:
        documents += 1
        if words:
            _check(words, words_of(text), hits, verbatim)
        if chars and CJK_RE.search(text):
            _check(chars, chars_of(text), hits, verbatim)
    return AuditResult(len(task.test), short, tuple(sorted(hits)), tuple(sorted(verbatim)),
                       documents)  # fmt: skip
