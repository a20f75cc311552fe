"""Tokenizer training: special tokens and ids per kind, round trips in English and Chinese,
BERT's pair template, content ids, corrupt files, mismatches and bad input."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from gensim.test.utils import datapath
from tokenizers import Tokenizer

from pipelines.data.tokenizer_training import (
    KINDS,
    META_FILE,
    TOKENIZER_FILE,
    TokenizerError,
    TokenizerMismatchError,
    check_same_tokenizer,
    iter_train_texts,
    load_tokenizer,
    resolve_kind,
    save_tokenizer,
    tokenizer_fingerprint,
    tokenizer_id,
    train_tokenizer,
    vocab_stats,
)
from pretrainlab.config import BPESpec, WordLevelSpec, WordPieceSpec

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CHINESE = [
    "我爱北京天安门。天安门上太阳升。",
    "今天天气很好，我们去公园散步吧！你想去吗？",
    "北京是中国的首都，也是一座历史悠久的城市。",
    "他每天早上喝一杯茶，然后开始工作。",
]
SPECS = {
    "wordpiece": WordPieceSpec(vocab_size=1500, min_frequency=2),
    "bpe": BPESpec(vocab_size=600, min_frequency=2),
    "wordlevel": WordLevelSpec(vocab_size=5000, min_count=2),
}


def write_corpus(directory: Path, texts: list[str], splits: list[str], parts: int = 2) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    per = -(-len(texts) // parts)
    for i in range(parts):
        chunk, chunk_splits = texts[i * per : (i + 1) * per], splits[i * per : (i + 1) * per]
        table = pa.table(
            {
                "doc_id": [hashlib.sha256(t.encode()).hexdigest()[:16] for t in chunk],
                "source": ["test"] * len(chunk),
                "text": chunk,
                "n_chars": [len(t) for t in chunk],
                "split": chunk_splits,
            }
        )
        pq.write_table(table, directory / f"part-{i:05d}.parquet")
    return directory


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lee = Path(datapath("lee_background.cor")).read_text(encoding="utf-8").splitlines()[:120]
    texts = lee + CHINESE * 3
    splits = ["valid" if i % 10 == 0 else "train" for i in range(len(texts))]
    return write_corpus(tmp_path_factory.mktemp("corpus"), texts, splits)


@pytest.fixture(scope="module")
def saved(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One trained and saved tokenizer per kind, in a directory named by its id."""
    root = tmp_path_factory.mktemp("tokenizers")
    out = {}
    for kind, spec in SPECS.items():
        tok = train_tokenizer(spec, iter_train_texts(corpus))
        directory = root / tokenizer_id(tok)
        assert save_tokenizer(tok, directory) == directory.name
        out[kind] = directory
    return out


@pytest.mark.parametrize("kind", list(SPECS))
def test_special_tokens_reserved_at_fixed_low_ids(saved: dict[str, Path], kind: str) -> None:
    fast = load_tokenizer(saved[kind])
    specials = KINDS[kind].specials
    assert [fast.convert_tokens_to_ids(t) for t in specials] == list(range(len(specials)))
    for role, token in KINDS[kind].roles.items():
        assert getattr(fast, role) == token
        assert getattr(fast, f"{role}_id") == specials.index(token)
    raw = Tokenizer.from_file(str(saved[kind] / TOKENIZER_FILE))
    assert len(fast) == raw.get_vocab_size()  # the wrapper added no token of its own


def test_roles_per_kind() -> None:
    assert KINDS["wordpiece"].specials == ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
    assert KINDS["bpe"].roles["sep_token"] == "<|delim|>"
    assert KINDS["bpe"].roles["eos_token"] == "<|endoftext|>"
    assert KINDS["wordlevel"].roles == {
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "bos_token": "<s>",
        "eos_token": "</s>",
    }


