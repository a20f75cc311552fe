"""BERT: NSP pairs against the shard rows, [CLS] A [SEP] B [SEP] layout, masked-only MLM head
parity with BertForPreTraining, per-layer states, learning with the real loop, save/load,
clear errors, and DDP parity (2 gloo processes under torchrun vs one process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipelines.data.lm_data import LMDataError, open_split, unigram_log_probs
from pipelines.data.sentences import split_sentences
from pipelines.data.tokenizer_training import (
    load_raw_tokenizer,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)
from pipelines.models.bert import (
    BertError,
    bert_layer_states,
    build_bert,
    init_output_bias,
    load_bert,
    save_bert,
)
from pipelines.models.bert_data import (
    IS_NEXT,
    NOT_NEXT,
    BERTObjective,
    BertVocab,
    Pair,
    PairSampler,
    encode_pair,
    full_mlm_labels,
    max_predictions,
)
from pipelines.models.masking import IGNORE_INDEX
from pipelines.training.loop import train
from pretrainlab.config import BERTSpec, LoopSpec, WordPieceSpec

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("sent_idx", pa.int32()),
        ("split", pa.string()),
        ("ids", pa.list_(pa.int32())),
    ]
)


def tiny_spec(loop: dict | None = None, **model: object) -> BERTSpec:
    loop_args = {
        "max_steps": 40,
        "batch_size": 8,
        "lr": 2e-3,
        "warmup_steps": 4,
        "log_every": 5,
        "eval_every": 20,
        "eval_batches": 2,
        "checkpoint_every": 100,
        "device": "cpu",
        **(loop or {}),
    }
    model_args = {
        "n_layer": 2,
        "n_head": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "max_seq_len": 32,
        "dropout": 0.0,
        **model,
    }
    return BERTSpec(**model_args, loop=LoopSpec(**loop_args))


def write_shards(directory: Path, rows: list[dict]) -> Path:
    """Two part files, split between documents, as the encoding stage writes them."""
    directory.mkdir(parents=True)
    half = len(rows) // 2
    while rows[half]["doc_id"] == rows[half - 1]["doc_id"]:
        half += 1
    for part, chunk in enumerate((rows[:half], rows[half:])):
        pq.write_table(pa.Table.from_pylist(chunk, SCHEMA), directory / f"part-{part:05d}.parquet")
    return directory


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """A WordPiece tokenizer and token shards from gensim's Lee news corpus (real text)."""
    from gensim.test.utils import datapath

    root = tmp_path_factory.mktemp("bert-corpus")
    text = Path(datapath("lee_background.cor")).read_text(encoding="utf-8")
    documents = [line.strip() for line in text.splitlines() if line.strip()]
    save_tokenizer(train_tokenizer(WordPieceSpec(vocab_size=1000), documents), root / "tokenizer")
    tok, _ = load_raw_tokenizer(root / "tokenizer")
    rows = []
    for d, document in enumerate(documents):
        sentences = split_sentences(document)
        encoded = tok.encode_batch(sentences, add_special_tokens=False)
        for i, enc in enumerate(encoded):
            split = "valid" if d % 10 == 9 else "train"
            rows.append({"doc_id": f"doc{d:04d}", "sent_idx": i, "split": split, "ids": enc.ids})
    tokenizer = load_tokenizer(root / "tokenizer")
    return {
        "root": root,
        "tokens_dir": write_shards(root / "tokens", rows),
        "tokenizer_dir": root / "tokenizer",
        "vocab": BertVocab.from_tokenizer(tokenizer),
        "train_rows": [r for r in rows if r["split"] == "train"],
    }


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def objective_for(corpus: dict, spec: BERTSpec, seed: int = 0) -> BERTObjective:
    return BERTObjective(
        corpus["tokens_dir"], spec, corpus["vocab"], seed, corpus["root"] / "cache"
    )


def sampler_for(
    corpus: dict, next_sentence_prob: float = 0.5, max_seq_len: int = 32
) -> PairSampler:
    split = open_split(corpus["tokens_dir"], "train", corpus["root"] / "cache")
    return PairSampler(split, max_seq_len=max_seq_len, next_sentence_prob=next_sentence_prob)


