"""GPT: config from our vocabulary, causal mask, per-layer states, learning, save/load, DDP."""

from __future__ import annotations

import importlib.util
import math
import socket
import sys
from pathlib import Path

import pytest
import torch

from pipelines.data.lm_data import unigram_entropy
from pipelines.models.gpt import (
    GPTError,
    build_gpt,
    causal_lm_loss,
    gpt_flops_per_token,
    gpt_layer_states,
    load_gpt,
    save_gpt,
)
from pipelines.training.loop import seed_everything, train
from pretrainlab.config import GPTSpec

sys.path.insert(0, str(Path(__file__).parent))  # spawned DDP ranks import tiny_lm by name
spec_ = importlib.util.spec_from_file_location("tiny_lm", Path(__file__).with_name("tiny_lm.py"))
tiny_lm = importlib.util.module_from_spec(spec_)
sys.modules["tiny_lm"] = tiny_lm
spec_.loader.exec_module(tiny_lm)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return tiny_lm.build_corpus(tmp_path_factory.mktemp("gpt-corpus"))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_config_uses_our_vocabulary_and_block_size():
    spec = GPTSpec(n_layer=2, n_head=2, n_embd=32, block_size=24)
    model = build_gpt(spec, vocab_size=300, pad_id=1, eos_id=0)
    assert model.config.n_positions == 24
    assert (model.config.bos_token_id, model.config.eos_token_id) == (0, 0)  # not 50256
    assert model.config.pad_token_id == 1
    assert model.transformer.wte.weight.shape == (300, 32)
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # tied


def test_init_is_seeded_by_the_spec():
    spec = GPTSpec(n_layer=1, n_embd=32, block_size=16)
    a, b = build_gpt(spec, 300, 1, 0), build_gpt(spec, 300, 1, 0)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    other = build_gpt(
        spec.model_copy(update={"loop": spec.loop.model_copy(update={"seed": 1})}), 300, 1, 0
    )
    assert not torch.equal(a.transformer.wte.weight, other.transformer.wte.weight)


def test_bad_specs_fail_with_the_field_to_change():
    with pytest.raises(GPTError, match="n_embd 30 is not divisible by n_head 4"):
        build_gpt(GPTSpec(n_head=4, n_embd=30), 300, 1, 0)
    with pytest.raises(GPTError, match="eos_id 500 is outside the vocabulary"):
        build_gpt(GPTSpec(), 300, 1, 500)


def test_causal_mask_later_tokens_never_change_earlier_logits():
    torch.manual_seed(0)
    model = build_gpt(GPTSpec(n_layer=2, n_head=2, n_embd=32, block_size=16), 300, 1, 0).eval()
    x = torch.randint(3, 300, (2, 16))
    t = 9
    y = x.clone()
    y[:, t] = (x[:, t] + 7) % 300  # change one token
    with torch.no_grad():
        a, b = model(x).logits, model(y).logits
    assert torch.allclose(a[:, :t], b[:, :t], atol=1e-6, rtol=0)  # the past cannot see it
    assert not torch.allclose(a[:, t:], b[:, t:], atol=1e-3)  # the token and the future do


def test_layer_states_embeddings_then_every_block():
    torch.manual_seed(0)
    spec = GPTSpec(n_layer=2, n_head=2, n_embd=32, block_size=16)
    model = build_gpt(spec, 300, 1, 0).eval()
    x = torch.randint(3, 300, (3, 16))
    with torch.no_grad():
        states = gpt_layer_states(model, x)
        embeddings = model.transformer.wte(x) + model.transformer.wpe(torch.arange(16))
        last = model.transformer(x).last_hidden_state
    assert len(states) == spec.n_layer + 1
    assert all(s.shape == (3, 16, 32) for s in states)
    assert torch.allclose(states[0], embeddings, atol=1e-6)
    assert torch.allclose(states[-1], last, atol=1e-6)
    assert not torch.allclose(states[1], states[0], atol=1e-3)


def test_sequences_beyond_the_position_table_are_refused():
    model = build_gpt(GPTSpec(n_layer=1, n_embd=32, block_size=16), 300, 1, 0)
    with pytest.raises(GPTError, match="17 tokens is longer than this GPT's position table"):
        gpt_layer_states(model, torch.zeros(1, 17, dtype=torch.long))


