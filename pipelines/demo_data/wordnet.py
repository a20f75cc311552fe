"""WordNet builders: glosses as corpus text, and word-in-context (WiC) pairs sampled from the
synsets' example sentences. The WiC test lemmas' synsets are left out of the glosses, so no
test sentence is seen in pretraining."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.demo_data.files import hash_int, squash, tar_texts, write_lines
from pipelines.demo_data.pins import WORDNET_DATA, WORDNET_DICT, DataFetchError
from storage.atomic import write_bytes


@dataclass(frozen=True)
class _Gloss:
    definition: str
    examples: list[str]


def _gloss_parts(gloss: str) -> _Gloss:
    """'definition; "example one"; "example two"' -> the definition and the examples."""
    parts = re.split(r';\s*(?=")', gloss)
    definition = parts[0].strip().rstrip(";").strip()
    examples = []
    for part in parts[1:]:
        example = part.strip()[1:].split('"')[0].strip()  # an unclosed quote runs to the end
        if example:
            examples.append(example)
    return _Gloss(definition, examples)


@dataclass(frozen=True)
class _Synset:
    """One line of a WordNet data.* file: id, part of speech, member lemmas, gloss texts."""

    id: str
    pos: str  # n v a r (satellite adjectives 's' count as 'a')
    lemmas: frozenset[str]  # lowercased, '_' for multiword lemmas, '(a)' markers stripped
    definition: str
    examples: tuple[str, ...]


def _wordnet_texts(archive: Path) -> dict[str, str]:
    names = {WORDNET_DICT + name for name in (*WORDNET_DATA, "LICENSE.txt")}
    texts = tar_texts(archive, names.__contains__)
    if len(texts) != len(names):
        raise DataFetchError(f"{archive.name}: missing {sorted(names - texts.keys())}")
    return texts


def _synsets(texts: dict[str, str]) -> list[_Synset]:
    """Every synset in file order: `offset lex_filenum ss_type w_cnt (word lex_id)* ... | gloss`."""
    synsets = []
    for name in WORDNET_DATA:
        for line in texts[WORDNET_DICT + name].splitlines():
            if line.startswith("  ") or " | " not in line:
                continue  # the license header, then one synset per line
            head, gloss = line.split(" | ", 1)
            fields = head.split()
            count = int(fields[3], 16)
            lemmas = (re.sub(r"\(\w+\)$", "", fields[4 + 2 * i]).lower() for i in range(count))
            parts = _gloss_parts(gloss)
            synsets.append(
                _Synset(
                    id=f"{fields[0]}-{fields[2]}",
                    pos="a" if fields[2] == "s" else fields[2],
                    lemmas=frozenset(lemmas),
                    definition=squash(parts.definition),
                    examples=tuple(squash(e) for e in parts.examples),
                )
            )
    return synsets


# WordNet word-in-context: lemmas are split 70/10/20 by hash, so train/dev/test never share one.
WIC_PAIRS_PER_CLASS_PER_LEMMA = 10  # no lemma with many examples dominates the set
WIC_CAPS = {"train": 4000, "dev": 800, "test": 1600}  # pairs per split (whole lemmas kept)
_WORD = re.compile(r"\w+(?:-\w+)*")  # "dog's" -> dog, s; "well-known" stays one word


def _wic_split(lemma: str) -> str:
    bucket = hash_int(f"wic-split:{lemma}") % 10
    return "test" if bucket < 2 else "dev" if bucket == 2 else "train"


@dataclass(frozen=True, order=True)
class _Occurrence:
    """A lemma in an example sentence of a synset; ordered by synset, example, then span."""

    synset: str
    example: str
    start: int  # character span of the lemma in the example
    end: int


@dataclass(frozen=True)
class _Pair:
    first: _Occurrence
    second: _Occurrence


@dataclass(frozen=True)
class _LemmaPairs:
    lemma: str
    rows: list[dict[str, Any]]  # the WiC records of the lemma, balanced


def _wic_occurrences(synsets: list[_Synset]) -> dict[tuple[str, str], list[_Occurrence]]:
    """(lemma, pos) -> the occurrences of the lemma in examples of its synsets."""
    found: dict[tuple[str, str], list[_Occurrence]] = {}
    for synset in synsets:
        for example in synset.examples:
            spans: dict[str, tuple[int, int]] = {}
            for match in _WORD.finditer(example):
                spans.setdefault(match.group().lower(), match.span())
            for lemma in sorted(synset.lemmas & spans.keys()):
                if lemma.isalpha():
                    start, end = spans[lemma]
                    found.setdefault((lemma, synset.pos), []).append(
                        _Occurrence(synset.id, example, start, end)
                    )
    return found


def _wic_lemma_pairs(lemma: str, pos: str, occurrences: list[_Occurrence]) -> list[dict[str, Any]]:
    """Balanced same-sense (1) / different-sense (0) pairs of one lemma, chosen by hash."""
    unique = sorted(set(occurrences))
    pairs: dict[int, list[_Pair]] = {0: [], 1: []}
    for i, first in enumerate(unique):
        for second in unique[i + 1 :]:
            if first.example != second.example:
                pairs[int(first.synset == second.synset)].append(_Pair(first, second))
    keep = min(len(pairs[0]), len(pairs[1]), WIC_PAIRS_PER_CLASS_PER_LEMMA)
    rows = []
    for label, candidates in pairs.items():
        candidates.sort(
            key=lambda pair: hash_int(f"wic:{pos}:{pair.first.example}|{pair.second.example}")
        )
        for pair in candidates[:keep]:
            first, second = pair.first, pair.second
            if hash_int(f"wic-swap:{first.example}|{second.example}") % 2:
                first, second = second, first
            rows.append(
                {
                    "text": first.example,
                    "text_b": second.example,
                    "start1": first.start,
                    "end1": first.end,
                    "start2": second.start,
                    "end2": second.end,
                    "label": label,
                    "word": lemma,
                }
            )
    return rows


def _wic_groups(synsets: list[_Synset]) -> dict[str, list[_LemmaPairs]]:
    """split -> every lemma with pairs of both classes, and its balanced pairs."""
    groups: dict[str, list[_LemmaPairs]] = {"train": [], "dev": [], "test": []}
    for (lemma, pos), occurrences in sorted(_wic_occurrences(synsets).items()):
        rows = _wic_lemma_pairs(lemma, pos, occurrences)
        if rows:
            groups[_wic_split(lemma)].append(_LemmaPairs(lemma, rows))
    return groups


def _wic_test_lemmas(synsets: list[_Synset]) -> set[str]:
    return {group.lemma for group in _wic_groups(synsets)["test"]}


def build_wic(inputs: list[Path], out: Path) -> dict[str, int]:
    texts = _wordnet_texts(inputs[0])
    write_bytes(out / "LICENSE-wordnet.txt", texts[WORDNET_DICT + "LICENSE.txt"].encode("utf-8"))
    counts = {}
    for split, groups in _wic_groups(_synsets(texts)).items():
        rows: list[dict] = []
        for group in sorted(groups, key=lambda g: hash_int(f"wic-order:{g.lemma}")):
            if len(rows) + len(group.rows) <= WIC_CAPS[split]:
                rows.extend(group.rows)
        rows.sort(key=lambda row: hash_int(f"wic-row:{row['text']}|{row['text_b']}"))
        records = (json.dumps(row, ensure_ascii=False) for row in rows)
        counts[f"{split}.jsonl"] = write_lines(out / f"{split}.jsonl", records)
    return counts


def build_glosses(inputs: list[Path], out: Path) -> dict[str, int]:
    """Definitions and examples, minus every synset of a WiC test lemma (out of pretraining)."""
    texts = _wordnet_texts(inputs[0])
    synsets = _synsets(texts)
    held_out = _wic_test_lemmas(synsets)
    test_examples = {e for s in synsets if s.lemmas & held_out for e in s.examples}

    def lines() -> Iterable[str]:
        for synset in synsets:
            if synset.lemmas & held_out:
                continue
            texts = (synset.definition, *synset.examples)
            yield from (t for t in texts if t and t not in test_examples)

    counts = {"glosses.txt": write_lines(out / "glosses.txt", lines())}
    write_bytes(out / "LICENSE-wordnet.txt", texts[WORDNET_DICT + "LICENSE.txt"].encode("utf-8"))
    return counts