# ----------------------------------------------------------------------------- the model


def test_vocab_comes_from_the_tokenizer(corpus):
    vocab = corpus["vocab"]
    assert vocab.size == 1000
    assert vocab.special_ids == (0, 1, 2, 3, 4)  # [PAD] [UNK] [CLS] [SEP] [MASK], reserved first


def test_build_bert_from_the_spec():
    spec = tiny_spec(max_seq_len=48)
    model = build_bert(spec, vocab_size=500, pad_id=0)
    config = model.config
    assert config.vocab_size == 500 and config.max_position_embeddings == 48
    assert config.type_vocab_size == 2  # segments A and B
    assert (config.num_hidden_layers, config.hidden_size, config.pad_token_id) == (2, 32, 0)
    assert model.bert.embeddings.token_type_embeddings.weight.shape == (2, 32)
    tied = model.cls.predictions.decoder.weight
    assert tied.data_ptr() == model.bert.embeddings.word_embeddings.weight.data_ptr()
    # seeded by spec.loop.seed, without touching the global RNG
    state = torch.get_rng_state()
    again = build_bert(spec, vocab_size=500, pad_id=0)
    assert torch.equal(torch.get_rng_state(), state)
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_bad_model_shapes_say_what_to_change():
    with pytest.raises(BertError, match=r"not divisible by bert\.n_head"):
        build_bert(tiny_spec(hidden_size=30, n_head=4), 500, 0)
    with pytest.raises(BertError, match="outside the vocabulary"):
        build_bert(tiny_spec(), 500, 500)


# ----------------------------------------------------------------------------- NSP pairs


def test_encode_pair_places_cls_sep_and_segments_exactly(corpus):
    vocab = corpus["vocab"]
    pair = Pair(np.array([10, 11, 12]), np.array([20, 21]), IS_NEXT, (0, 1), (1, 2))
    out = encode_pair(pair, vocab, max_seq_len=10)
    cls, sep, pad = vocab.cls_id, vocab.sep_id, vocab.pad_id
    assert out["input_ids"].tolist() == [cls, 10, 11, 12, sep, 20, 21, sep, pad, pad]
    assert out["token_type_ids"].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 0, 0]
    assert out["attention_mask"].tolist() == [1, 1, 1, 1, 1, 1, 1, 1, 0, 0]
    assert out["special_mask"].tolist() == [1, 0, 0, 0, 1, 0, 0, 1, 1, 1]
    full = encode_pair(Pair(np.arange(5, 10), np.arange(10, 12), 1, (0, 1), (5, 6)), vocab, 10)
    assert full["attention_mask"].all() and full["input_ids"][-1] == sep


def test_nsp_labels_are_balanced(corpus):
    sampler = sampler_for(corpus)
    labels = [sampler.sample(np.random.default_rng([0, i])).label for i in range(4000)]
    assert abs(np.mean(labels) - 0.5) < 0.03
    assert {
        sampler_for(corpus, 1.0).sample(np.random.default_rng(i)).label for i in range(200)
    } == {IS_NEXT}
    assert {
        sampler_for(corpus, 0.0).sample(np.random.default_rng(i)).label for i in range(200)
    } == {NOT_NEXT}


def test_pairs_match_the_shard_rows(corpus):
    """IsNext: B starts at the sentence right after A ends, same document; NotNext: B comes
    from another document. Tokens are checked against the rows as written to Parquet."""
    rows = corpus["train_rows"]  # the train split in shard order = the sampler's indexing
    for max_seq_len in (32, 128):  # short: truncation at work; long: multi-sentence segments
        _check_pairs_against_rows(sampler_for(corpus, max_seq_len=max_seq_len), rows)


