"""Builders of the text datasets: verified source files in, dataset files out, records per
file returned. Wikipedia and Lee are copied; Shakespeare is cut into speeches; the Pang & Lee
polarity data and the tagged POS sentences are rewritten as JSONL, CSV and CoNLL."""

from __future__ import annotations

import bz2
import csv
import io
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from pipelines.demo_data.files import copy_file, squash, tar_text, tar_texts, write_csv, write_lines
from pipelines.demo_data.pins import P3_CORPORA, SHAKESPEARE_TEXTS, DataFetchError
from storage.hashing import sha256_bytes


def build_enwiki(inputs: list[Path], out: Path) -> dict[str, int]:
    copy_file(inputs[0], out / "enwiki-sample.xml.bz2")
    with bz2.open(inputs[0], "rb") as handle:
        pages = handle.read().count(b"<page>")
    return {"enwiki-sample.xml.bz2": pages}


def build_lee(inputs: list[Path], out: Path) -> dict[str, int]:
    copy_file(inputs[0], out / "lee_background.txt")
    lines = inputs[0].read_text(encoding="utf-8").splitlines()
    return {"lee_background.txt": sum(1 for line in lines if line.strip())}


def build_word_similarity(inputs: list[Path], out: Path) -> dict[str, int]:
    counts = {}
    for source in inputs:
        copy_file(source, out / source.name)
        lines = source.read_text(encoding="utf-8").splitlines()
        counts[source.name] = sum(1 for line in lines if line.strip() and line[0] not in "#:")
    return counts


def _is_speaker(line: str) -> bool:
    """'HAMLET.', 'Ham.', 'FIRST WITCH.', '1 Clown.', 'Cor. and Volt.': a speech's tag line."""
    words = line[:-1].split()
    return (
        line.endswith(".")
        and 1 <= len(words) <= 4
        and all(w[0].isupper() or w[0].isdigit() or w in ("and", "&", "&c", "&c.") for w in words)
    )


_BRACKETED = re.compile(r"\[[^\[\]]*\]")  # innermost first: [Enter two [BRITISH] CAPTAINS]
_BROKEN_BRACKET = re.compile(r"\[[^\]]*$|^[^\[]*\]")  # a direction split by a blank line
_HEADING = re.compile(r"^(act|scene)\s+[ivxl\d]+\b|^by william shakespeare$", re.IGNORECASE)


def _without_stage_directions(text: str) -> str:
    while (shorter := _BRACKETED.sub(" ", text)) != text:
        text = shorter
    return _BROKEN_BRACKET.sub(" ", text)


def _speeches(text: str) -> Iterable[str]:
    """One speech (or poem stanza/sonnet) per item: tags, headings, stage directions dropped."""
    for block in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n")):
        lines = [line.strip() for line in block.splitlines() if line.strip()]
        if len(lines) > 1 and _is_speaker(lines[0]):
            lines = lines[1:]
        speech = squash(_without_stage_directions(" ".join(lines)))
        if speech and not _HEADING.match(speech) and any(c.islower() for c in speech):
            yield speech


def build_shakespeare(inputs: list[Path], out: Path) -> dict[str, int]:
    texts = tar_texts(
        inputs[0], lambda name: name.startswith(SHAKESPEARE_TEXTS) and name.endswith("_gut.txt")
    )
    if not texts:
        raise DataFetchError(f"{inputs[0].name}: no {SHAKESPEARE_TEXTS}*_gut.txt texts inside")
    speeches = (s for member in sorted(texts) for s in _speeches(texts[member]))
    return {"shakespeare.txt": write_lines(out / "shakespeare.txt", speeches)}


@dataclass(frozen=True, slots=True)
class Labelled:
    """A polarity text and its label: 1 = positive, 0 = negative (the file has 1 / -1)."""

    text: str
    label: int


