"""Chinese word segmentation in front of the word-level tokenizer (`tokenizers.word.segment`):
words with jieba, characters by default, one segmenter for every consumer.

The corpus is a few hundred everyday Chinese sentences built from common phrases, so each
word recurs often enough for min_count and word2vec; real words, real jieba cuts."""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import version
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rjieba
from tokenizers import Tokenizer, models, pre_tokenizers

from pipelines.data import segmentation
from pipelines.data.encoding import encode_corpus
from pipelines.data.task_data import Example
from pipelines.data.tokenizer_training import (
    META_FILE,
    TOKENIZER_FILE,
    TokenizerError,
    content_id,
    iter_train_texts,
    load_raw_tokenizer,
    load_tokenizer,
    save_tokenizer,
    ship_tokenizer,
    spec_segmenter,
    tokenizer_fingerprint,
    tokenizer_id,
    train_tokenizer,
)
from pipelines.models.saved import load_pretrained
from pipelines.models.word2vec import save_vectors, train_word2vec_on_shards
from pipelines.transfer.heads import encode_examples, family_inputs
from pretrainlab.config import Word2VecSpec, WordLevelSpec

TIMES = ["今天", "昨天", "明天早上", "上个星期", "每天晚上", "周末", "去年夏天", "下午三点"]
PEOPLE = ["我们", "他的朋友", "这位老师", "很多学生", "我的妈妈", "公司经理", "那个孩子", "记者"]
PLACES = ["图书馆", "北京", "公园里", "学校门口", "医院", "火车站", "超市", "办公室"]
ACTS = ["看书", "学习中文", "讨论问题", "买水果", "喝咖啡", "写报告", "等朋友", "参加会议"]
ENDS = ["。", "，然后回家了。", "，觉得非常高兴。", "，一直到很晚。"]
SPECS = {
    "jieba": WordLevelSpec(vocab_size=2000, min_count=2, segment="jieba"),
    "none": WordLevelSpec(vocab_size=2000, min_count=2),
}
MIN_COUNT = 2
MAX_TOKENS = 64