def _check_pairs_against_rows(sampler: PairSampler, rows: list[dict]) -> None:
    budget = sampler.budget
    seen = {IS_NEXT: 0, NOT_NEXT: 0}
    multi_sentence = 0
    for i in range(400):
        pair = sampler.sample(np.random.default_rng([1, i]))
        seen[pair.label] += 1
        (a0, a1), (b0, b1) = pair.a_sentences, pair.b_sentences
        multi_sentence += (a1 - a0 > 1) + (b1 - b0 > 1)
        a_rows, b_rows = rows[a0:a1], rows[b0:b1]
        assert a1 > a0 and b1 > b0
        for run in (a_rows, b_rows):  # each segment: consecutive sentences of one document
            assert len({r["doc_id"] for r in run}) == 1
            assert [r["sent_idx"] for r in run] == list(
                range(run[0]["sent_idx"], run[0]["sent_idx"] + len(run))
            )
        a_ids = [t for r in a_rows for t in r["ids"]]
        b_ids = [t for r in b_rows for t in r["ids"]]
        assert pair.a.tolist() == a_ids[len(a_ids) - len(pair.a) :]  # A loses its start
        assert pair.b.tolist() == b_ids[: len(pair.b)]  # B loses its end
        assert len(pair.a) > 0 and len(pair.b) > 0 and len(pair.a) + len(pair.b) <= budget
        if pair.label == IS_NEXT:
            assert b0 == a1
            assert b_rows[0]["doc_id"] == a_rows[-1]["doc_id"]
            assert b_rows[0]["sent_idx"] == a_rows[-1]["sent_idx"] + 1
        else:
            assert b_rows[0]["doc_id"] != a_rows[0]["doc_id"]
    assert min(seen.values()) > 150
    if budget > 100:
        assert multi_sentence > 200


def test_nsp_needs_two_documents(corpus, tmp_path):
    rows = corpus["train_rows"]
    one_doc = [r for r in rows if r["doc_id"] == rows[0]["doc_id"]]
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    pq.write_table(pa.Table.from_pylist(one_doc, SCHEMA), tokens / "part-00000.parquet")
    with pytest.raises(BertError, match="NSP needs at least 2 documents"):
        BERTObjective(tokens, tiny_spec(), corpus["vocab"], 0, tmp_path / "cache")


# ----------------------------------------------------------------------------- the objective


def test_batches_are_masked_nsp_pairs(corpus):
    spec = tiny_spec()
    objective = objective_for(corpus, spec)
    vocab = corpus["vocab"]
    batch = objective.train_batch(1, 0, 1, 0, 1)
    p = max_predictions(spec)
    assert {k: tuple(v.shape) for k, v in batch.items()} == {
        "input_ids": (8, 32),
        "token_type_ids": (8, 32),
        "attention_mask": (8, 32),
        "mlm_positions": (8, p),
        "mlm_labels": (8, p),
        "next_sentence_label": (8,),
    }
    ids, types, attention = batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]
    assert (ids[:, 0] == vocab.cls_id).all()
    for row in range(len(ids)):
        used = int(attention[row].sum())
        seps = (ids[row] == vocab.sep_id).nonzero().flatten().tolist()
        # [SEP] ends A (last segment-0 token) and B (last used token); masking never hits it
        assert seps[-1] == used - 1 and seps[0] == int((types[row][:used] == 0).sum()) - 1
        assert (ids[row, used:] == vocab.pad_id).all() and (types[row, used:] == 0).all()
    labels = full_mlm_labels(batch)
    chosen = labels != IGNORE_INDEX
    assert not chosen[:, 0].any() and not (chosen & (attention == 0)).any()
    assert not (chosen & (ids == vocab.sep_id)).any()  # random draws are never special
    assert int(chosen.sum()) == int((batch["mlm_labels"] != IGNORE_INDEX).sum())
    share = chosen.sum() / (attention.sum() - 3 * len(ids))
    assert 0.1 < float(share) < 0.2


