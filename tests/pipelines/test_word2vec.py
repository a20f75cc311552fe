"""word2vec: streamed shards, a correct per-epoch loss, intrinsic evaluation, safe save/load,
exact resume at epoch boundaries, per-token vectors. Real text: gensim's Lee news corpus."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from gensim.models import Word2Vec
from gensim.test.utils import datapath
from gensim.utils import simple_preprocess

from pipelines.data.encoding import TOKENS_SCHEMA
from pipelines.data.sentences import split_sentences
from pipelines.data.tokenizer_training import save_tokenizer, train_tokenizer
from pipelines.models.word2vec import (
    ALPHA,
    MIN_ALPHA,
    alpha_at,
    load_vectors,
    save_vectors,
    train_word2vec,
    train_word2vec_on_shards,
)
from pipelines.models.word2vec_eval import COVERAGE_FLOOR, intrinsic_eval
from pipelines.models.word2vec_vocab import (
    ReplayedSentences,
    ShardSentences,
    Word2VecError,
    aligned_vectors,
    word2vec_layer_states,
    word_vocab,
)
from pipelines.training.pretraining import PretrainJob, pretrain
from pretrainlab.config import Word2VecSpec, WordLevelSpec, spec_from_dict

MIN_COUNT = 2


@pytest.fixture(scope="module")
def lee() -> list[list[str]]:
    text = Path(datapath("lee_background.cor")).read_text(encoding="utf-8")
    return [simple_preprocess(line) for line in text.splitlines() if line.strip()]


def spec(**fields: object) -> Word2VecSpec:
    base = {"sg": True, "vector_size": 32, "window": 4, "epochs": 3, "workers": 1, "seed": 7}
    base.update(fields)
    return Word2VecSpec(**base)


@pytest.fixture(scope="module")
def trained(lee: list[list[str]], tmp_path_factory: pytest.TempPathFactory):
    return train_word2vec(lee, spec(), MIN_COUNT, tmp_path_factory.mktemp("w2v_ckpt"))


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A word-level tokenizer trained on the train split, and token shards (valid = every 10th)."""
    root = tmp_path_factory.mktemp("w2v_shards")
    text = Path(datapath("lee_background.cor")).read_text(encoding="utf-8")
    docs = [line.strip() for line in text.splitlines() if line.strip()]
    train_docs = [d for i, d in enumerate(docs) if i % 10]
    tok = train_tokenizer(WordLevelSpec(vocab_size=2500, min_count=MIN_COUNT), train_docs)
    save_tokenizer(tok, root / "tokenizer")
    rows: dict[str, list] = {"doc_id": [], "sent_idx": [], "split": [], "ids": []}
    for d, doc in enumerate(docs):
        for s, sentence in enumerate(split_sentences(doc)):
            rows["doc_id"].append(f"doc{d:04d}")
            rows["sent_idx"].append(s)
            rows["split"].append("train" if d % 10 else "valid")
            rows["ids"].append(tok.encode(sentence).ids)
    schema = TOKENS_SCHEMA  # the shard schema the encoding stage writes
    (root / "tokens").mkdir()
    table = pa.table(rows, schema=schema)
    pq.write_table(table.slice(0, 900), root / "tokens" / "part-00000.parquet")
    pq.write_table(table.slice(900), root / "tokens" / "part-00001.parquet")
    return {"root": root, "tok": tok, "rows": rows}


# ----------------------------------------------------------------------------- sentences


def test_shard_sentences_stream_token_strings_without_specials(shards: dict) -> None:
    vocab, specials = word_vocab(shards["root"] / "tokenizer")
    assert [vocab[i] for i in sorted(specials)] == ["<pad>", "<unk>", "<s>", "</s>"]
    sentences = ShardSentences(shards["root"] / "tokens", vocab, drop_ids=specials)
    first = list(sentences)
    assert first == list(sentences)  # restartable: every pass gives the same sentences
    rows = shards["rows"]
    expected = [
        [vocab[i] for i in ids if i not in specials]
        for ids, split in zip(rows["ids"], rows["split"], strict=True)
        if split == "train"
    ]
    assert first == [s for s in expected if s]
    assert not any("<unk>" in s for s in first)


