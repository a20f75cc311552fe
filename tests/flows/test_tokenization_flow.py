"""Ingest -> tokenize end to end on real demo text: real Prefect, MLflow (SQLite) and DuckDB."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pyarrow.parquet as pq
import pytest

from flows.pipeline import pipeline, plan
from pipelines.data import segmentation
from pipelines.data.tokenizer_training import load_tokenizer, read_meta
from pretrainlab.config import spec_from_dict
from storage import catalog
from storage.layout import Layout
from tasks.tokenization import plan_tokenizer

pytestmark = pytest.mark.usefixtures("prefect_harness")

CHINESE = [
    "自然语言处理是人工智能的一个分支。它研究人与计算机之间用自然语言进行有效通信的理论和方法！",
    "预训练模型在少量标注数据时更有用。微调通常比从头训练收敛得更快？",
]


def make_spec(tmp_path: Path, **tokenizers):
    zh = tmp_path / "zh.txt"
    zh.write_text(
        "\n".join(CHINESE * 3 + [f"第{i}段：中文文本用于测试分词。" for i in range(30)]),
        encoding="utf-8",
    )
    return spec_from_dict(
        {
            "experiment": "toktest",
            "store": str(tmp_path / "store"),
            "corpus": {
                "sources": [{"dataset": "lee-news", "limit": 150}, {"path": str(zh)}],
                "valid_fraction": 0.2,
            },
            "tokenizers": {
                "bert": {"vocab_size": 1000},
                "gpt": {"vocab_size": 1000},
                "word": {"vocab_size": 3000, "min_count": 2},
                **tokenizers,
            },
        }
    )


def test_tokenize_flow_trains_encodes_records_and_caches(tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    first = pipeline(spec, until="tokenize")["tokenize"]
    assert set(first["families"]) == {"bert", "gpt", "word"}
    layout = Layout.at(spec.store)

    bert = load_tokenizer(layout.tokenizer(first["families"]["bert"]["tokenizer_id"]))
    encoded = bert("预训练模型", "Pretraining helps.")
    tokens = bert.convert_ids_to_tokens(encoded["input_ids"])
    assert tokens[0] == "[CLS]" and tokens.count("[SEP]") == 2
    assert "预" in tokens and "训" in tokens  # CJK per character
    assert encoded["token_type_ids"][-1] == 1

    # Every family's shards are queryable, train and valid.
    rows = catalog.query(
        Path(spec.store),
        "select family, split, sum(len(ids)) as tokens from tokens group by 1, 2 order by 1, 2",
        tracking_uri=spec.tracking_uri(),
    ).to_pylist()
    assert {(r["family"], r["split"]) for r in rows} == {
        (f, s) for f in ("bert", "gpt", "word") for s in ("train", "valid")
    }
    assert all(r["tokens"] > 0 for r in rows)

    mlflow.set_tracking_uri(spec.tracking_uri())
    (run,) = mlflow.search_runs(
        experiment_names=["toktest"], filter_string="tags.stage='tokenize'", output_format="list"
    )
    assert run.data.metrics["bert/vocab_size"] > 500
    assert 0 <= run.data.metrics["word/unk_rate_valid"] < 0.5
    assert run.data.metrics["gpt/tokens_per_word"] >= 1.0

    # Nothing changed: every tokenizer and shard is reused, none retrained.
    assert all(status.cached for status in plan(spec, "tokenize"))
    again = pipeline(spec, until="tokenize")["tokenize"]
    assert again["cache_hit"] and again["families"] == first["families"]

    # One knob changed: only that family's tokenizer is retrained.
    changed = make_spec(tmp_path, gpt={"vocab_size": 900})
    statuses = {s.stage: s.cached for s in plan(changed, "tokenize")}
    assert statuses == {
        "ingest": True,
        "tokenize/bert": True,
        "tokenize/gpt": False,
        "tokenize/word": True,
    }
    third = pipeline(changed, until="tokenize")["tokenize"]["families"]
    assert third["bert"] == first["families"]["bert"]
    assert third["gpt"]["tokenizer_id"] != first["families"]["gpt"]["tokenizer_id"]


def test_corrupt_cached_tokenizer_is_never_trusted(tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    first = pipeline(spec, until="tokenize")["tokenize"]["families"]["word"]["tokenizer_id"]
    path = Layout.at(spec.store).tokenizer(first) / "tokenizer.json"
    path.write_text(path.read_text().replace("<unk>", "<UNK>", 1))
    assert not {s.stage: s.cached for s in plan(spec, "tokenize")}["tokenize/word"]
    retrained = pipeline(spec, until="tokenize")["tokenize"]["families"]["word"]
    layout = Layout.at(spec.store)
    read_meta(layout.tokenizer(retrained["tokenizer_id"]))  # intact: hash matches its id
    (quarantined,) = (layout.store / "tokenizers").glob(f".corrupt-{first}-*")
    assert "<UNK>" in (quarantined / "tokenizer.json").read_text()


def test_segmented_word_tokenizer_cuts_chinese_words_through_the_stage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """segment: jieba trains, records and encodes words; the segmenter and its version are part
    of the training key, so neither the default nor another rjieba reuses the tokenizer."""
    default = make_spec(tmp_path)
    spec = make_spec(tmp_path, word={"vocab_size": 3000, "min_count": 2, "segment": "jieba"})
    spec = spec.model_copy(
        update={"pretrain": spec.pretrain.model_copy(update={"families": ["word2vec"]})}
    )
    assert {s.stage: s.cached for s in plan(spec, "tokenize")} == {
        "ingest": False,
        "tokenize/word": False,
    }
    result = pipeline(spec, until="tokenize")["tokenize"]
    tokenizer_dir = Layout.at(spec.store).tokenizer(result["families"]["word"]["tokenizer_id"])
    assert read_meta(tokenizer_dir)["segmenter"].startswith("jieba/rjieba==")
    word = load_tokenizer(tokenizer_dir)
    tokens = word.convert_ids_to_tokens(word("中文文本用于测试分词。")["input_ids"])
    assert tokens == ["中文", "文本", "用于", "测试", "分词", "。"]
    shards = pq.read_table(result["families"]["word"]["tokens"])
    ids = {i for row in shards["ids"].to_pylist() for i in row}
    assert word.convert_tokens_to_ids("测试") in ids  # the encoded corpus holds words
    corpus_id = result["corpus_id"]
    assert plan_tokenizer(spec, "word", corpus_id).cached
    assert not plan_tokenizer(default, "word", corpus_id).cached
    monkeypatch.setattr(segmentation.metadata, "version", lambda package: "0.9.9")
    assert not plan_tokenizer(spec, "word", corpus_id).cached