def test_valid_batches_mask_every_chosen_token_whatever_the_training_mix(corpus):
    """Valid MLM loss is prediction from context: no unchanged token to copy, one task for
    every masking mix (so the unigram-entropy gap and the masking ablation compare)."""
    vocab = corpus["vocab"]
    for mix in ({}, {"mask_replace_prob": 0.0, "random_replace_prob": 0.0}):
        objective = objective_for(corpus, tiny_spec(**mix))
        for batch in objective.valid_batches(2):
            labels = full_mlm_labels(batch)
            chosen = labels != IGNORE_INDEX
            assert chosen.any() and (batch["input_ids"][chosen] == vocab.mask_id).all()
    train = objective.train_batch(1, 0, 1, 0, 1)  # the last mix: chosen tokens stay unchanged
    chosen = full_mlm_labels(train) != IGNORE_INDEX
    assert not (train["input_ids"][chosen] == vocab.mask_id).any()


def test_length_schedule_trains_short_pairs_first_then_max_seq_len(corpus):
    """short_seq_len: steps 1..share x max_steps draw pairs of that length (fewer MLM slots),
    later steps and every valid batch max_seq_len; without it one length throughout."""
    spec = tiny_spec({"max_steps": 10}, short_seq_len=16, short_seq_share=0.5)
    objective = objective_for(corpus, spec)
    early, late = objective.train_batch(5, 0, 1, 0, 1), objective.train_batch(6, 0, 1, 0, 1)
    assert early["input_ids"].shape == (8, 16) and late["input_ids"].shape == (8, 32)
    assert early["mlm_labels"].shape == (8, max_predictions(spec, 16)) == (8, 2)
    assert late["mlm_labels"].shape == (8, max_predictions(spec)) == (8, 5)
    assert int(early["attention_mask"].sum(1).max()) <= 16
    assert int((early["input_ids"] == corpus["vocab"].sep_id).sum()) == 2 * 8  # whole pairs
    assert next(iter(objective.valid_batches(1)))["input_ids"].shape[1] == 32
    plain = objective_for(corpus, tiny_spec({"max_steps": 10}))
    assert plain.train_batch(1, 0, 1, 0, 1)["input_ids"].shape == (8, 32)
    with pytest.raises(ValueError, match="short_seq_len 32 must be below max_seq_len 32"):
        tiny_spec(short_seq_len=32)