class CountingPasses:
    def __init__(self, sentences: list[list[str]]) -> None:
        self.sentences, self.passes = sentences, 0

    def __iter__(self):
        self.passes += 1
        yield from self.sentences


def test_replayed_sentences_read_the_source_once_when_they_fit() -> None:
    source = CountingPasses([["a", "b"], ["c"], ["d", "e", "f"]])
    replayed = ReplayedSentences(source, max_words=6)
    assert [list(replayed) for _ in range(3)] == [source.sentences] * 3
    assert source.passes == 1


def test_replayed_sentences_stream_every_pass_past_the_cap() -> None:
    source = CountingPasses([["a", "b"], ["c"], ["d", "e", "f"]])
    replayed = ReplayedSentences(source, max_words=5)
    assert [list(replayed) for _ in range(3)] == [source.sentences] * 3
    assert source.passes == 3 and replayed.kept is None


def test_shards_from_another_tokenizer_are_refused(shards: dict) -> None:
    sentences = ShardSentences(shards["root"] / "tokens", ["<pad>", "<unk>", "the"])
    with pytest.raises(Word2VecError, match="another tokenizer"):
        next(iter(sentences))


def test_vocabulary_is_the_tokenizers_with_one_min_count(shards: dict, tmp_path: Path) -> None:
    kv, result = train_word2vec_on_shards(
        shards["root"] / "tokens", shards["root"] / "tokenizer", spec(epochs=1), MIN_COUNT, tmp_path
    )
    vocab, specials = word_vocab(shards["root"] / "tokenizer")
    words = {w for i, w in enumerate(vocab) if i not in specials}
    assert set(kv.index_to_key) == words
    assert result.vocab_size == len(words) and result.epochs_done == 1


# ----------------------------------------------------------------------------- loss


def test_one_positive_decreasing_loss_per_epoch(lee, trained) -> None:
    _, result = trained
    assert len(result.losses) == len(result.loss_per_word) == result.epochs_done == 3
    assert all(loss > 0 for loss in result.losses)
    assert result.losses[-1] < result.losses[0]
    assert result.loss_per_word[-1] < result.loss_per_word[0]
    assert result.raw_words == 3 * sum(len(s) for s in lee)
    assert result.words_per_s > 0 and result.stopped_reason == "epochs"


def test_epoch_loss_matches_gensims_where_gensims_is_right(lee, tmp_path: Path) -> None:
    """One epoch, one worker: gensim's own tally is correct there, and ours must agree."""
    _, ours = train_word2vec(lee, spec(epochs=1), MIN_COUNT, tmp_path / "a")
    bare = Word2Vec(
        lee, sg=1, vector_size=32, window=4, min_count=MIN_COUNT, seed=7, workers=1,
        epochs=1, compute_loss=True,
    )  # fmt: skip
    assert ours.losses[0] == pytest.approx(bare.get_latest_training_loss(), rel=1e-4)


def test_epoch_loss_does_not_depend_on_the_number_of_workers(lee, tmp_path: Path) -> None:
    """gensim's shared tally loses updates between threads (~half with 2 workers); ours not."""
    _, one = train_word2vec(lee, spec(epochs=1), MIN_COUNT, tmp_path / "one")
    _, two = train_word2vec(lee, spec(epochs=1, workers=2), MIN_COUNT, tmp_path / "two")
    assert two.losses[0] == pytest.approx(one.losses[0], rel=0.05)


def test_cbow_trains_too(lee, tmp_path: Path) -> None:
    kv, result = train_word2vec(lee, spec(sg=False, epochs=2), MIN_COUNT, tmp_path)
    assert result.losses[1] < result.losses[0] and kv.vector_size == 32


# ----------------------------------------------------------------------------- resume


