"""Encoding token shards: schema, one row per real sentence, determinism, statistics."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from gensim.test.utils import datapath
from tokenizers import Tokenizer

from pipelines.data.encoding import (
    TOKENIZER_ID_KEY,
    TOKENS_SCHEMA,
    EncodingError,
    count_words,
    encode_corpus,
    read_token_ids,
    shards_tokenizer_id,
)
from pipelines.data.sentences import split_sentences
from pipelines.data.tokenizer_training import (
    TOKENIZER_FILE,
    TokenizerError,
    TokenizerMismatchError,
    iter_train_texts,
    save_tokenizer,
    tokenizer_fingerprint,
    train_tokenizer,
)
from pretrainlab.config import WordLevelSpec, WordPieceSpec

MAX_TOKENS = 24
CHINESE = [
    "我爱北京天安门。天安门上太阳升。",
    "今天天气很好，我们去公园散步吧！你想去吗？",
    "北京是中国的首都，也是一座历史悠久的城市。",
]


def write_part(path: Path, texts: list[str], splits: list[str]) -> None:
    table = pa.table(
        {
            "doc_id": [hashlib.sha256(t.encode()).hexdigest()[:16] for t in texts],
            "source": ["test"] * len(texts),
            "text": texts,
            "n_chars": [len(t) for t in texts],
            "split": splits,
        }
    )
    pq.write_table(table, path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two parts of real news, Chinese, a doc with no sentence, valid words unseen in train."""
    root = tmp_path_factory.mktemp("corpus")
    lee = Path(datapath("lee_background.cor")).read_text(encoding="utf-8").splitlines()[:60]
    first = [*lee[:30], *CHINESE, "  \n \n  "]
    write_part(root / "part-00000.parquet", first, ["train"] * len(first))
    second = [*lee[30:], *CHINESE, "Zorblax quuxified the flibbertigibbet."]
    splits = ["valid" if i % 3 == 0 else "train" for i in range(len(second))]
    splits[-1] = "valid"
    write_part(root / "part-00001.parquet", second, splits)
    return root


