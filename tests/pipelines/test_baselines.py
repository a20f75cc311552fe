"""Reference lines on real demo tasks: they must beat chance where the signal is lexical."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines import demo_data
from pipelines.data.task_data import Example, TaskData, TaskDataError, load_task, take_budget
from pipelines.transfer.baselines import baseline, most_frequent_tag, tfidf_logreg
from pretrainlab.config import TaskSpec


@pytest.fixture(scope="session")
def data_dir() -> Path:
    demo_data.fetch(["polarity-sentences", "pos-oanc", "wic-wordnet"])
    return demo_data.default_data_dir()


def test_tfidf_beats_chance_on_polarity(data_dir: Path) -> None:
    spec = TaskSpec(name="polarity", kind="classify", dataset="polarity-sentences")
    task = load_task(spec, data_dir)
    scores = baseline(task, take_budget(task.train, 1000, seed=0))
    assert set(scores) == {"dev", "test"} and set(scores["test"]) == {"accuracy", "macro_f1"}
    assert scores["test"]["accuracy"] > 0.62 and scores["test"]["macro_f1"] > 0.62


def test_most_frequent_tag_beats_chance_on_pos(data_dir: Path) -> None:
    spec = TaskSpec(name="pos", kind="tag", dataset="pos-oanc", max_examples=2000)
    task = load_task(spec, data_dir)
    scores = baseline(task, task.train)
    assert scores["test"]["accuracy"] > 0.75  # WSJ gold; chance over ~45 tags is ~0.02
    assert 0.3 < scores["test"]["macro_f1"] < scores["test"]["accuracy"]


def test_wic_baseline_runs_and_stays_near_chance(data_dir: Path) -> None:
    task = load_task(TaskSpec(name="wic", kind="wic", dataset="wic-wordnet"), data_dir)
    scores = baseline(task, take_budget(task.train, 500, seed=0))
    assert 0.4 < scores["test"]["accuracy"] < 0.65  # lexical features cannot see senses


def test_pair_features_see_overlap() -> None:
    def words(i: int) -> str:
        return " ".join(f"w{(i * 7 + k * 13) % 60}" for k in range(4))

    def pair(i: int, same: bool) -> Example:
        b = f"the {words(i)}" if same else f"the {words(i + 3)}"
        return Example(text_a=words(i), text_b=b, label=str(int(same)))

    train = tuple(pair(i, i % 2 == 0) for i in range(80))
    test = tuple(pair(i, i % 2 == 0) for i in range(100, 140))
    task = TaskData("p", "pair", train, test, test, ("0", "1"), "f")
    assert tfidf_logreg(task, train)["test"]["accuracy"] > 0.9


def test_wrong_kind_is_refused() -> None:
    tag = TaskData("t", "tag", (), (), (), ("NN",), "f")
    with pytest.raises(TaskDataError, match="use most_frequent_tag"):
        tfidf_logreg(tag, ())
    text = TaskData("c", "classify", (), (), (), ("0", "1"), "f")
    with pytest.raises(TaskDataError, match="use tfidf_logreg"):
        most_frequent_tag(text, ())


def test_a_label_train_never_has_counts_wrong_and_enters_macro_f1() -> None:
    train = (Example(words=("a", "b"), tags=("X", "Y")),) * 3
    test = (Example(words=("a", "c"), tags=("X", "Z")),)  # Z: only in test (unseen)
    task = TaskData("t", "tag", train, test, test, ("X", "Y"), "f", ("Z",), {"dev": 1, "test": 1})
    scores = most_frequent_tag(task, train)["test"]
    assert scores["accuracy"] == 0.5  # "c" gets the fallback tag, never Z
    assert scores["macro_f1"] == pytest.approx(1 / 3)  # X = 1, Y = 0 (a false guess), Z = 0