def test_resume_from_an_epoch_checkpoint_equals_an_uninterrupted_run(
    lee, trained, tmp_path: Path
) -> None:
    kv_full, full = trained
    _, first = train_word2vec(lee, spec(), MIN_COUNT, tmp_path, stop_after_epoch=1)
    assert (first.epochs_done, first.stopped_reason) == (1, "stop_after_epoch")
    assert [p.name for p in tmp_path.glob("epoch-*")] == ["epoch-1"]
    kv, resumed = train_word2vec(lee, spec(), MIN_COUNT, tmp_path)
    assert (resumed.resumed_from, resumed.epochs_done) == (1, 3)
    assert resumed.losses == full.losses
    assert kv.index_to_key == kv_full.index_to_key
    np.testing.assert_array_equal(kv.vectors, kv_full.vectors)  # bit-identical, workers=1
    _, again = train_word2vec(lee, spec(), MIN_COUNT, tmp_path)  # finished: nothing to do
    assert (again.resumed_from, again.epochs_done) == (3, 3)


def test_learning_rate_schedule_continues_linearly() -> None:
    assert alpha_at(0, 5) == ALPHA and alpha_at(5, 5) == pytest.approx(MIN_ALPHA)
    assert alpha_at(2, 5) == pytest.approx(ALPHA - (ALPHA - MIN_ALPHA) * 0.4)


def test_checkpoint_of_other_settings_is_refused(lee, tmp_path: Path) -> None:
    train_word2vec(lee, spec(epochs=1), MIN_COUNT, tmp_path)
    with pytest.raises(Word2VecError, match="vector_size"):
        train_word2vec(lee, spec(epochs=1, vector_size=16), MIN_COUNT, tmp_path)


def test_word_budget_plans_fewer_epochs(lee, tmp_path: Path) -> None:
    words = sum(len(s) for s in lee)
    _, result = train_word2vec(lee, spec(epochs=5), MIN_COUNT, tmp_path, budget_words=2 * words)
    assert (result.epochs_done, result.stopped_reason) == (2, "budget_words")


# ----------------------------------------------------------------------------- eval, save, layers


def test_intrinsic_evaluation_gives_scores_and_oov_rates(trained) -> None:
    metrics = intrinsic_eval(trained[0], floor=0.0)  # every set, however little it covers
    for name in ("wordsim353", "simlex999", "analogy"):
        # a 60k-word news corpus misses many words; our coverage is gensim's share answered
        assert 0 < metrics[f"{name}_coverage"] < 1
        assert metrics[f"{name}_coverage"] == pytest.approx(1 - metrics[f"{name}_oov"])
    for name in ("wordsim353", "simlex999"):
        assert -1 <= metrics[f"{name}_spearman"] <= 1
    assert metrics["analogy_questions"] > 0 and 0 <= metrics["analogy_accuracy"] <= 1


def test_a_set_below_the_coverage_floor_is_skipped_not_nan(trained) -> None:
    # covers ~38% of WordSim-353, ~24% of SimLex-999, ~4% of the analogy questions
    metrics = intrinsic_eval(trained[0])
    assert metrics["analogy_coverage"] < COVERAGE_FLOOR <= metrics["simlex999_coverage"]
    assert {"wordsim353_spearman", "simlex999_spearman"} <= set(metrics)
    assert not {"analogy_accuracy", "analogy_oov", "analogy_questions"} & set(metrics)
    metrics = intrinsic_eval(trained[0], floor=0.3)
    assert "wordsim353_spearman" in metrics and "simlex999_spearman" not in metrics
    assert all(np.isfinite(v) for v in metrics.values())


def test_held_out_loss_is_seeded_and_on_the_training_loss_scale(
    shards: dict, tmp_path: Path
) -> None:
    args = (shards["root"] / "tokens", shards["root"] / "tokenizer")
    for sg in (True, False):
        _, result = train_word2vec_on_shards(*args, spec(sg=sg), MIN_COUNT, tmp_path / f"{sg}")
        _, again = train_word2vec_on_shards(*args, spec(sg=sg), MIN_COUNT, tmp_path / f"{sg}")
        assert again.resumed_from == 3 and again.valid_loss_per_word == result.valid_loss_per_word
        assert 0.5 < result.valid_loss_per_word / result.loss_per_word[-1] < 2