def test_bert_pair_template_and_segments(saved: dict[str, Path]) -> None:
    fast = load_tokenizer(saved["wordpiece"])
    single = fast("the fire")
    assert fast.convert_ids_to_tokens(single["input_ids"]) == ["[CLS]", "the", "fire", "[SEP]"]
    pair = fast("the fire", "我爱北京")
    tokens = fast.convert_ids_to_tokens(pair["input_ids"])
    assert tokens == ["[CLS]", "the", "fire", "[SEP]", "我", "爱", "北", "京", "[SEP]"]
    assert pair["token_type_ids"] == [0, 0, 0, 0, 1, 1, 1, 1, 1]


def test_wordpiece_round_trip_lowercases_and_splits_cjk_per_character(
    saved: dict[str, Path],
) -> None:
    fast = load_tokenizer(saved["wordpiece"])
    english = "The Government said the fire was under control."
    ids = fast(english)["input_ids"]
    assert fast.decode(ids, skip_special_tokens=True) == english.lower()
    assert fast.unk_token_id not in ids
    chinese = "我爱北京天安门。"
    encoded = fast(chinese, add_special_tokens=False)["input_ids"]
    assert fast.convert_ids_to_tokens(encoded) == list(chinese)
    assert fast.decode(encoded) == " ".join(chinese)


def test_bpe_round_trip_is_exact_for_any_text(saved: dict[str, Path]) -> None:
    fast = load_tokenizer(saved["bpe"])
    for text in [
        "The Government said the fire was under control.",
        "我爱北京天安门。",
        "naïve café 🙂 日本語, never seen in training",
    ]:
        ids = fast(text)["input_ids"]
        # add_prefix_space: the first word is encoded as mid-text, decoding keeps that space
        assert fast.decode(ids) == " " + text
    assert fast.unk_token is None


def test_bpe_sentence_ids_concatenate_to_the_document_ids(saved: dict[str, Path]) -> None:
    tok = Tokenizer.from_file(str(saved["bpe"] / TOKENIZER_FILE))
    sentences = ["The fire was under control.", "Residents returned home.", "我爱北京。"]
    joined = [i for s in sentences for i in tok.encode(s).ids]
    assert joined == tok.encode(" ".join(sentences)).ids


def test_wordlevel_round_trip_isolates_cjk_and_marks_unknown_words(
    saved: dict[str, Path],
) -> None:
    fast = load_tokenizer(saved["wordlevel"])
    ids = fast("The fire, the Government said.")["input_ids"]
    assert fast.decode(ids) == "the fire , the government said ."
    zh = fast("我爱北京。")["input_ids"]
    assert fast.convert_ids_to_tokens(zh) == ["我", "爱", "北", "京", "。"]
    assert fast.convert_ids_to_tokens(fast("zzyzx fire")["input_ids"]) == ["<unk>", "fire"]
    # BertPreTokenizer alone would keep 北京 as one word: the Split before it isolates CJK
    pieces = Tokenizer.from_file(str(saved["wordlevel"] / TOKENIZER_FILE)).pre_tokenizer
    assert [p for p, _ in pieces.pre_tokenize_str("北京,ok")] == ["北", "京", ",", "ok"]


def test_wordlevel_min_count_is_the_frequency_cut_off() -> None:
    texts = ["alpha alpha alpha beta beta gamma"] * 1  # alpha 3, beta 2, gamma 1
    tok = train_tokenizer(WordLevelSpec(vocab_size=100, min_count=2), texts)
    vocab = tok.get_vocab()
    assert "alpha" in vocab and "beta" in vocab and "gamma" not in vocab
    with pytest.raises(TokenizerError, match="min_count=4"):
        train_tokenizer(WordLevelSpec(vocab_size=100, min_count=4), texts)


def test_content_id_and_save_load(saved: dict[str, Path]) -> None:
    for directory in saved.values():
        data = (directory / TOKENIZER_FILE).read_bytes()
        assert directory.name == hashlib.sha256(data).hexdigest()[:16]
        assert tokenizer_fingerprint(directory) == directory.name
        meta = json.loads((directory / META_FILE).read_text())
        assert meta["tokenizer_id"] == directory.name
        tok = Tokenizer.from_file(str(directory / TOKENIZER_FILE))
        assert tokenizer_id(tok) == directory.name  # same bytes again after a reload


