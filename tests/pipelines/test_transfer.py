"""Transfer: inputs and heads of every family on every task kind, the modes (scratch, frozen,
finetune, partial), the frozen feature cache, the step protocol (floor, ceiling, evaluations,
early stopping, schedule, convergence) and span F1.

The four models are really pretrained (a few steps) on a little real text (gensim's Lee news
corpus) once per module, with the project's tokenizers and
`pipelines.training.pretraining.pretrain`.
"""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import pipelines.transfer.features as features
import pipelines.transfer.metrics as metrics
import pipelines.transfer.runs as transfer
from pipelines.data.task_data import Example, TaskData
from pipelines.data.tokenizer_training import load_raw_tokenizer, save_tokenizer, train_tokenizer
from pipelines.models.saved import load_pretrained
from pipelines.training.pretraining import PretrainJob, pretrain
from pipelines.transfer.heads import encode_examples, family_inputs, load_encoder, pooled_states
from pipelines.transfer.metrics import span_f1, spans
from pipelines.transfer.probes import probe_with_control
from pipelines.transfer.protocol import Plan, is_converged, lr_factor, plan
from pipelines.transfer.runs import (
    TransferConfig,
    TransferError,
    build_trainable,
    run_transfer,
)
from pretrainlab.config import Mode, PretrainlabError, parse_mode, spec_from_dict
from tests.pipelines.tiny_lm import SCHEMA, lee_documents