def test_non_english_word2vec_logs_zero_coverage_and_a_loss_headline(tmp_path: Path) -> None:
    """Chinese characters: the English sets cover nothing, so no score and no NaN anywhere;
    the registered headline is the held-out loss."""
    rng = np.random.default_rng(0)
    chars = [chr(0x4E00 + i) for i in range(60)]
    texts = ["".join(rng.choice(chars, size=12)) for _ in range(400)]
    tok = train_tokenizer(WordLevelSpec(vocab_size=200, min_count=2), texts)
    save_tokenizer(tok, tmp_path / "tokenizer")
    rows = {"doc_id": [], "sent_idx": [], "split": [], "ids": []}
    for d, text in enumerate(texts):
        rows["doc_id"].append(f"doc{d:04d}")
        rows["sent_idx"].append(0)
        rows["split"].append("valid" if d % 10 == 0 else "train")
        rows["ids"].append(tok.encode(text).ids)
    (tmp_path / "tokens").mkdir()
    pq.write_table(pa.table(rows, schema=TOKENS_SCHEMA), tmp_path / "tokens" / "part-0.parquet")
    config = spec_from_dict(
        {
            "corpus": {"sources": [{"path": "unused.txt"}]},
            "tokenizers": {"word": {"min_count": 2}},
            "pretrain": {"families": ["word2vec"], "word2vec": spec().model_dump()},
        }
    )
    job = PretrainJob(
        "word2vec", tmp_path / "tokens", tmp_path / "tokenizer", tmp_path / "w", tmp_path / "out"
    )
    summary = pretrain(config, job, lambda metrics, step: None)
    assert len(tok.encode(texts[0]).ids) == 12  # one token per character: no English word
    for name in ("wordsim353", "simlex999", "analogy"):
        assert summary[f"{name}_coverage"] == 0.0
    assert not {"wordsim353_spearman", "simlex999_spearman", "analogy_accuracy"} & set(summary)
    assert summary["headline_metric"] == "valid_loss_per_word"
    assert summary["headline_value"] == summary["valid_loss_per_word"] > 0
    numbers = [v for v in summary.values() if isinstance(v, float)]
    assert numbers and all(np.isfinite(v) for v in numbers)


def test_save_load_round_trip_without_pickle(trained, tmp_path: Path) -> None:
    kv = trained[0]
    save_vectors(kv, tmp_path / "m", meta={"sg": True})
    loaded = load_vectors(tmp_path / "m")
    assert loaded.index_to_key == kv.index_to_key
    np.testing.assert_array_equal(loaded.vectors, kv.vectors)
    word = kv.index_to_key[5]
    assert loaded.get_vecattr(word, "count") == kv.get_vecattr(word, "count")
    assert (tmp_path / "m" / "vectors.bin").read_bytes()[:1] != b"\x80"  # not a pickle


def test_bad_directories_fail_clearly(trained, tmp_path: Path) -> None:
    with pytest.raises(Word2VecError, match="not a word2vec directory"):
        load_vectors(tmp_path)
    save_vectors(trained[0], tmp_path / "m")
    (tmp_path / "m" / "vectors.bin").write_bytes(b"12 32\nbroken")
    with pytest.raises(Word2VecError, match="corrupt"):
        load_vectors(tmp_path / "m")


def test_layer_states_are_the_static_vector_of_each_token(trained) -> None:
    kv = trained[0]
    vocab = ["<pad>", "<unk>", kv.index_to_key[0], kv.index_to_key[3], "notaword"]
    table = aligned_vectors(kv, vocab)
    ids = torch.tensor([[2, 3, 4, 0], [3, 3, 1, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]], dtype=torch.bool)
    (layer,) = word2vec_layer_states(table, ids, mask)
    assert layer.shape == (2, 4, 32)
    torch.testing.assert_close(layer[0, 0], torch.from_numpy(kv[kv.index_to_key[0]].copy()))
    torch.testing.assert_close(layer[0, 1], layer[1, 0])  # static: same word, same vector
    assert float(layer[0, 2].abs().sum()) == 0 and float(layer[:, 3].abs().sum()) == 0
