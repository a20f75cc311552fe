"""Task loading on real slices of the demo data and on files the tests write: broken ones, and
long-tail labels (stratified splits, a cap that keeps labels, a tag seen once in test carried
through transfer)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import demo_data
from pipelines.data.task_data import (
    Example,
    TaskDataError,
    _input_key,
    load_task,
    take_budget,
)
from pipelines.data.task_splits import unit as _unit
from pipelines.data.tokenizer_training import load_raw_tokenizer, save_tokenizer, train_tokenizer
from pipelines.training.pretraining import PretrainJob, pretrain
from pipelines.transfer.baselines import most_frequent_tag
from pipelines.transfer.metrics import score_split
from pipelines.transfer.runs import TransferConfig, _splits, run_transfer
from pretrainlab.config import TaskSpec, spec_from_dict
from tests.pipelines.tiny_lm import SCHEMA, lee_documents

DEMO = ["polarity-sentences", "bible-paraphrase", "pos-oanc", "wic-wordnet"]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    demo_data.fetch(DEMO)
    return demo_data.default_data_dir()


def _spec(**fields) -> TaskSpec:
    return TaskSpec(**{"name": "t", "kind": "classify", **fields})


def _csv(path: Path, rows: list[str], header: str = "text,label") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def _polarity_rows(n: int) -> list[str]:
    return [f"sentence number {i} is {'good' if i % 2 else 'bad'},{i % 2}" for i in range(n)]


# --- the demo tasks --------------------------------------------------------------------------


def test_polarity_classify_from_dataset(data_dir: Path) -> None:
    task = load_task(_spec(dataset="polarity-sentences"), data_dir)
    assert (task.kind, task.labels) == ("classify", ("0", "1"))
    assert (len(task.train), len(task.dev), len(task.test)) == (2823, 389, 788)
    assert all(e.text_a and not e.text_b and e.label in "01" for e in task.train)
    assert load_task(_spec(dataset="polarity-sentences"), data_dir) == task  # deterministic


def test_paraphrase_uses_the_datasets_column_names(data_dir: Path) -> None:
    task = load_task(_spec(kind="pair", dataset="bible-paraphrase", max_examples=300), data_dir)
    assert (len(task.train), len(task.dev), len(task.test)) == (300, 300, 300)
    assert all(e.text_a and e.text_b for e in task.train + task.test)
    assert set(Counter(e.label for e in task.train)) == {"0", "1"}
    with pytest.raises(TaskDataError, match=r"bible-paraphrase.*pair task, not classify"):
        load_task(_spec(dataset="bible-paraphrase"), data_dir)


def test_pos_trains_on_oanc_and_tests_on_wsj(data_dir: Path) -> None:
    task = load_task(_spec(kind="tag", dataset="pos-oanc", max_examples=500), data_dir)
    assert (len(task.train), len(task.dev), len(task.test)) == (500, 500, 500)
    [wsj_file] = demo_data.dataset_files("pos-wsj", data_dir, role="task")
    wsj_task = _spec(kind="tag", train=str(wsj_file), dev=str(wsj_file), test=str(wsj_file))
    wsj = {e.words for e in load_task(wsj_task).train}
    assert len(wsj) > 990
    assert all(e.words in wsj for e in task.test)
    assert not any(e.words in wsj for e in task.train)
    assert {"NN", "VBZ", "DT", '"'} <= set(task.labels) and "''" not in task.labels
    assert all(len(e.words) == len(e.tags) > 0 for e in task.train)


def test_wic_from_dataset(data_dir: Path) -> None:
    task = load_task(_spec(kind="wic", dataset="wic-wordnet"), data_dir)
    assert (len(task.train), len(task.dev), len(task.test)) == (4000, 800, 1600)
    assert task.labels == ("0", "1")
    for e in task.test[:200]:
        a, b = e.text_a[slice(*e.span_a)], e.text_b[slice(*e.span_b)]
        assert a.lower() == b.lower() and a.isalpha()


# --- loaders on files the test writes --------------------------------------------------------


def test_tsv_jsonl_and_superglue_wic(tmp_path: Path) -> None:
    tsv = tmp_path / "t.tsv"
    tsv.write_text("sent\ty\n" + "\n".join(f"a, b {i}\t{i % 2}" for i in range(40)) + "\n")
    task = load_task(_spec(train=str(tsv), text_field="sent", label_field="y"))
    assert task.train[0].text_a.startswith("a, b")
    rows = [
        {
            "sentence1": "the bank of the river",
            "sentence2": "a bank loan",
            "start1": 4,
            "end1": 8,
            "start2": 2,
            "end2": 6,
            "label": i % 2 == 0,
            "word": "bank",
            "n": i,
        }
        for i in range(40)
    ]
    wic = tmp_path / "wic.jsonl"
    wic.write_text(
        "\n".join(json.dumps({**r, "sentence2": f"{r['sentence2']} {r['n']}"}) for r in rows) + "\n"
    )
    task = load_task(_spec(kind="wic", train=str(wic)))
    example = task.train[0]
    assert example.text_a[slice(*example.span_a)] == "bank"
    assert example.text_b[slice(*example.span_b)] == "bank" and task.labels == ("0", "1")


def test_conll_space_separated_and_four_columns(tmp_path: Path) -> None:
    lines = []
    for i in range(30):
        lines += ["-DOCSTART- -X- O O", "", f"Paris{i} NNP B-NP B-LOC", "is VBZ B-VP O", ""]
    path = tmp_path / "ner.conll"
    path.write_text("\n".join(lines))
    task = load_task(_spec(kind="tag", train=str(path)))
    assert task.labels == ("B-LOC", "O")
    assert all(e.tags == ("B-LOC", "O") for e in task.train)


def test_explicit_dev_and_test_files_are_used_as_given(tmp_path: Path) -> None:
    train = _csv(tmp_path / "train.csv", _polarity_rows(20))
    dev = _csv(tmp_path / "dev.csv", ["dev one,0", "dev two,1"])
    test = _csv(tmp_path / "test.csv", ["test one,1"])
    task = load_task(_spec(train=str(train), dev=str(dev), test=str(test)))
    assert len(task.train) == 20 and [e.text_a for e in task.dev] == ["dev one", "dev two"]
    assert [e.label for e in task.test] == ["1"]


# --- splits ----------------------------------------------------------------------------------


def test_hash_split_is_deterministic_and_stable_when_the_file_grows(tmp_path: Path) -> None:
    small = load_task(_spec(train=str(_csv(tmp_path / "a.csv", _polarity_rows(300)))))
    big = load_task(_spec(train=str(_csv(tmp_path / "b.csv", _polarity_rows(600)))))
    for split in ("train", "dev", "test"):
        assert set(getattr(small, split)) <= set(getattr(big, split)), split
    assert 0.05 < len(small.dev) / 300 < 0.16 and 0.13 < len(small.test) / 300 < 0.28
    again = load_task(_spec(train=str(tmp_path / "a.csv")))
    assert again == small and again.fingerprint == small.fingerprint != big.fingerprint


def test_max_examples_caps_each_split_in_hash_order(tmp_path: Path) -> None:
    path = _csv(tmp_path / "a.csv", _polarity_rows(600))
    capped = load_task(_spec(train=str(path), max_examples=30))
    full = load_task(_spec(train=str(path)))
    assert [len(s) for s in (capped.train, capped.dev, capped.test)] == [30, 30, 30]
    assert set(capped.train) <= set(full.train) and set(capped.test) <= set(full.test)


# --- errors: file and line named -------------------------------------------------------------


def test_missing_column_lists_the_columns(tmp_path: Path) -> None:
    path = _csv(tmp_path / "a.csv", ["hello,1"], header="sentence,label")
    with pytest.raises(
        TaskDataError, match=r"a\.csv:2: missing column 'text'.*\['label', 'sentence'\]"
    ):
        load_task(_spec(train=str(path)))


def test_malformed_json_line(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "fine", "label": 1}\n{"text": "broken", \n')
    with pytest.raises(TaskDataError, match=r"a\.jsonl:2: malformed JSON"):
        load_task(_spec(train=str(path)))


def test_conll_line_with_wrong_number_of_fields(tmp_path: Path) -> None:
    path = tmp_path / "a.conll"
    path.write_text("The\tDT\ncat\tNN\n\nA\tDT\ndog NN extra\n")
    with pytest.raises(TaskDataError, match=r"a\.conll:5: 3 field\(s\).*expected 2"):
        load_task(_spec(kind="tag", train=str(path)))
    path.write_text("The\tDT\ncat\n")
    with pytest.raises(TaskDataError, match=r"a\.conll:2: 1 field"):
        load_task(_spec(kind="tag", train=str(path)))


def test_wic_span_outside_the_sentence(tmp_path: Path) -> None:
    good = {
        "text": "a bank",
        "text_b": "the bank",
        "start1": 2,
        "end1": 6,
        "start2": 4,
        "end2": 8,
        "label": 1,
    }
    path = tmp_path / "w.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "end2": 9}) + "\n")
    with pytest.raises(TaskDataError, match=r"w\.jsonl:2: target span start2=4, end2=9 is outside"):
        load_task(_spec(kind="wic", train=str(path)))
    path.write_text(json.dumps({**good, "label": "maybe"}) + "\n")
    with pytest.raises(TaskDataError, match=r"w\.jsonl:1: .*true/false or 1/0"):
        load_task(_spec(kind="wic", train=str(path)))


def test_a_label_only_in_a_given_test_file_is_kept_and_counted(tmp_path: Path) -> None:
    train = _csv(tmp_path / "train.csv", _polarity_rows(20))
    test = _csv(tmp_path / "test.csv", ["fine,1", "weird,2", "odd,2"])
    task = load_task(_spec(train=str(train), test=str(test)))
    assert task.labels == ("0", "1") and task.unseen == ("2",)
    assert task.unseen_labels == {"dev": 0, "test": 2}
    assert [e.label for e in task.test] == ["1", "2", "2"]


def _outside_train(prefix: str, n: int, cut: float = 0.3) -> list[str]:
    """`n` texts whose input hash puts them in dev or test (u < dev + test fraction)."""
    texts = (f"{prefix} {i}" for i in range(1000))
    return [t for t in texts if _unit(_input_key(Example(text_a=t))) < cut][:n]


def test_a_one_example_label_stays_where_the_hash_puts_it(tmp_path: Path) -> None:
    [lone] = _outside_train("neutral", 1, cut=0.2)  # test_fraction 0.2: it lands in test
    task = load_task(_spec(train=str(_csv(tmp_path / "a.csv", [*_polarity_rows(40), f"{lone},2"]))))
    assert [e.text_a for e in task.test if e.label == "2"] == [lone]
    assert task.unseen == ("2",) and task.unseen_labels == {"dev": 0, "test": 1}
    assert "2" not in task.labels  # the head has no output for it: always scored wrong


def test_stratified_split_puts_a_two_example_label_in_train(tmp_path: Path) -> None:
    pair = _outside_train("neutral", 2)  # the plain hash split puts both in dev/test
    rows = [*_polarity_rows(60), *(f"{text},2" for text in pair)]
    task = load_task(_spec(train=str(_csv(tmp_path / "a.csv", rows))))
    first = min(pair, key=lambda t: _input_key(Example(text_a=t)))
    assert [e.text_a for e in task.train if e.label == "2"] == [first]
    assert task.labels == ("0", "1", "2") and task.unseen == ()
    assert task.unseen_labels == {"dev": 0, "test": 0}
    # Order-independent: the same examples in another order give the same splits.
    shuffled = load_task(_spec(train=str(_csv(tmp_path / "b.csv", rows[::-1]))))
    for split in ("train", "dev", "test"):
        assert set(getattr(shuffled, split)) == set(getattr(task, split)), split


def _conll(path: Path, sentences: list[tuple[list[str], list[str]]]) -> Path:
    blocks = ["\n".join(f"{w}\t{t}" for w, t in zip(*s, strict=True)) for s in sentences]
    path.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    return path


def test_max_examples_keeps_every_train_label(tmp_path: Path) -> None:
    sentences = [([f"w{i}", "runs"], ["NN", "VB"]) for i in range(300)]
    rare = [  # three sentences in train (u >= 0.3) and late in hash order (u > 0.9)
        ([w, "hops"], ["NN", "RARE"])
        for w in (f"r{i}" for i in range(2000))
        if _unit(_input_key(Example(words=(w, "hops")))) > 0.9
    ][:3]
    path = _conll(tmp_path / "a.conll", sentences + rare)
    full = load_task(_spec(kind="tag", train=str(path)))
    capped = load_task(_spec(kind="tag", train=str(path), max_examples=20))
    assert len(capped.train) == 20 and set(capped.train) <= set(full.train)
    assert capped.labels == full.labels == ("NN", "RARE", "VB")
    assert sum("RARE" in e.tags for e in capped.train) == 1
    in_hash_order = sorted(full.train, key=_input_key)[:20]  # what the cap kept before
    assert not any("RARE" in e.tags for e in in_hash_order)


def test_empty_file_and_unknown_format(tmp_path: Path) -> None:
    empty = tmp_path / "e.csv"
    empty.write_text("text,label\n")
    with pytest.raises(TaskDataError, match=r"e\.csv: the file holds no examples"):
        load_task(_spec(train=str(empty)))
    odd = tmp_path / "x.parquet"
    odd.write_text("x")
    with pytest.raises(TaskDataError, match=r"x\.parquet: a classify task needs a CSV/TSV"):
        load_task(_spec(train=str(odd)))


REVIEWS = [
    ("这部电影非常好看，演员的表演自然，我很喜欢", "正面"),
    ("剧情太无聊了，浪费时间", "负面"),
]


def test_gbk_task_csv_loads_with_encoding_and_names_gbk_without(tmp_path: Path) -> None:
    rows = [(f"{text}，第{i}条。", label) for i in range(30) for text, label in REVIEWS]
    path = tmp_path / "reviews.csv"
    path.write_bytes(
        ("text,label\n" + "".join(f"{text},{label}\n" for text, label in rows)).encode("gbk")
    )
    task = load_task(_spec(train=str(path), encoding="gbk"))
    assert task.labels == ("正面", "负面")
    loaded = task.train + task.dev + task.test
    assert sorted((e.text_a, e.label) for e in loaded) == sorted(rows)
    with pytest.raises(
        TaskDataError,
        match=r"reviews\.csv:2: not valid UTF-8; it looks like GB18030/GBK .*"
        r"set `encoding: gb18030` on this task",
    ):
        load_task(_spec(train=str(path)))


def test_big5_conll_is_detected_as_big5(tmp_path: Path) -> None:
    text = "繁體中文測試臺灣天氣我們今天公園散步一個例子很好"
    words = [text[i : i + 2] for i in range(0, len(text), 2)]
    lines = [f"{w}\tN\n{words[(i + 3) % len(words)]}\tV\n\n" for i, w in enumerate(words * 3)]
    path = tmp_path / "pos.conll"
    path.write_bytes("".join(lines).encode("big5"))
    with pytest.raises(TaskDataError, match=r"pos\.conll:1: .*Big5.*`encoding: big5` on this task"):
        load_task(_spec(kind="tag", train=str(path)))
    task = load_task(_spec(kind="tag", train=str(path), encoding="big5"))
    assert {w for e in task.train + task.dev + task.test for w in e.words} == set(words)


def test_unknown_encoding_is_a_spec_error() -> None:
    with pytest.raises(ValueError, match="unknown text encoding 'gbkk'"):
        _spec(train="x.csv", encoding="gbkk")


def test_unknown_kind_is_refused() -> None:
    spec = _spec(train="x.csv").model_copy(update={"kind": "regress"})
    with pytest.raises(TaskDataError, match="unknown kind 'regress'"):
        load_task(spec)


# --- budgets ---------------------------------------------------------------------------------


def _examples(n_pos: int, n_neg: int) -> list[Example]:
    return [Example(text_a=f"p{i}", label="1") for i in range(n_pos)] + [
        Example(text_a=f"n{i}", label="0") for i in range(n_neg)
    ]


def test_budget_is_stratified_and_deterministic_per_seed() -> None:
    examples = _examples(300, 100)
    picked = take_budget(examples, 40, seed=0)
    assert Counter(e.label for e in picked) == {"1": 30, "0": 10}
    assert take_budget(examples, 40, seed=0) == picked
    assert set(take_budget(examples, 40, seed=1)) != set(picked)
    assert take_budget(examples, "all", seed=3) == tuple(examples)
    rare = _examples(99, 1)
    assert Counter(e.label for e in take_budget(rare, 5, seed=0)) == {"1": 4, "0": 1}


def test_budget_for_tags_and_too_large_budgets() -> None:
    sentences = [Example(words=(f"w{i}",), tags=("NN",)) for i in range(50)]
    picked = take_budget(sentences, 7, seed=2)
    assert len(set(picked)) == 7 and picked == take_budget(sentences, 7, seed=2)
    with pytest.raises(
        TaskDataError, match="budget 51 is larger than the train set: the max is 50"
    ):
        take_budget(sentences, 51, seed=0)
    with pytest.raises(TaskDataError, match="positive integer"):
        take_budget(sentences, 0, seed=0)


# --- a long-tail tag through transfer ----------------------------------------------------------


@pytest.fixture(scope="module")
def word2vec_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A word2vec model really pretrained (one epoch) on a little news text."""
    root = tmp_path_factory.mktemp("w2v")
    spec = spec_from_dict(
        {
            "experiment": "long-tail",
            "store": str(root / "store"),
            "corpus": {"sources": [{"dataset": "lee-news", "limit": 60}]},
            "tokenizers": {"word": {"vocab_size": 2000, "min_count": 1}},
            "pretrain": {"word2vec": {"vector_size": 8, "epochs": 1, "workers": 1}},
        }
    )
    docs = lee_documents(60)
    save_tokenizer(train_tokenizer(spec.tokenizers.word, docs), root / "tokenizer")
    raw, _ = load_raw_tokenizer(root / "tokenizer")
    rows = [
        {
            "doc_id": f"d{d}",
            "sent_idx": i,
            "split": "valid" if d % 10 == 9 else "train",
            "ids": e.ids,
        }
        for d, text in enumerate(docs)
        for i, e in enumerate(raw.encode_batch(_lee_sentences(text), add_special_tokens=False))
    ]
    (root / "tokens").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, SCHEMA), root / "tokens" / "part-00000.parquet")
    job = PretrainJob(
        "word2vec", root / "tokens", root / "tokenizer", root / "work", root / "model"
    )
    pretrain(spec, job, lambda metrics, step: None)
    return root / "model"