@pytest.fixture(scope="module")
def tokenizers_dir(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tok")
    out = {}
    for family, spec in [
        ("word", WordLevelSpec(vocab_size=3000, min_count=1)),
        ("bert", WordPieceSpec(vocab_size=1000)),
    ]:
        out[family] = root / family
        save_tokenizer(train_tokenizer(spec, iter_train_texts(corpus)), out[family])
    return out


@pytest.fixture(scope="module")
def encoded(
    corpus: Path, tokenizers_dir: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
):
    out = tmp_path_factory.mktemp("tokens") / "word"
    calls: list[tuple[int, int]] = []
    stats = encode_corpus(
        corpus,
        tokenizers_dir["word"],
        out,
        "word2vec",
        MAX_TOKENS,
        progress=lambda *a: calls.append(a),
    )
    return out, stats, calls


def _corpus_rows(corpus: Path) -> list[dict]:
    return pq.read_table(corpus).to_pylist()  # part order, then row order


def test_schema_one_part_per_input_and_tokenizer_recorded(
    encoded, tokenizers_dir: dict[str, Path]
) -> None:
    out, stats, calls = encoded
    assert sorted(p.name for p in out.iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    schema = pq.read_schema(out / "part-00000.parquet")
    assert schema.remove_metadata().equals(TOKENS_SCHEMA)
    assert schema.metadata[TOKENIZER_ID_KEY].decode() == stats["tokenizer_id"]
    assert (
        shards_tokenizer_id(out)
        == stats["tokenizer_id"]
        == tokenizer_fingerprint(tokenizers_dir["word"])
    )
    assert calls == [(1, 2), (2, 2)]


def test_rows_are_the_documents_sentences_encoded_and_cut(
    encoded, corpus: Path, tokenizers_dir: dict[str, Path]
) -> None:
    out, stats, _ = encoded
    tok = Tokenizer.from_file(str(tokenizers_dir["word"] / TOKENIZER_FILE))
    expected = []
    for doc in _corpus_rows(corpus):
        kept = [
            s for s in split_sentences(doc["text"]) if tok.encode(s, add_special_tokens=False).ids
        ]
        for idx, sentence in enumerate(kept):
            ids = tok.encode(sentence, add_special_tokens=False).ids[:MAX_TOKENS]
            expected.append(
                {"doc_id": doc["doc_id"], "sent_idx": idx, "split": doc["split"], "ids": ids}
            )
    assert pq.read_table(out).to_pylist() == expected
    assert stats["sentences"] == len(expected)
    assert stats["truncated_sentences"] > 0
    assert stats["docs"] == len(_corpus_rows(corpus))
    for split in ("train", "valid"):
        rows = [r for r in expected if r["split"] == split]
        assert stats[f"sentences_{split}"] == len(rows)
        assert stats[f"tokens_{split}"] == sum(len(r["ids"]) for r in rows)
        assert [list(a) for a in read_token_ids(out, split)] == [r["ids"] for r in rows]
    assert all(a.dtype == np.int32 for a in read_token_ids(out, "train"))


def test_unk_rate_words_and_sentences_per_doc(encoded, corpus: Path) -> None:
    out, stats, _ = encoded
    valid = np.concatenate(list(read_token_ids(out, "valid")))
    unk = 1  # <unk> is reserved at id 1
    assert (valid == unk).sum() >= 3  # the made-up words exist only in valid
    assert stats["unk_rate_valid"] == pytest.approx((valid == unk).mean())
    words = sum(count_words(r["text"]) for r in _corpus_rows(corpus))
    assert stats["words"] == words
    assert stats["sentences_per_doc"] == pytest.approx(stats["sentences"] / stats["docs"])
    assert 0.9 < stats["tokens_per_word"] < 1.5  # word-level: ~1 token per word + punctuation


def test_count_words_counts_cjk_characters() -> None:
    assert count_words("the fire was out") == 4
    assert count_words("我爱 Beijing very much") == 5
    assert count_words("") == 0


def test_output_is_deterministic_across_runs_and_workers(
    encoded, corpus: Path, tokenizers_dir: dict[str, Path], tmp_path: Path
) -> None:
    out, stats, _ = encoded
    again = encode_corpus(
        corpus, tokenizers_dir["word"], tmp_path / "w2", "word", MAX_TOKENS, workers=2
    )
    assert again == stats
    for name in ("part-00000.parquet", "part-00001.parquet"):
        assert (tmp_path / "w2" / name).read_bytes() == (out / name).read_bytes()


def test_bert_shards_have_no_specials_and_split_chinese_per_character(
    corpus: Path, tokenizers_dir: dict[str, Path], tmp_path: Path
) -> None:
    stats = encode_corpus(corpus, tokenizers_dir["bert"], tmp_path / "b", "bert", 64)
    tok = Tokenizer.from_file(str(tokenizers_dir["bert"] / TOKENIZER_FILE))
    rows = pq.read_table(tmp_path / "b").to_pylist()
    specials = {tok.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]", "[MASK]")}
    assert not specials & {i for r in rows for i in r["ids"]}
    first_zh = next(r for r in rows if tok.id_to_token(r["ids"][0]) == "我")
    assert [tok.id_to_token(i) for i in first_zh["ids"]] == list("我爱北京天安门。")
    assert stats["kind"] == "wordpiece"


def test_bad_input_is_named(corpus: Path, tokenizers_dir: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(TokenizerMismatchError, match="needs a bpe tokenizer"):
        encode_corpus(corpus, tokenizers_dir["word"], tmp_path / "x", "gpt", 32)
    with pytest.raises(TokenizerError, match="unknown tokenizer kind"):
        encode_corpus(corpus, tokenizers_dir["word"], tmp_path / "x", "t5", 32)
    bad = tmp_path / "bad"
    bad.mkdir()
    write_part(bad / "part-00000.parquet", ["Some text."], ["test"])
    with pytest.raises(EncodingError, match=r"part-00000.parquet: document .* split 'test'"):
        encode_corpus(bad, tokenizers_dir["word"], tmp_path / "y", "word", 32)
    pq.write_table(pa.table({"text": ["x"]}), bad / "part-00000.parquet")
    with pytest.raises(EncodingError, match=r"missing column\(s\) \['doc_id', 'split'\]"):
        encode_corpus(bad, tokenizers_dir["word"], tmp_path / "y", "word", 32)
    assert not (tmp_path / "y" / "part-00000.parquet").exists()  # nothing half-written
    with pytest.raises(EncodingError, match="no part-"):
        list(read_token_ids(tmp_path / "nothing", "train"))