def _polarity_rows(archive: Path, member: str) -> list[Labelled]:
    """The labelled texts of a Pang & Lee CSV file, in file order."""
    rows = []
    reader = csv.reader(io.StringIO(tar_text(archive, member), newline=""))
    for number, row in enumerate(reader, start=1):
        if len(row) != 2 or row[0] not in ("1", "-1"):
            raise DataFetchError(
                f'{archive.name}:{member} row {number}: expected "label","text" with label '
                f"1 or -1, got {row[:2]!r}"
            )
        rows.append(Labelled(row[1], 1 if row[0] == "1" else 0))
    return rows


def build_polarity_reviews(inputs: list[Path], out: Path) -> dict[str, int]:
    rows = _polarity_rows(inputs[0], P3_CORPORA + "polarity-en-pang&lee1.csv")
    records = (
        json.dumps(
            {"text": "\n".join(squash(s) for s in row.text.splitlines() if s.strip())},
            ensure_ascii=False,
        )
        for row in rows
    )
    return {"reviews.jsonl": write_lines(out / "reviews.jsonl", records)}


def build_polarity_sentences(inputs: list[Path], out: Path) -> dict[str, int]:
    rows = [
        Labelled(squash(row.text), row.label)
        for row in _polarity_rows(inputs[0], P3_CORPORA + "polarity-en-pang&lee2.csv")
    ]
    rows.sort(key=lambda row: sha256_bytes(row.text.encode("utf-8")))  # mixed labels in any prefix
    lines = ((row.text, row.label) for row in rows)
    return {"sentences.csv": write_csv(out / "sentences.csv", ("text", "label"), lines)}


@dataclass(frozen=True, slots=True)
class Tagged:
    """A token and its part-of-speech tag."""

    word: str
    tag: str


def _tagged_sentences(archive: Path, member: str) -> list[list[Tagged]]:
    """word/TAG tokens, one sentence per line; the 4 ambiguous 'A|B' tags in OANC become A."""
    sentences = []
    for number, line in enumerate(tar_text(archive, member).splitlines(), start=1):
        tokens = []
        for token in line.split():
            word, _, tag = token.rpartition("/")
            if not word or not tag:
                raise DataFetchError(
                    f"{archive.name}:{member} line {number}: token {token!r} is not word/TAG"
                )
            tokens.append(Tagged(word, tag.split("|")[0]))
        if tokens:
            sentences.append(tokens)
    return sentences


def _conll_lines(sentences: list[list[Tagged]]) -> Iterable[str]:
    for sentence in sentences:
        yield from (f"{token.word}\t{token.tag}" for token in sentence)
        yield ""


# OANC's tagger gives `"` to both quotes where the WSJ gold file has `` and ''; pos-oanc's
# copy of the WSJ test file uses OANC's convention, so no test tag is unknown to training.
OANC_QUOTE_TAGS = {"``": '"', "''": '"'}


def pos_builder(
    member: str, stem: str, with_text: bool, test_member: str | None = None
) -> Callable[[list[Path], Path], dict]:
    """CoNLL (+ the plain tokens as corpus text); `test_member` adds a gold test file."""

    def build(inputs: list[Path], out: Path) -> dict[str, int]:
        sentences = _tagged_sentences(inputs[0], P3_CORPORA + member)
        write_lines(out / f"{stem}.conll", _conll_lines(sentences))
        counts = {f"{stem}.conll": len(sentences)}
        if with_text:
            text = (" ".join(token.word for token in sentence) for sentence in sentences)
            counts[f"{stem}.txt"] = write_lines(out / f"{stem}.txt", text)
        if test_member:  # quotes tagged as the silver train file tags them: `"`
            gold = [
                [Tagged(t.word, OANC_QUOTE_TAGS.get(t.tag, t.tag)) for t in sentence]
                for sentence in _tagged_sentences(inputs[0], P3_CORPORA + test_member)
            ]
            write_lines(out / "test.conll", _conll_lines(gold))
            counts["test.conll"] = len(gold)
        return counts

    return build