FAMILIES = ("word2vec", "elmo", "gpt", "bert")
KINDS = ("classify", "pair", "tag", "wic")
LOOP = {
    "max_steps": 4,
    "batch_size": 4,
    "eval_every": 4,
    "eval_batches": 1,
    "checkpoint_every": 4,
    "log_every": 2,
    "warmup_steps": 1,
    "device": "cpu",
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _spec(store: Path):
    return spec_from_dict(
        {
            "experiment": "transfer-test",
            "store": str(store),
            "corpus": {"sources": [{"dataset": "lee-news", "limit": 60}]},
            "tokenizers": {
                "bert": {"vocab_size": 300},
                "gpt": {"vocab_size": 300},
                "word": {"vocab_size": 2000, "min_count": 1},
            },
            "pretrain": {
                "word2vec": {"vector_size": 8, "epochs": 1, "workers": 1},
                "elmo": {
                    "embedding_dim": 8,
                    "hidden_dim": 16,
                    "seq_len": 16,
                    "adaptive_cutoffs": [100],
                    "loop": LOOP,
                },
                "gpt": {"n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 32, "loop": LOOP},
                "bert": {
                    "n_layer": 2,
                    "n_head": 2,
                    "hidden_size": 16,
                    "intermediate_size": 32,
                    "max_seq_len": 32,
                    "loop": LOOP,
                },
            },
        }
    )


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text) if s]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """family -> a saved pretrained model directory (tokenizer trained, shards, pretrain)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("models")
    spec = _spec(root / "store")
    docs = lee_documents(60)
    out = {}
    for family in FAMILIES:
        tok_spec = {"gpt": spec.tokenizers.gpt, "bert": spec.tokenizers.bert}.get(
            family, spec.tokenizers.word
        )
        base = root / family
        save_tokenizer(train_tokenizer(tok_spec, docs), base / "tokenizer")
        raw, _ = load_raw_tokenizer(base / "tokenizer")
        rows = []
        for d, text in enumerate(docs):
            encoded = raw.encode_batch(_sentences(text), add_special_tokens=False)
            for i, enc in enumerate(encoded):
                split = "valid" if d % 10 == 9 else "train"
                rows.append({"doc_id": f"d{d}", "sent_idx": i, "split": split, "ids": enc.ids})
        (base / "tokens").mkdir()
        pq.write_table(pa.Table.from_pylist(rows, SCHEMA), base / "tokens" / "part-00000.parquet")
        job = PretrainJob(
            family, base / "tokens", base / "tokenizer", base / "work", base / "model"
        )
        pretrain(spec, job, lambda metrics, step: None)
        out[family] = base / "model"
    return out


# ----------------------------------------------------------------------------- tiny real tasks


def _task(name: str, kind: str, examples: list[Example], labels: set[str]) -> TaskData:
    digest = hashlib.sha256(repr(examples).encode()).hexdigest()[:16]
    return TaskData(
        name=name,
        kind=kind,
        train=tuple(examples[:24]),
        dev=tuple(examples[24:32]),
        test=tuple(examples[32:40]),
        labels=tuple(sorted(labels)),
        fingerprint=digest,
    )


FUNCTION_WORDS = {"the", "a", "an", "of", "to", "in", "and", "on", "for", "at", "by"}


def _tags(words: list[str]) -> tuple[str, ...]:
    """BIO spans a lowercasing tokenizer can still see: runs of function words are FN,
    numbers NUM."""
    tags: list[str] = []
    for word in words:
        if word[:1].isdigit():
            tags.append("B-NUM")
        elif word.lower() in FUNCTION_WORDS:
            tags.append("I-FN" if tags and tags[-1].endswith("FN") else "B-FN")
        else:
            tags.append("O")
    return tuple(tags)


@pytest.fixture(scope="module")
def tasks() -> dict[str, TaskData]:
    rng = random.Random(0)
    sentences = [s for d in lee_documents(60) for s in _sentences(d) if 5 <= len(s.split()) <= 25]
    classify = [Example(text_a=s, label=str(int(" the " in s))) for s in sentences[:40]]
    pairs = []
    for i in range(40):
        a = sentences[i]
        b = sentences[i + 1] if i % 2 else rng.choice(sentences[50:])
        pairs.append(Example(text_a=a, text_b=b, label=str(i % 2)))
    tags = []
    for s in sentences[:40]:
        words = s.split()
        tags.append(Example(words=tuple(words), tags=_tags(words)))
    wic = []
    for target in ("said", "the", "of", "to", "and", "in", "a", "was"):
        holders = [s for s in sentences if f" {target} " in s][:6]
        for a, b in zip(holders[::2], holders[1::2], strict=False):
            span_a = (a.index(f" {target} ") + 1, a.index(f" {target} ") + 1 + len(target))
            span_b = (b.index(f" {target} ") + 1, b.index(f" {target} ") + 1 + len(target))
            wic.append(
                Example(text_a=a, text_b=b, span_a=span_a, span_b=span_b, label=str(len(wic) % 2))
            )
    assert len(wic) >= 20, "the Lee corpus should give enough WiC pairs"
    wic = (wic * 2)[:40]
    return {
        "classify": _task("polarity", "classify", classify, {"0", "1"}),
        "pair": _task("nextsent", "pair", pairs, {"0", "1"}),
        "tag": _task("names", "tag", tags, {t for ex in tags for t in ex.tags}),
        "wic": _task("wic", "wic", wic, {"0", "1"}),
    }


def config(mode: str, **overrides: object) -> TransferConfig:
    fields = {
        "mode": mode,
        "lr": 1e-2,
        "batch_size": 8,
        "max_len": 32,
        "seed": 0,
        "passes": 2,
        "min_steps": 6,
        "max_steps": 6,
        "evals": 2,
        "patience": 2,
        "warmup": 0.1,
        "encoder_lr_scale": 0.1,
    }
    fields.update(overrides)
    return TransferConfig(**fields)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- inputs & heads


@pytest.mark.parametrize("family", FAMILIES)
def test_inputs_and_pooled_shapes_for_every_kind(
    family: str, models: dict[str, Path], tasks: dict[str, TaskData]
) -> None:
    encoder, tokenizer, _ = load_encoder(family, models[family])
    inputs = family_inputs(family, tokenizer, 32, encoder.max_positions)
    n_layers = encoder.n_blocks + 1
    assert n_layers == {"word2vec": 1, "elmo": 3, "gpt": 3, "bert": 3}[family]
    joined = family in ("gpt", "bert")
    for kind in KINDS:
        examples = tasks[kind].train[:3]
        encoded = encode_examples(inputs, kind, examples)
        pooled = pooled_states(encoder, encoded, range(3), range(n_layers), tokenizer.pad_token_id)
        items = sum(len(ex.words) for ex in examples) if kind == "tag" else 3
        groups = 1 if kind in ("classify", "tag") or (kind == "pair" and joined) else 2
        assert pooled.shape == (items, groups, n_layers, encoder.dim)
        assert all(len(ids) <= 32 for ids, _ in encoded.sequences)
    # Where each family reads a text, and how it joins a pair.
    pair = encode_examples(inputs, "pair", tasks["pair"].train[:1])
    ids, types = pair.sequences[0]
    (_, positions), *_ = pair.items[0]
    if family == "bert":
        assert ids[0] == tokenizer.cls_token_id and positions == (0,)
        assert ids.count(tokenizer.sep_token_id) == 2 and types[-1] == 1 and types[0] == 0
    elif family == "gpt":
        assert ids[0] == ids[-1] == tokenizer.eos_token_id and positions == (len(ids) - 1,)
        assert tokenizer.sep_token_id in ids  # <|delim|>
    else:
        assert len(pair.sequences) == 2 and len(pair.items[0]) == 2
        assert tokenizer.pad_token_id not in ids
        if family == "elmo":
            assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id


@pytest.mark.parametrize("family", ["bert", "gpt", "elmo"])
def test_tags_read_the_first_subtoken_and_wic_the_target(
    family: str, models: dict[str, Path]
) -> None:
    encoder, tokenizer, _ = load_encoder(family, models[family])
    inputs = family_inputs(family, tokenizer, 32, encoder.max_positions)
    words = ("Counterintelligence", "officials", "said")
    encoded = encode_examples(inputs, "tag", [Example(words=words, tags=("O", "O", "O"))])
    ids, _ = encoded.sequences[0]
    first = [item[0][1][0] for item in encoded.items]
    assert first == sorted(first) and len(first) == 3
    long_word = tokenizer(list(words[:1]), is_split_into_words=True, add_special_tokens=False)
    assert ids[first[0]] == long_word["input_ids"][0]  # the first piece of a split word
    assert first[1] - first[0] == len(long_word["input_ids"])

    text = "The officials said the bank said no."
    span = (text.index("bank"), text.index("bank") + 4)
    wic = encode_examples(
        inputs, "wic", [Example(text_a=text, text_b=text, span_a=span, span_b=span, label="1")]
    )
    (seq, positions), _ = wic.items[0]
    pieces = tokenizer.decode([wic.sequences[seq][0][p] for p in positions])
    assert pieces.replace("##", "").strip().lower() == "bank"
    with pytest.raises(TransferError, match="outside the sentence"):
        bad = Example(text_a=text, text_b=text, span_a=(0, 400), span_b=span, label="1")
        encode_examples(inputs, "wic", [bad])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", KINDS)
def test_every_head_trains_on_every_family(
    family: str, kind: str, models: dict[str, Path], tasks: dict[str, TaskData]
) -> None:
    task = tasks[kind]
    seen = []
    short = config("finetune", passes=1, min_steps=3, max_steps=3, evals=1)
    result = run_transfer(family, models[family], task, task.train, short, on_eval=seen.append)
    assert [m.index for m in seen] == [1] and seen[0].split == "dev" and seen[0].step == 3
    assert set(result.test) >= {"accuracy", "macro_f1"}
    assert ("span_f1" in result.test) == (kind == "tag")
    assert 0.0 <= result.test["accuracy"] <= 1.0
    assert result.train_examples == 24 and result.best_eval == 1 and result.steps == 3
    # one prediction per test item, scored as the test metrics say
    predicted = result.test_predictions
    gold = np.asarray(predicted.gold)
    assert len(predicted.pred) == len(gold) == len(predicted.example)
    assert result.test["accuracy"] == pytest.approx(float((gold == predicted.pred).mean()))
    assert sorted(set(predicted.example)) == list(range(len(task.test)))


# ----------------------------------------------------------------------------- modes


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("family", ["gpt", "bert", "elmo"])
def test_partial_loads_the_bottom_k_layers_and_reinitialises_the_rest(
    family: str, models: dict[str, Path]
) -> None:
    pretrained = _state(load_encoder(family, models[family])[0])
    torch.manual_seed(0)
    scratch = _state(build_trainable(family, models[family], Mode("scratch"))[0])
    torch.manual_seed(0)
    encoder, _, loaded = build_trainable(family, models[family], parse_mode("partial:1"))
    partial = _state(encoder)
    layer = {"gpt": "model.transformer.h.", "bert": "model.bert.encoder.layer."}
    layer = layer.get(family, "model.bwd.layers.")
    assert any(n.startswith(layer + "0.") for n in loaded)  # the bottom layer came along
    assert not any(n.startswith(layer + "1.") for n in loaded)  # the top one did not
    lm_heads = ("model.lm_head.", "model.cls.", "model.softmax.")  # unused downstream (or tied)
    for name, value in partial.items():
        if name.startswith(lm_heads):
            continue
        from_pretrained = name.startswith(encoder.block_prefixes(1))
        assert torch.equal(value, pretrained[name]) == from_pretrained, name
        if value.numel() > 1 and value.std() > 0:  # not LayerNorm ones / zero biases
            assert torch.equal(value, scratch[name]) != from_pretrained, name


def test_partial_frozen_keeps_loaded_layers_and_trains_the_rest(
    monkeypatch: pytest.MonkeyPatch, models: dict[str, Path], tasks: dict[str, TaskData]
) -> None:
    built = []

    def keep(*args, **kwargs):  # the real builder; remembers the encoder it returns
        built.append(build_trainable(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(transfer, "build_trainable", keep)
    torch.manual_seed(0)
    start = _state(build_trainable("gpt", models["gpt"], parse_mode("partial:1:frozen"))[0])
    pretrained = _state(load_encoder("gpt", models["gpt"])[0])
    task = tasks["classify"]
    run_transfer("gpt", models["gpt"], task, task.train, config("partial:1:frozen"))
    encoder, _, loaded = built[0]
    after = _state(encoder)
    for name in loaded:
        assert torch.equal(after[name], pretrained[name]), name
    assert not torch.equal(
        after["model.transformer.h.1.mlp.c_fc.weight"],
        start["model.transformer.h.1.mlp.c_fc.weight"],
    )
    assert not any(p.requires_grad for n, p in encoder.named_parameters() if n in loaded)


def test_word2vec_has_no_partial_mode_and_bad_modes_are_named(
    models: dict[str, Path], tasks: dict[str, TaskData]
) -> None:
    task = tasks["classify"]
    with pytest.raises(TransferError, match="word2vec has no layers"):
        run_transfer("word2vec", models["word2vec"], task, task.train, config("partial:1"))
    with pytest.raises(PretrainlabError, match="unknown transfer mode 'frozen:top'"):
        parse_mode("frozen:top")
    with pytest.raises(TransferError, match="choose k from 0 to 2"):
        run_transfer("bert", models["bert"], task, task.train, config("partial:5"))
    relabelled = Example(text_a="x", label="maybe")
    with pytest.raises(TransferError, match="label 'maybe' is not in the task's label set"):
        run_transfer("bert", models["bert"], task, (relabelled,), config("finetune"))
    assert parse_mode("frozen:layer=2") == Mode("frozen", layer=2)
    assert parse_mode("partial:2:frozen") == Mode("partial", k=2, freeze_loaded=True)


def test_scratch_word2vec_is_random_vectors_of_the_same_shape(models: dict[str, Path]) -> None:
    pretrained = load_encoder("word2vec", models["word2vec"])[0].table
    scratch = build_trainable("word2vec", models["word2vec"], Mode("scratch"))[0].table
    assert scratch.shape == pretrained.shape and not torch.equal(scratch, pretrained)


def test_frozen_leaves_the_encoder_bit_identical_and_learns_the_mix(
    monkeypatch: pytest.MonkeyPatch, models: dict[str, Path], tasks: dict[str, TaskData]
) -> None:
    encoders = []
    real = features.load_encoder  # frozen features load the encoder (pipelines/transfer/features)

    def keep(*args, **kwargs):  # the real loader; remembers the encoder it returns
        loaded = real(*args, **kwargs)
        encoders.append(loaded[0])
        return loaded

    monkeypatch.setattr(features, "load_encoder", keep)
    files = {p: p.read_bytes() for p in models["elmo"].rglob("*") if p.is_file()}
    task = tasks["tag"]
    result = run_transfer("elmo", models["elmo"], task, task.train, config("frozen", lr=5e-2))
    (encoder,) = encoders
    reference = _state(load_pretrained("elmo", models["elmo"])[0])
    assert all(torch.equal(v, reference[k]) for k, v in _state(encoder.model).items())
    assert files == {p: p.read_bytes() for p in models["elmo"].rglob("*") if p.is_file()}
    weights = np.asarray(result.mix_weights)
    assert weights.shape == (3,) and weights.sum() == pytest.approx(1.0, abs=1e-6)
    assert not np.allclose(weights, 1 / 3, atol=1e-4)  # learned, not left uniform
    single = run_transfer("elmo", models["elmo"], task, task.train, config("frozen:layer=1"))
    assert single.mix_weights is None


def test_the_encoder_runs_once_per_model_and_task(
    monkeypatch: pytest.MonkeyPatch,
    models: dict[str, Path],
    tasks: dict[str, TaskData],
    tmp_path: Path,
) -> None:
    calls = []
    real = features.extract_features

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(features, "extract_features", counting)
    task, cache = tasks["wic"], tmp_path / "features"
    first = run_transfer("bert", models["bert"], task, task.train, config("frozen"), cache)
    assert len(calls) == 3  # train, dev, test
    (stored,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert {p.name for p in stored.iterdir()} == {
        "train.npy",
        "dev.npy",
        "test.npy",
        "_manifest.json",
    }
    mtimes = {p: p.stat().st_mtime_ns for p in stored.iterdir()}
    # other budgets, seeds, rates, a single layer, the layer probes: no encoder run at all
    budget = task.train[:10]
    again = run_transfer(
        "bert", models["bert"], task, budget, config("frozen", seed=1, lr=1e-3), cache
    )
    run_transfer("bert", models["bert"], task, task.train, config("frozen:layer=2"), cache)
    probes = probe_with_control("bert", models["bert"], task, config("frozen"), cache)
    assert len(calls) == 3
    assert mtimes == {p: p.stat().st_mtime_ns for p in stored.iterdir()}
    assert again.train_examples == 10 and first.train_examples == 24
    assert sorted(probes) == [0, 1, 2] and all("accuracy" in m for m in probes.values())
    # the cached features are the ones a fresh extraction gives
    uncached = run_transfer("bert", models["bert"], task, task.train, config("frozen"))
    assert len(calls) == 6 and uncached.test == first.test


# ----------------------------------------------------------------------------- the step protocol


def test_plan_floor_ceiling_and_the_schedule_at_known_steps() -> None:
    cfg = config("finetune", passes=10, min_steps=20, max_steps=1000, evals=10, warmup=0.1)
    assert plan(cfg, 80) == Plan(steps=100, eval_every=2, warmup_steps=10)  # 10 passes of 10
    assert plan(cfg, 5).steps == 20  # the floor: 5 examples repeated
    assert plan(cfg, 8000).steps == 1000  # the ceiling
    schedule = plan(cfg, 80)
    factors = {s: lr_factor(s, schedule) for s in (1, 5, 10, 11, 56, 100)}
    assert factors == pytest.approx({1: 0.1, 5: 0.5, 10: 1.0, 11: 1.0, 56: 0.5, 100: 1 / 90})
    no_warmup = Plan(steps=4, eval_every=1, warmup_steps=0)
    assert [lr_factor(s, no_warmup) for s in range(1, 5)] == [1.0, 0.75, 0.5, 0.25]
    with pytest.raises(TransferError, match=r"min_steps \(5\) is below evals \(10\)"):
        run_transfer("bert", Path("."), TaskData("t", "classify", (), (), (), ("0",), "x"), (),
                     config("frozen", min_steps=5, evals=10))  # fmt: skip


def test_the_optimizer_follows_the_schedule_and_the_encoder_rate(
    monkeypatch: pytest.MonkeyPatch, models: dict[str, Path], tasks: dict[str, TaskData]
) -> None:
    rates: list[list[float]] = []
    real = transfer._optimizer

    def recording(*args, **kwargs):
        optimizer = real(*args, **kwargs)
        step = optimizer.step

        def logged_step(*a, **k):
            rates.append([g["lr"] for g in optimizer.param_groups])
            return step(*a, **k)

        optimizer.step = logged_step
        return optimizer

    monkeypatch.setattr(transfer, "_optimizer", recording)
    cfg = config("finetune", lr=1e-3, min_steps=10, max_steps=10, evals=10, warmup=0.2)
    task = tasks["classify"]
    result = run_transfer("gpt", models["gpt"], task, task.train, cfg)
    expected = [0.5, 1.0] + [(10 - s + 1) / 8 for s in range(3, 11)]
    head, loaded = [r[0] for r in rates], [r[1] for r in rates]  # head first, then loaded
    assert result.steps == len(rates) == 10
    assert head == pytest.approx([1e-3 * f for f in expected])
    assert loaded == pytest.approx([1e-4 * f for f in expected])


def _plateau_config(**overrides: object) -> TransferConfig:
    """word2vec frozen on the BIO task: 24 examples, 6 steps a pass, a fast learner."""
    fields = {"lr": 0.3, "batch_size": 4, "passes": 40, "min_steps": 20, "max_steps": 240,
              "evals": 10, "patience": 5}  # fmt: skip
    return config("frozen", **{**fields, **overrides})


def test_a_learnable_head_plateaus_stops_early_and_is_converged(
    monkeypatch: pytest.MonkeyPatch, models: dict[str, Path], tasks: dict[str, TaskData]
) -> None:
    task = tasks["tag"]
    states: list[tuple[str, dict[str, torch.Tensor]]] = []
    real = transfer._predict

    def snapshot(head, source, split, name, batch_size):  # the head's weights at every scoring
        states.append((name, _state(head)))
        return real(head, source, split, name, batch_size)

    monkeypatch.setattr(transfer, "_predict", snapshot)
    seen: list = []
    cfg = _plateau_config()
    result = run_transfer(
        "word2vec", models["word2vec"], task, task.train, cfg, on_eval=seen.append
    )
    assert seen == result.curve and len(result.curve) >= 10
    scores = [m.metrics["span_f1"] for m in result.curve]
    assert [m.step for m in result.curve] == [2 * i for i in range(1, len(scores) + 1)]
    assert result.best_eval == int(np.argmax(scores)) + 1  # the first best
    assert result.dev == result.curve[result.best_eval - 1].metrics
    # a plateau: stopped `patience` evaluations after the best, past the floor, before the end
    assert len(scores) == result.best_eval + 5 and 20 <= result.steps < 240
    assert result.steps == result.curve[-1].step and result.converged
    # test metrics come from the best evaluation's weights, restored
    dev_states = [s for name, s in states if name == "dev"]
    (test_state,) = [s for name, s in states if name == "test"]
    best_state, last_state = dev_states[result.best_eval - 1], dev_states[-1]
    assert all(torch.equal(test_state[k], v) for k, v in best_state.items())
    assert not all(torch.equal(test_state[k], v) for k, v in last_state.items())
    # deterministic: the same seed gives the same curve, test metrics and predictions
    monkeypatch.setattr(transfer, "_predict", real)
    twice = run_transfer("word2vec", models["word2vec"], task, task.train, cfg)
    assert twice.curve == result.curve and twice.test == result.test
    assert twice.test_predictions == result.test_predictions and twice.steps == result.steps


def test_a_run_cut_short_by_the_ceiling_is_not_converged(
    models: dict[str, Path], tasks: dict[str, TaskData]
) -> None:
    task = tasks["tag"]
    cfg = _plateau_config(lr=0.02, min_steps=10, max_steps=10)
    result = run_transfer("word2vec", models["word2vec"], task, task.train, cfg)
    assert result.steps == 10 and len(result.curve) == 10
    assert result.best_eval > 8 and not result.converged  # still improving at the end
    rising = [0.1 * i for i in range(10)]  # a new best at every evaluation
    assert not is_converged(rising, plateaued=False) and is_converged(rising, plateaued=True)
    # A late rise under 5% of the gain, or under one dev item's worth, is noise, not learning.
    flat = [0.0, 0.5, 0.8, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.92]
    assert is_converged(flat, plateaued=False)
    assert not is_converged([*flat[:-1], 0.99], plateaued=False)  # +0.09 of a 0.99 gain
    assert not is_converged([0.0, 0.5, 0.5, 0.5, 0.55], plateaued=False)  # 0.05 > 5% of 0.55
    assert is_converged([0.0, 0.5, 0.5, 0.5, 0.55], plateaued=False, min_delta=0.06)


def test_a_five_example_budget_still_trains_min_steps(
    models: dict[str, Path], tasks: dict[str, TaskData]
) -> None:
    task = tasks["tag"]
    cfg = _plateau_config(batch_size=8, passes=2, min_steps=12, max_steps=40, patience=2)
    result = run_transfer("word2vec", models["word2vec"], task, task.train[:5], cfg)
    assert result.train_examples == 5 and result.steps == 12  # 1 step a pass, 12 passes
    assert [m.step for m in result.curve] == list(range(1, 13))  # >= 10 evaluations


def test_probe_gives_every_layer_test_metrics(
    models: dict[str, Path], tasks: dict[str, TaskData]
) -> None:
    task = tasks["tag"]
    probes = probe_with_control("gpt", models["gpt"], task, config("frozen"))
    assert sorted(probes) == [0, 1, 2]
    assert all({"accuracy", "macro_f1", "span_f1"} <= set(m) for m in probes.values())


# ----------------------------------------------------------------------------- span F1


def test_span_f1_matches_seqeval_on_a_hand_made_example() -> None:
    true = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG", "I-ORG"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["O", "B-ORG", "B-ORG"]]
    # gold: PER 0-1, LOC 3, ORG 1-2; guessed: PER 0-1, ORG 1, ORG 2; one right of three each
    assert span_f1(true, pred) == pytest.approx(1 / 3)
    assert span_f1(true, true) == 1.0
    assert spans(["I-PER", "I-PER", "O"]) == {("PER", 0, 1)}  # I- after O starts a span
    assert spans(["B-PER", "I-LOC", "B-LOC"]) == {("PER", 0, 0), ("LOC", 1, 1), ("LOC", 2, 2)}
    assert span_f1([["O", "O"]], [["O", "O"]]) == 0.0
    assert metrics.is_bio(["O", "B-X", "I-X"]) and not metrics.is_bio(["IN", "NN", "DT"])