def test_global_batch_is_the_same_for_any_split_over_ranks_and_micro_batches(corpus):
    objective = objective_for(corpus, tiny_spec())
    whole = objective.train_batch(3, 0, 1, 0, 1)
    ranks = [objective.train_batch(3, 0, 1, r, 2) for r in range(2)]
    micros = [objective.train_batch(3, m, 2, 0, 1) for m in range(2)]
    for key, value in whole.items():
        assert torch.equal(value, torch.cat([b[key] for b in ranks])), key
        assert torch.equal(value, torch.cat([b[key] for b in micros])), key
    assert not torch.equal(whole["input_ids"], objective.train_batch(4, 0, 1, 0, 1)["input_ids"])
    fresh = objective_for(corpus, tiny_spec())
    for a, b in zip(objective.valid_batches(2), fresh.valid_batches(2), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_masked_only_head_gives_the_full_head_loss(corpus):
    """Same loss and same gradients as BertForPreTraining with labels at every position."""
    spec = tiny_spec()
    objective = objective_for(corpus, spec)
    batch = objective.train_batch(0, 0, 1, 0, 1)
    model = build_bert(spec, corpus["vocab"].size, corpus["vocab"].pad_id)
    loss, metrics = objective.loss(model, batch)
    loss.backward()
    fast_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    full = super(type(model), model).forward(
        input_ids=batch["input_ids"],
        token_type_ids=batch["token_type_ids"],
        attention_mask=batch["attention_mask"],
        labels=full_mlm_labels(batch),
        next_sentence_label=batch["next_sentence_label"],
    )
    full.loss.backward()
    assert abs(loss.item() - full.loss.item()) < 1e-5
    labels = full_mlm_labels(batch)
    mlm_full = torch.nn.functional.cross_entropy(
        full.prediction_logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX
    )
    assert abs(metrics["mlm_loss"] - mlm_full.item()) < 1e-5
    for name, p in model.named_parameters():
        assert torch.allclose(fast_grads[name], p.grad, atol=1e-6, rtol=1e-4), name
    assert set(metrics) == {"mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc"}
    assert 0 <= metrics["mlm_acc"] <= 1 and 0 <= metrics["nsp_acc"] <= 1


def test_flops_per_token_counts_the_head_only_where_it_runs(corpus):
    spec = tiny_spec()
    objective = objective_for(corpus, spec)
    model = build_bert(spec, corpus["vocab"].size, corpus["vocab"].pad_id)
    n_params = sum(p.numel() for p in model.parameters())
    flops = objective.flops_per_token(model)
    full_head = 6 * n_params  # what the full vocabulary projection at every token would cost
    assert 6 * sum(p.numel() for p in model.bert.encoder.parameters()) < flops < full_head


# ----------------------------------------------------------------------------- representations


def test_layer_states_embeddings_then_every_layer(corpus):
    spec = tiny_spec(n_layer=3)
    model = build_bert(spec, corpus["vocab"].size, corpus["vocab"].pad_id).eval()
    batch = objective_for(corpus, spec).train_batch(0, 0, 1, 0, 1)
    inputs = [batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")]
    with torch.no_grad():
        states = bert_layer_states(model, *inputs)
        embeddings = model.bert.embeddings(
            input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"]
        )
        last = model.bert(
            batch["input_ids"],
            attention_mask=batch["attention_mask"],
            token_type_ids=batch["token_type_ids"],
        ).last_hidden_state
        bare = bert_layer_states(model.bert, *inputs)  # a BertModel works too
    assert len(states) == 4 and all(s.shape == (8, 32, 32) for s in states)
    assert torch.allclose(states[0], embeddings) and torch.allclose(states[-1], last)
    assert all(torch.equal(a, b) for a, b in zip(states, bare, strict=True))


def test_too_long_inputs_name_the_position_table(corpus):
    model = build_bert(tiny_spec(max_seq_len=16), corpus["vocab"].size, 0)
    ids = torch.full((1, 20), 7)
    with pytest.raises(BertError, match=r"position table \(max_position_embeddings=16\)"):
        bert_layer_states(model, ids, torch.zeros_like(ids), torch.ones_like(ids))
    with pytest.raises(BertError, match=r"lower bert\.max_seq_len"):
        model(input_ids=ids)
    # a spec asking for longer pairs than a model's table: the objective's batches trip it
    spec = tiny_spec()
    with pytest.raises(BertError, match="position table"):
        objective_for(corpus, spec).loss(
            model, objective_for(corpus, spec).train_batch(1, 0, 1, 0, 1)
        )


def test_vocab_mismatch_says_what_to_change(corpus, tmp_path):
    spec = tiny_spec()
    objective = objective_for(corpus, spec)
    other = build_bert(spec, vocab_size=900, pad_id=0)
    with pytest.raises(BertError, match="900 token embeddings but the tokenizer has 1000"):
        objective.loss(other, objective.train_batch(1, 0, 1, 0, 1))
    small = BertVocab(500, 0, 1, 2, 3, 4)  # shards hold ids up to ~999
    with pytest.raises(LMDataError, match="different tokenizer"):
        BERTObjective(corpus["tokens_dir"], spec, small, 0, tmp_path / "cache")


# ----------------------------------------------------------------------------- save / load


def test_save_and_load_round_trip(corpus, tmp_path):
    spec = tiny_spec()
    model = build_bert(spec, corpus["vocab"].size, corpus["vocab"].pad_id).eval()
    out = save_bert(model, corpus["tokenizer_dir"], tmp_path / "bert")
    assert (out / "model.safetensors").is_file() and (
        out / "tokenizer" / "tokenizer.json"
    ).is_file()
    loaded, tokenizer = load_bert(out)
    assert not loaded.training
    enc = tokenizer("A bushfire near Sydney.", "Residents were evacuated.", return_tensors="pt")
    assert enc["input_ids"][0, 0] == corpus["vocab"].cls_id
    assert enc["token_type_ids"][0].tolist().count(1) > 1  # the pair template sets segment B
    with torch.no_grad():
        a = bert_layer_states(model, enc["input_ids"], enc["token_type_ids"], enc["attention_mask"])
        b = bert_layer_states(
            loaded, enc["input_ids"], enc["token_type_ids"], enc["attention_mask"]
        )
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_load_refuses_foreign_or_mismatched_directories(corpus, tmp_path):
    with pytest.raises(BertError, match="not a saved BERT"):
        load_bert(tmp_path)
    model = build_bert(tiny_spec(), corpus["vocab"].size, corpus["vocab"].pad_id)
    with pytest.raises(BertError, match="vocabulary mismatch"):
        save_bert(build_bert(tiny_spec(), 999, 0), corpus["tokenizer_dir"], tmp_path / "bad")
    out = save_bert(model, corpus["tokenizer_dir"], tmp_path / "bert")
    other = train_tokenizer(WordPieceSpec(vocab_size=300), ["a small other corpus"] * 5)
    save_tokenizer(other, out / "tokenizer")  # someone swapped the tokenizer
    with pytest.raises(BertError, match="vocabulary mismatch"):
        load_bert(out)
    save_tokenizer(load_raw_tokenizer(corpus["tokenizer_dir"])[0], out / "tokenizer")
    (out / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(BertError, match="incomplete or corrupt"):
        load_bert(out)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(BertError, match="not 'bert'"):
        load_bert(out)


# ----------------------------------------------------------------------------- training


def test_loss_decreases_with_the_training_loop(corpus, tmp_path):
    spec = tiny_spec({"max_steps": 60, "batch_size": 16, "lr": 5e-3, "eval_batches": 4})
    model = build_bert(spec, corpus["vocab"].size, corpus["vocab"].pad_id)
    logs: list[dict[str, float]] = []
    result = train(
        model,
        objective_for(corpus, spec),
        spec.loop,
        tmp_path / "ckpt",
        lambda metrics, step: logs.append(metrics),
    )
    assert result.step == 60 and result.tokens_seen > 60 * 16 * 20
    train_logs = [m for m in logs if "loss" in m]
    valid_logs = [m for m in logs if "valid_loss" in m]
    assert {"mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc"} <= set(train_logs[0])
    assert {"valid_mlm_loss", "valid_nsp_loss", "valid_mlm_acc", "valid_nsp_acc"} <= set(
        valid_logs[0]
    )
    # MLM starts at ln(1000) = 6.9 nats; 60 steps of a 32-wide model learn the frequencies
    assert train_logs[-1]["mlm_loss"] < train_logs[0]["mlm_loss"] - 0.5
    assert valid_logs[-1]["valid_mlm_loss"] < 6.4
    assert train_logs[-1]["mlm_acc"] > 0.02


def test_unigram_output_bias_starts_mlm_at_word_frequencies(corpus):
    """BERT's default start: the MLM output bias = the train split's unigram log probabilities,
    so step 0 scores the unigram cross-entropy of the masked tokens, not ln(vocab): AdamW would
    move a zero bias ~lr a step, and the tied embeddings would learn frequencies instead."""
    assert BERTSpec().output_bias == "unigram"
    spec = tiny_spec()
    vocab = corpus["vocab"]
    log_probs = unigram_log_probs(corpus["tokens_dir"], vocab.size)
    batch = next(iter(objective_for(corpus, spec).valid_batches(1)))
    labels = batch["mlm_labels"][batch["mlm_labels"] != IGNORE_INDEX].numpy()
    unigram_ce = float(-log_probs[labels].mean())

    def mlm_loss(model: torch.nn.Module) -> float:
        with torch.no_grad():
            return float(model.eval()(**batch).mlm_loss)

    model = build_bert(spec, vocab.size, vocab.pad_id)
    assert mlm_loss(model) == pytest.approx(np.log(vocab.size), abs=0.15)  # transformers' zero
    init_output_bias(model, log_probs)
    assert torch.equal(model.cls.predictions.decoder.bias, torch.from_numpy(log_probs).float())
    assert mlm_loss(model) == pytest.approx(unigram_ce, abs=0.1)
    assert mlm_loss(model) < np.log(vocab.size) - 0.5
    with pytest.raises(BertError, match="do not fit the MLM output bias"):
        init_output_bias(model, log_probs[:-1])


def test_cpu_bf16_autocast_ends_within_tolerance_of_fp32(corpus, tmp_path):
    """20 steps of MLM + NSP in CPU bf16 autocast end within 1% of fp32's losses (same seed;
    measured ~1e-5 relative)."""
    spec = tiny_spec({"max_steps": 20, "eval_every": 20, "eval_batches": 4})
    final = {}
    for bf16 in (False, True):
        model = build_bert(spec, corpus["vocab"].size, corpus["vocab"].pad_id)
        logs: list[dict[str, float]] = []
        train(
            model,
            objective_for(corpus, spec),
            spec.loop,
            tmp_path / f"ckpt-{bf16}",
            lambda metrics, step, logs=logs: logs.append(metrics),
            cpu_autocast=bf16,
        )
        last = [m for m in logs if "loss" in m][-1]
        final[bf16] = (last["mlm_loss"], logs[-1]["valid_mlm_loss"], logs[-1]["valid_loss"])
    for fp32, bf16 in zip(final[False], final[True], strict=True):
        assert bf16 == pytest.approx(fp32, rel=0.01)
    assert final[True] != final[False]  # bf16 did change the arithmetic


DDP_SCRIPT = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
import torch
import torch.distributed as dist
from pipelines.models.bert import build_bert
from pipelines.models.bert_data import BERTObjective, BertVocab
from pipelines.data.tokenizer_training import load_tokenizer
from pipelines.training.loop import init_distributed, train
from pretrainlab.config import BERTSpec

run = json.loads(Path(sys.argv[1]).read_text())
torch.set_num_threads(1)
rank, world = init_distributed()
assert world == 2, world
spec = BERTSpec.model_validate(run["spec"])
vocab = BertVocab.from_tokenizer(load_tokenizer(run["tokenizer_dir"]))
model = build_bert(spec, vocab.size, vocab.pad_id)
objective = BERTObjective(run["tokens_dir"], spec, vocab, spec.loop.seed, run["cache_dir"])
train(model, objective, spec.loop, Path(run["checkpoint_dir"]), lambda m, s: None)
if rank == 0:
    torch.save(model.state_dict(), run["weights_out"])
dist.barrier()  # no rank tears gloo down while the other still talks to it
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_ddp_two_processes_match_one_process(corpus, tmp_path):
    """Global batch 8: one process with 2 micro-batches of 4 vs 2 gloo ranks of 4 each.
    The MLM loss is a mean over each micro-batch's masked tokens (as BertForPreTraining's),
    so the same examples must form each micro-batch: they do (micro_examples), seeded per
    example, not per process."""
    loop = {"max_steps": 3, "eval_every": 100, "log_every": 100}
    single_spec = tiny_spec({**loop, "grad_accum": 2})
    single = build_bert(single_spec, corpus["vocab"].size, corpus["vocab"].pad_id)
    start = {k: v.clone() for k, v in single.state_dict().items()}
    objective = objective_for(corpus, single_spec)
    train(single, objective, single_spec.loop, tmp_path / "single", lambda m, s: None)

    run_file = tmp_path / "run.json"
    run_file.write_text(
        json.dumps(
            {
                "spec": tiny_spec(loop).model_dump(),
                "tokenizer_dir": str(corpus["tokenizer_dir"]),
                "tokens_dir": str(corpus["tokens_dir"]),
                "cache_dir": str(corpus["root"] / "cache"),
                "checkpoint_dir": str(tmp_path / "ddp"),
                "weights_out": str(tmp_path / "ddp.pt"),
            }
        )
    )
    script = tmp_path / "ddp_bert.py"
    script.write_text(DDP_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [*command, str(script), str(run_file), str(ROOT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    moved = 0.0
    for name, value in single.state_dict().items():
        assert torch.allclose(value, ddp[name], atol=1e-5, rtol=0), name
        moved = max(moved, (value - start[name]).abs().max().item())
    assert moved > 1e-3  # the weights did train
    assert (tmp_path / "ddp" / "checkpoint.pt").is_file()  # rank 0 checkpointed