def test_loss_decreases_on_real_text_to_the_unigram_plateau(corpus, tmp_path):
    spec = tiny_lm.tiny_gpt_spec(
        {"max_steps": 60, "eval_every": 60, "log_every": 10, "checkpoint_every": 60},
        n_layer=1,
        n_embd=64,
        block_size=32,
        dropout=0.0,
    )
    model, objective = tiny_lm.build_model_and_objective(corpus, spec, tmp_path / "cache")
    with torch.no_grad():
        initial = causal_lm_loss(model, next(iter(objective.valid_batches(1)))["input_ids"])
    logged: list[tuple[int, dict]] = []
    result = train(
        model, objective, spec.loop, tmp_path / "ckpt", lambda m, s: logged.append((s, m))
    )
    losses = [m["loss"] for _, m in logged if "loss" in m]
    entropy = unigram_entropy(corpus["tokens_dir"], "valid", corpus["vocab_size"], corpus["eos_id"])
    assert initial.item() == pytest.approx(math.log(corpus["vocab_size"]), abs=0.3)
    assert losses[-1] < losses[0] - 0.5
    assert result.last_valid_loss < initial.item() - 1.0
    # 60 tiny steps reach about the unigram plateau: the two numbers are on the same footing
    assert abs(result.last_valid_loss - entropy) < 0.3
    assert result.stopped_reason == "max_steps"
    assert result.flops == pytest.approx(objective.flops_per_token(model) * result.tokens_seen)


def test_flops_per_token_counts_weights_and_attention():
    spec = GPTSpec(n_layer=2, n_head=2, n_embd=32, block_size=16)
    model = build_gpt(spec, 300, 1, 0)
    n = sum(p.numel() for p in model.parameters()) - 16 * 32  # minus the position table
    assert gpt_flops_per_token(model, 16) == 6 * n + 12 * 2 * 32 * 16


def test_save_and_load_round_trip(corpus, tmp_path):
    torch.manual_seed(0)
    model = build_gpt(
        GPTSpec(n_layer=1, n_embd=32, block_size=16),
        corpus["vocab_size"],
        corpus["pad_id"],
        corpus["eos_id"],
    ).eval()
    out = save_gpt(model, corpus["tokenizer_dir"], tmp_path / "gpt")
    assert (out / "model.safetensors").is_file() and (
        out / "tokenizer" / "tokenizer.json"
    ).is_file()
    loaded, tokenizer = load_gpt(out)
    ids = tokenizer(
        "Hundreds of people have been forced to vacate their homes", return_tensors="pt"
    )["input_ids"][:, :16]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert tokenizer.eos_token_id == loaded.config.eos_token_id == corpus["eos_id"]
    assert not loaded.training


def test_load_refuses_a_directory_that_is_not_a_saved_gpt(tmp_path):
    with pytest.raises(GPTError, match="not a saved GPT"):
        load_gpt(tmp_path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_processes_match_one_process(corpus, tmp_path):
    """Same global batch (8) in 1 process vs 2 gloo ranks x 2 micro-batches of 2."""
    loop = {"max_steps": 4, "batch_size": 8, "eval_every": 100, "checkpoint_every": 100}
    model_args = {"n_layer": 1, "n_embd": 32, "block_size": 16, "dropout": 0.0}
    spec = tiny_lm.tiny_gpt_spec(loop, **model_args)
    single, objective = tiny_lm.build_model_and_objective(corpus, spec, tmp_path / "cache")
    train(single, objective, spec.loop, tmp_path / "single", lambda m, s: None)

    run = {
        "corpus": {k: v for k, v in corpus.items() if k != "rows"},
        "loop": {**loop, "grad_accum": 2},
        "model": model_args,
        "cache_dir": str(tmp_path / "cache"),
        "checkpoint_dir": str(tmp_path / "ddp"),
        "weights_out": str(tmp_path / "ddp.pt"),
    }
    torch.multiprocessing.spawn(tiny_lm.ddp_worker, args=(2, _free_port(), run), nprocs=2)
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    seed_everything(spec.loop.seed)
    start = build_gpt(spec, corpus["vocab_size"], corpus["pad_id"], corpus["eos_id"])
    moved = 0.0
    for name, value in single.state_dict().items():
        assert torch.allclose(value, ddp[name], atol=1e-5, rtol=0), name
        moved = max(moved, (value - start.state_dict()[name]).abs().max().item())
    assert moved > 1e-3  # the weights did train
    assert (tmp_path / "ddp" / "checkpoint.pt").is_file()  # rank 0 checkpointed