def chinese_sentences(n: int = 480) -> list[str]:
    """`n` sentences: time, person, place, action, ending, in every mix the indices give."""
    return [
        TIMES[i % 8]
        + PEOPLE[(i // 8) % 8]
        + "在"
        + PLACES[(i * 3 + i // 64) % 8]
        + ACTS[(i * 5 + i // 8) % 8]
        + ENDS[i % 4]
        for i in range(n)
    ]


def is_cjk(token: str) -> bool:
    return segmentation._CJK_RUN.fullmatch(token) is not None


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One part: documents of three sentences, every 10th document in the valid split."""
    sentences = chinese_sentences()
    docs = ["".join(sentences[i : i + 3]) for i in range(0, len(sentences), 3)]
    docs.append("The fire, the Government said. The fire spread, the Government said.")
    root = tmp_path_factory.mktemp("zh_corpus")
    table = pa.table(
        {
            "doc_id": [hashlib.sha256(d.encode()).hexdigest()[:16] for d in docs],
            "source": ["test"] * len(docs),
            "text": docs,
            "n_chars": [len(d) for d in docs],
            "split": ["valid" if i % 10 == 9 else "train" for i in range(len(docs))],
        }
    )
    pq.write_table(table, root / "part-00000.parquet")
    return root


@pytest.fixture(scope="module")
def saved(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both tokenizers trained on the corpus and saved in directories named by their ids."""
    root = tmp_path_factory.mktemp("zh_tokenizers")
    out = {}
    for name, spec in SPECS.items():
        tok = train_tokenizer(spec, iter_train_texts(corpus))
        segmenter = spec_segmenter(spec)
        directory = root / tokenizer_id(tok, segmenter)
        assert save_tokenizer(tok, directory, segmenter) == directory.name
        out[name] = directory
    return out


@pytest.fixture(scope="module")
def vectors(corpus: Path, saved: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """word2vec on each tokenizer's shards, encoded by the encoding stage's own function."""
    root = tmp_path_factory.mktemp("zh_w2v")
    spec = Word2VecSpec(sg=True, vector_size=16, window=3, epochs=2, workers=1, seed=7)
    out = {}
    for name, tokenizer_dir in saved.items():
        tokens = root / name / "tokens"
        encode_corpus(corpus, tokenizer_dir, tokens, "word2vec", MAX_TOKENS)
        kv, _ = train_word2vec_on_shards(
            tokens, tokenizer_dir, spec, MIN_COUNT, root / name / "checkpoints"
        )
        out[name] = kv
    return out


def test_segmented_vocabulary_holds_words_and_the_default_characters(saved) -> None:
    words = set(load_raw_tokenizer(saved["jieba"])[0].get_vocab())
    assert {"图书馆", "火车站", "我们", "学生", "参加", "会议", "中文"} <= words
    assert {"fire", "government"} <= words  # English words as without segmentation
    chars = {t for t in load_raw_tokenizer(saved["none"])[0].get_vocab() if is_cjk(t)}
    assert chars and all(len(t) == 1 for t in chars)  # unchanged default: one per character
    assert "图书馆" not in chars and {"图", "书", "馆"} <= chars


def test_word2vec_vectors_hold_multi_character_words(vectors) -> None:
    segmented = [w for w in vectors["jieba"].index_to_key if is_cjk(w)]
    assert {"图书馆", "办公室", "公园", "朋友"} <= set(segmented)
    assert sum(len(w) > 1 for w in segmented) > len(segmented) / 2
    characters = [w for w in vectors["none"].index_to_key if is_cjk(w)]
    assert characters and all(len(w) == 1 for w in characters)


def test_every_load_cuts_as_training_did(saved: dict[str, Path]) -> None:
    text = "我们在图书馆看书，the fire."
    raw = load_raw_tokenizer(saved["jieba"])[0].encode(text).tokens
    assert raw == ["我们", "在", "图书馆", "看书", "，", "the", "fire", "."]
    fast = load_tokenizer(saved["jieba"])
    assert fast.convert_ids_to_tokens(fast(text)["input_ids"]) == raw
    batch = load_raw_tokenizer(saved["jieba"])[0].encode_batch_fast([text, text])
    assert [e.ids for e in batch] == [fast(text)["input_ids"]] * 2  # the encoding stage's call
    plain = load_raw_tokenizer(saved["none"])[0].encode(text).tokens
    assert plain[:5] == ["我", "们", "在", "图", "书"]
    assert plain[-3:] == raw[-3:]  # English tokenizes the same either way


def test_the_segmenter_is_part_of_the_tokenizer_id(saved: dict[str, Path]) -> None:
    assert saved["jieba"].name != saved["none"].name
    meta = json.loads((saved["jieba"] / META_FILE).read_text())
    assert meta["segmenter"] == f"jieba/rjieba=={version('rjieba')}"
    assert json.loads((saved["none"] / META_FILE).read_text())["segmenter"] is None
    data = (saved["jieba"] / TOKENIZER_FILE).read_bytes()
    assert content_id(data, meta["segmenter"]) == saved["jieba"].name == meta["tokenizer_id"]
    assert content_id(data, None) != saved["jieba"].name  # same file, no segmenter: another id
    assert tokenizer_fingerprint(saved["jieba"]) == saved["jieba"].name
    none = saved["none"]
    assert content_id((none / TOKENIZER_FILE).read_bytes()) == none.name  # default id unchanged


def test_a_meta_that_drops_the_segmenter_is_not_trusted(saved, tmp_path: Path) -> None:
    copy = tmp_path / saved["jieba"].name
    copy.mkdir()
    (copy / TOKENIZER_FILE).write_bytes((saved["jieba"] / TOKENIZER_FILE).read_bytes())
    meta = json.loads((saved["jieba"] / META_FILE).read_text())
    (copy / META_FILE).write_text(json.dumps({**meta, "segmenter": None}))
    with pytest.raises(TokenizerError, match="does not match its id"):
        load_tokenizer(copy)


def test_another_segmenter_version_is_refused_with_the_fix(saved, tmp_path: Path) -> None:
    tok, _ = load_raw_tokenizer(saved["none"])  # any tokenizer.json will do
    directory = tmp_path / "old"
    save_tokenizer(tok, directory, "jieba/rjieba==0.0.1")
    with pytest.raises(segmentation.SegmentationError, match=r"install rjieba==0\.0\.1"):
        load_raw_tokenizer(directory)
    with pytest.raises(segmentation.SegmentationError, match="unknown word segmenter"):
        segmentation.identity("thulac")


def test_wic_spans_point_at_the_original_characters(saved: dict[str, Path]) -> None:
    tokenizer = load_tokenizer(saved["jieba"])
    inputs = family_inputs("word2vec", tokenizer, MAX_TOKENS, 10**6)
    for text, target in [
        ("昨天我们在图书馆看书。", "图书馆"),
        ("The fire，很多学生在火车站等朋友。", "火车站"),  # offsets after Latin text
        ("很多学生在火车站等朋友。", "火"),  # a span inside a word reads the whole word
    ]:
        span = (text.index(target), text.index(target) + len(target))
        example = Example(text_a=text, text_b=text, span_a=span, span_b=span, label="1")
        (seq, positions), _ = encode_examples(inputs, "wic", [example]).items[0]
        ids = encode_examples(inputs, "wic", [example]).sequences[seq][0]
        read = tokenizer.convert_ids_to_tokens([ids[p] for p in positions])
        assert read == ([target] if len(target) > 1 else ["火车站"])
        offsets = tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
        assert [text[s:e].lower() for s, e in offsets] == tokenizer.convert_ids_to_tokens(
            tokenizer(text)["input_ids"]
        )  # every offset points at the original characters of its token


def test_conll_words_decide_what_is_tagged(saved: dict[str, Path]) -> None:
    tokenizer = load_tokenizer(saved["jieba"])
    inputs = family_inputs("word2vec", tokenizer, MAX_TOKENS, 10**6)
    words = ("图书馆", "火车站等", "北", "京")  # 北 and 京 are two words: never merged
    encoded = encode_examples(inputs, "tag", [Example(words=words, tags=("N", "N", "N", "N"))])
    ids, _ = encoded.sequences[0]
    assert tokenizer.convert_ids_to_tokens(ids)[:3] == ["图书馆", "火车站", "等"]
    assert len(encoded.items) == len(words)  # one item per CoNLL word
    first = [item[0][1][0] for item in encoded.items]
    assert first == [0, 1, 3, 4]  # "火车站等" is cut within itself, read at 火车站


def test_a_saved_model_tokenizer_segments_on_load(saved, vectors, tmp_path: Path) -> None:
    model_dir = tmp_path / "word2vec"
    save_vectors(vectors["jieba"], model_dir)
    ship_tokenizer(saved["jieba"], model_dir)
    kv, tokenizer = load_pretrained("word2vec", model_dir)
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("我的妈妈在超市买水果。")["input_ids"])
    assert tokens == ["我", "的", "妈妈", "在", "超市", "买", "水果", "。"]
    assert all(t in kv.key_to_index for t in ("妈妈", "超市", "水果"))


def test_jieba_cuts_runs_as_rjieba_does() -> None:
    """The splitter hands each CJK run to jieba: same words as jieba on the run itself."""
    text = "去年夏天公司经理在办公室参加会议"
    bare = Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>"))
    bare.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    segmentation.attach(bare, segmentation.identity("jieba"), "test")
    pieces = [p for p, _ in bare.pre_tokenizer.pre_tokenize_str(f"ok {text}!")]
    assert pieces == ["ok", *rjieba.Jieba().cut(text), "!"]