def test_corrupt_tokenizer_json_is_detected(saved: dict[str, Path], tmp_path: Path) -> None:
    source = saved["wordpiece"]
    copy = tmp_path / source.name
    copy.mkdir()
    for name in (TOKENIZER_FILE, META_FILE):
        (copy / name).write_bytes((source / name).read_bytes())
    load_tokenizer(copy)  # intact copy loads
    text = (copy / TOKENIZER_FILE).read_text(encoding="utf-8")
    (copy / TOKENIZER_FILE).write_text(text.replace('"fire"', '"fyre"', 1), encoding="utf-8")
    with pytest.raises(TokenizerError) as error:
        load_tokenizer(copy)
    message = str(error.value)
    assert str(copy / TOKENIZER_FILE) in message and "delete" in message and "retrain" in message
    (copy / TOKENIZER_FILE).write_bytes(b"")  # truncated by a killed run
    with pytest.raises(TokenizerError, match="does not match"):
        load_tokenizer(copy)
    (copy / META_FILE).unlink()
    with pytest.raises(TokenizerError, match="incomplete"):
        load_tokenizer(copy)


def test_a_hash_matching_file_that_is_no_tokenizer_is_refused(
    saved: dict[str, Path], tmp_path: Path
) -> None:
    meta = json.loads((saved["bpe"] / META_FILE).read_text())
    meta["tokenizer_id"] = hashlib.sha256(b"{}").hexdigest()[:16]
    (tmp_path / TOKENIZER_FILE).write_bytes(b"{}")
    (tmp_path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(TokenizerError, match="not a valid tokenizer"):
        load_tokenizer(tmp_path)


def test_mismatch_error_names_both_ids() -> None:
    check_same_tokenizer("aaaa111122223333", "aaaa111122223333", "model models/bert/x")
    with pytest.raises(TokenizerMismatchError) as error:
        check_same_tokenizer("aaaa111122223333", "bbbb444455556666", "model models/bert/x")
    message = str(error.value)
    assert "aaaa111122223333" in message and "bbbb444455556666" in message
    assert "models/bert/x" in message


def test_empty_train_split_is_one_clear_error(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "c", ["only valid text here."] * 4, ["valid"] * 4)
    with pytest.raises(TokenizerError, match="train split is empty") as error:
        train_tokenizer(SPECS["wordpiece"], iter_train_texts(corpus))
    assert str(corpus) in str(error.value)
    with pytest.raises(TokenizerError, match="no training texts"):
        train_tokenizer(SPECS["bpe"], [])
    with pytest.raises(TokenizerError, match="no part-"):
        list(iter_train_texts(tmp_path / "missing"))


def test_train_texts_stream_only_the_train_split(tmp_path: Path) -> None:
    texts = [f"text number {i}" for i in range(10)]
    splits = ["valid" if i % 3 == 0 else "train" for i in range(10)]
    corpus = write_corpus(tmp_path / "c", texts, splits, parts=3)
    assert list(iter_train_texts(corpus)) == [
        t for t, s in zip(texts, splits, strict=True) if s == "train"
    ]
    pq.write_table(pa.table({"body": ["x"]}), corpus / "part-00009.parquet")
    with pytest.raises(TokenizerError, match=r"part-00009.parquet: missing column"):
        list(iter_train_texts(corpus))


def test_vocab_larger_than_the_corpus_is_reported_not_fatal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    spec = WordPieceSpec(vocab_size=50_000)
    with caplog.at_level(logging.WARNING):
        tok = train_tokenizer(spec, ["a tiny corpus of a few words", "a few more words"])
    stats = vocab_stats(spec, tok)
    assert stats["vocab_size_requested"] == 50_000
    assert stats["vocab_size_actual"] == tok.get_vocab_size() < 1000
    assert stats["vocab_short"] is True
    assert "asked for" in caplog.text


def test_unknown_kind_is_one_clear_error() -> None:
    assert resolve_kind("bert") == "wordpiece" and resolve_kind("elmo") == "wordlevel"
    with pytest.raises(TokenizerError, match=r"unknown tokenizer kind .*'sentencepiece'.*known:"):
        resolve_kind("sentencepiece")