def _lee_sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text) if s]


def _bio(words: list[str]) -> list[str]:
    """Numbers are B-NUM spans, everything else O."""
    return ["B-NUM" if w[:1].isdigit() else "O" for w in words]


@pytest.mark.usefixtures("one_torch_thread")
def test_a_tag_seen_once_in_test_trains_and_is_scored_wrong(
    tmp_path: Path, word2vec_model: Path
) -> None:
    texts = [s for d in lee_documents(60) for s in _lee_sentences(d) if 5 <= len(s.split()) <= 20]
    sentences = [(s.split(), _bio(s.split())) for s in texts[:150]]
    lone = next(  # a sentence the hash puts in test (u < test_fraction)
        i
        for i, (words, _) in enumerate(sentences)
        if _unit(_input_key(Example(words=tuple(words)))) < 0.2
    )
    sentences[lone][1][0] = "B-RARE"  # its first word carries a tag no other word has
    task = load_task(
        _spec(name="names", kind="tag", train=str(_conll(tmp_path / "n.conll", sentences)))
    )
    assert task.labels == ("B-NUM", "O") and task.unseen == ("B-RARE",)
    assert task.unseen_labels == {"dev": 0, "test": 1}
    n_test = sum(len(e.words) for e in task.test)

    config = TransferConfig(
        "finetune", lr=1e-2, batch_size=16, max_len=64, seed=0, passes=2, min_steps=4,
        max_steps=4, evals=2, patience=2, warmup=0.1, encoder_lr_scale=0.1,
    )  # fmt: skip
    result = run_transfer("word2vec", word2vec_model, task, task.train, config)
    assert set(result.test) == {"accuracy", "macro_f1", "span_f1"}
    assert result.test["accuracy"] <= (n_test - 1) / n_test

    # The unseen word's gold index lies past the head's outputs: a prediction right on every
    # other word scores exactly (n - 1) / n, and the B-RARE span is a missed span.
    test = _splits(task, task.train)["test"]
    assert int((test.labels >= len(task.labels)).sum()) == 1
    best = np.where(test.labels < len(task.labels), test.labels, 0)
    scores = score_split(task, test.labels, best, test.item_offsets)
    assert scores["accuracy"] == (n_test - 1) / n_test and scores["span_f1"] < 1.0
    assert most_frequent_tag(task, task.train)["test"]["accuracy"] <= (n_test - 1) / n_test
