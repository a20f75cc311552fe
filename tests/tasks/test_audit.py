"""The contamination audit finds test text planted in the pretraining corpus (English by word
13-grams, Chinese by 50-character spans, short examples only verbatim), none in a disjoint
pair, and names the models adapted on the task. Real MLflow (SQLite) and DuckDB on a temp
store; the stage runs as its Prefect task's function, the report reads the catalog."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from pipelines.data.contamination import AuditSettings, audit, is_cjk
from pipelines.data.task_data import Example, TaskData
from pipelines.report.report import build_report
from pretrainlab.config import spec_from_dict
from storage import catalog
from storage.atomic import write_manifest, write_parquet
from storage.layout import Layout
from tasks.audit import audit_task

LONG_EN = ("the committee met on tuesday to discuss the budget for the new library and "
           "agreed to postpone the vote until spring")  # fmt: skip
LONG_ZH = ("北京大学图书馆今天宣布将在明年春天开放新的阅览室，所有学生都可以免费使用这些设施，"
           "同时图书馆还会增加夜间开放时间以方便读者学习和研究")  # fmt: skip
SHORT = "Stocks fell sharply."
CORPUS = [
    f"Local news. {LONG_EN.capitalize()}. Other matters followed.",
    f"新闻摘要：{LONG_ZH}。其他消息。",
    f"Markets: {SHORT} Bonds rose.",
    "A document about something else entirely, with no test text in it at all.",
]
UNSEEN = [
    "a completely different sentence about rivers mountains and the slow migration of birds "
    "across the northern plains",
    "Nobody wrote this here.",
]


def _task(texts: list[str], name: str = "t") -> TaskData:
    test = tuple(Example(text_a=t, label="0") for t in texts)
    return TaskData(name, "classify", test, test, test, ("0",), f"fp-{name}")


def test_planted_english_and_chinese_and_short_examples_are_found() -> None:
    assert is_cjk(LONG_ZH) and not is_cjk(LONG_EN)
    found = audit(_task([LONG_EN, LONG_ZH, SHORT, *UNSEEN]), CORPUS, AuditSettings())
    assert found.overlapping == (0, 1, 2) and found.verbatim == (0, 1, 2)
    assert found.short_examples == 2 and found.documents == len(CORPUS)  # SHORT, "Nobody..."
    assert found.ngram_share == 3 / 5


def test_a_shared_ngram_is_not_verbatim_and_a_disjoint_pair_finds_nothing() -> None:
    partial = " ".join(LONG_EN.split()[:14]) + " but then everyone went home early instead"
    found = audit(_task([partial]), CORPUS, AuditSettings())
    assert found.overlapping == (0,) and found.verbatim == ()
    half = LONG_ZH[:55] + "另外一些完全不同的文字在这里结束了这个句子"
    assert audit(_task([half]), CORPUS, AuditSettings()).overlapping == (0,)
    clean = audit(_task(UNSEEN), CORPUS, AuditSettings())
    assert clean.overlapping == () and clean.verbatim == ()
    # below n words a shared span does not count: the short example must occur whole
    assert audit(_task(["Stocks fell sharply today."]), CORPUS, AuditSettings()).overlapping == ()


def test_stage_writes_a_catalog_row_names_adapted_models_and_warns(tmp_path: Path) -> None:
    spec = spec_from_dict({
        "experiment": "audit",
        "store": str(tmp_path / "store"),
        "corpus": {"sources": [{"path": str(tmp_path / "corpus.txt")}]},
        "pretrain": {"families": ["gpt"]},
        "transfer": {"adapt": {"families": ["gpt"]}},
        "audit": {"warn_share": 0.1},
    })  # fmt: skip
    layout = Layout.at(spec.store)
    corpus = layout.corpus("c1")
    write_parquet(corpus / "part-00000.parquet", pa.table({"text": CORPUS}))
    write_manifest(corpus, {"documents": len(CORPUS)})
    first = audit_task.fn(spec, _task([LONG_EN, *UNSEEN], "news"), "c1")
    again = audit_task.fn(spec, _task([LONG_EN, *UNSEEN], "news"), "c1")
    assert not first["cache_hit"] and again["cache_hit"] and again["run_id"] == first["run_id"]
    audit_task.fn(spec, _task(UNSEEN, "clean"), "c1")
    assert audit_task.fn(spec, _task(UNSEEN, "none"), "missing") is None  # not ingested
    rows = catalog.query(spec.store, "select * from contamination order by task",
                         tracking_uri=spec.tracking_uri()).to_pylist()  # fmt: skip
    assert [(r["task"], r["ngram_examples"], r["verbatim_examples"]) for r in rows] == [
        ("clean", 0, 0), ("news", 1, 1)]  # fmt: skip
    assert rows[1]["adapted"] == ["gpt+adapt"] and rows[1]["ngram_share"] == 1 / 3
    runs = catalog.query(spec.store, "select run_id from runs where experiment = 'audit/audit'",
                         tracking_uri=spec.tracking_uri()).num_rows  # fmt: skip
    assert runs == 2
    catalog.refresh(Path(spec.store), spec.tracking_uri())
    md = build_report(Path(spec.store), tmp_path / "out", experiment="audit").markdown_path
    md = md.read_text()
    assert "## Contamination warning" in md and "news: 33.3% of its test examples" in md
    assert md.index("Contamination warning") < md.index("## 1.")
    assert "news: gpt+adapt adapted on this task's text" in md
    assert "| clean | c1 | 2 | 0.0% (0) | 0.0% (0) |" in md
