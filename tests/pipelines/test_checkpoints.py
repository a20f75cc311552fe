"""A user's own Hugging Face checkpoint joins the comparison: import, every mode, probes,
polysemy, and clear errors for directories the lab cannot run."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertModel, GPT2LMHeadModel

from pipelines.data.task_data import Example, TaskData
from pipelines.models.hf_import import CheckpointError, import_checkpoint, inspect_checkpoint
from pipelines.models.saved import load_pretrained
from pipelines.transfer.heads import family_inputs, load_encoder
from pipelines.transfer.probes import probe_with_control
from pipelines.transfer.runs import TransferConfig, polysemy_similarity, run_transfer
from tests.pipelines.hf_checkpoints import save_bert_checkpoint, save_gpt2_checkpoint, sentences

MODES = ("scratch", "frozen", "finetune", "partial:1")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {
        "bert": save_bert_checkpoint(root / "my-bert"),
        "gpt": save_gpt2_checkpoint(root / "my-gpt2"),
    }


@pytest.fixture(scope="module")
def imported(checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("imported")
    return {
        arch: (root / arch, import_checkpoint(inspect_checkpoint(path), root / arch))
        for arch, path in checkpoints.items()
    }


def _task(name: str, kind: str, examples: list[Example], labels: set[str]) -> TaskData:
    digest = hashlib.sha256(repr(examples).encode()).hexdigest()[:16]
    return TaskData(
        name,
        kind,
        tuple(examples[:24]),
        tuple(examples[24:32]),
        tuple(examples[32:40]),
        tuple(sorted(labels)),
        digest,
    )


@pytest.fixture(scope="module")
def tasks() -> dict[str, TaskData]:
    short = [s for s in sentences() if 5 <= len(s.split()) <= 20]
    classify = [Example(text_a=s, label=str(int(" the " in s))) for s in short[:40]]
    tags = [
        Example(
            words=tuple(s.split()),
            tags=tuple("D" if w.lower() == "the" else "X" for w in s.split()),
        )
        for s in short[:40]
    ]
    wic = []
    holders = [s for s in short if " said " in s]
    for i in range(40):
        a, b = holders[i % len(holders)], holders[(i + 1) % len(holders)]
        span_a = (a.index(" said ") + 1, a.index(" said ") + 5)
        span_b = (b.index(" said ") + 1, b.index(" said ") + 5)
        wic.append(Example(text_a=a, text_b=b, span_a=span_a, span_b=span_b, label=str(i % 2)))
    return {
        "classify": _task("polarity", "classify", classify, {"0", "1"}),
        "tag": _task("dets", "tag", tags, {"D", "X"}),
        "wic": _task("wic", "wic", wic, {"0", "1"}),
    }


def _config(mode: str) -> TransferConfig:
    return TransferConfig(
        mode=mode, lr=1e-2, batch_size=8, max_len=32, seed=0, passes=2, min_steps=6,
        max_steps=6, evals=2, patience=2, warmup=0.1, encoder_lr_scale=0.1,
    )  # fmt: skip


# ----------------------------------------------------------------------------- import


def test_architecture_comes_from_model_type(checkpoints: dict[str, Path]) -> None:
    bert, gpt = inspect_checkpoint(checkpoints["bert"]), inspect_checkpoint(checkpoints["gpt"])
    assert (bert.model_type, bert.architecture) == ("bert", "bert")
    assert (gpt.model_type, gpt.architecture) == ("gpt2", "gpt")
    assert bert.content_hash != gpt.content_hash
    assert inspect_checkpoint(checkpoints["bert"]).content_hash == bert.content_hash


def test_content_hash_follows_the_bytes(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    copy = shutil.copytree(checkpoints["bert"], tmp_path / "copy")
    assert (
        inspect_checkpoint(copy).content_hash
        == inspect_checkpoint(checkpoints["bert"]).content_hash
    )
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "hidden_dropout_prob": 0.2}))
    assert (
        inspect_checkpoint(copy).content_hash
        != inspect_checkpoint(checkpoints["bert"]).content_hash
    )


def test_imported_bert_has_the_checkpoint_weights_and_tokenizer(
    checkpoints: dict[str, Path], imported: dict
) -> None:
    directory, summary = imported["bert"]
    assert summary["architecture"] == "bert" and summary["source_path"] == str(checkpoints["bert"])
    original = BertModel.from_pretrained(checkpoints["bert"]).state_dict()
    model, tokenizer = load_pretrained("bert", directory)
    loaded = model.bert.state_dict()
    for name in ("embeddings.word_embeddings.weight", "encoder.layer.1.output.dense.weight"):
        assert torch.equal(loaded[name], original[name]), name
    hf = AutoTokenizer.from_pretrained(checkpoints["bert"])
    text = "The prime minister said on Tuesday"
    assert tokenizer(text)["input_ids"] == hf(text)["input_ids"]
    assert tokenizer.cls_token == "[CLS]" and tokenizer.mask_token == "[MASK]"


def test_gpt2_without_pad_or_delimiter_reads_pairs_with_end_of_text(
    checkpoints: dict[str, Path], imported: dict
) -> None:
    directory, summary = imported["gpt"]
    assert summary["special_tokens"]["sep_token"] == "<|endoftext|>"
    model, tokenizer = load_pretrained("gpt", directory)
    original = GPT2LMHeadModel.from_pretrained(checkpoints["gpt"]).state_dict()
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())
    inputs = family_inputs("gpt", tokenizer, 32, model.config.n_positions)
    assert inputs.middle == (tokenizer.eos_token_id,) and inputs.joins_pairs


# ----------------------------------------------------------------------------- transfer


@pytest.mark.parametrize("arch", ["bert", "gpt"])
def test_every_mode_runs_on_a_checkpoint(arch: str, imported: dict, tasks: dict) -> None:
    directory, _ = imported[arch]
    for mode in MODES:
        result = run_transfer(
            arch, directory, tasks["classify"], tasks["classify"].train, _config(mode)
        )
        assert 0.0 <= result.test["accuracy"] <= 1.0, mode
        assert [p.step for p in result.curve] == [3, 6][: len(result.curve)], mode
    tagged = run_transfer(arch, directory, tasks["tag"], tasks["tag"].train, _config("frozen"))
    assert tagged.mix_weights is not None and sum(tagged.mix_weights) == pytest.approx(1.0)


def test_partial_loads_the_checkpoints_lower_layer_only(imported: dict) -> None:
    directory, _ = imported["bert"]
    pretrained, _, _ = load_encoder("bert", directory)
    torch.manual_seed(0)
    partial, _, loaded = load_encoder("bert", directory, load_blocks=1)
    weights, fresh = pretrained.state_dict(), partial.state_dict()
    name = "model.bert.encoder.layer.{}.attention.self.query.weight"
    assert torch.equal(fresh[name.format(0)], weights[name.format(0)])
    assert not torch.equal(fresh[name.format(1)], weights[name.format(1)])
    assert "model.bert.encoder.layer.0." in loaded and "model.bert.encoder.layer.1." not in loaded


@pytest.mark.parametrize("arch", ["bert", "gpt"])
def test_probes_and_polysemy_cover_every_layer(arch: str, imported: dict, tasks: dict) -> None:
    directory, _ = imported[arch]
    probes = probe_with_control(arch, directory, tasks["tag"], _config("frozen"))
    assert sorted(probes) == [0, 1, 2]
    sims = polysemy_similarity(arch, directory, tasks["wic"], 32)
    assert sorted(sims) == [0, 1, 2]
    assert all(-1.0 <= s["same_sense_sim"] <= 1.0 for s in sims.values())


# ----------------------------------------------------------------------------- bad input


def test_wrong_model_type_names_the_directory_and_what_is_supported(tmp_path: Path) -> None:
    bad = tmp_path / "t5-model"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "t5"}))
    (bad / "tokenizer.json").write_text("{}")
    with pytest.raises(CheckpointError) as error:
        inspect_checkpoint(bad)
    message = str(error.value)
    assert str(bad) in message and "'t5'" in message and "bert" in message and "gpt2" in message


def test_a_checkpoint_without_tokenizer_is_refused(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    bare = tmp_path / "weights-only"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy2(checkpoints["bert"] / name, bare / name)
    with pytest.raises(CheckpointError, match="no tokenizer files") as error:
        inspect_checkpoint(bare)
    assert str(bare) in str(error.value) and "save_pretrained" in str(error.value)


def test_missing_directory_and_config(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such directory"):
        inspect_checkpoint(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        inspect_checkpoint(tmp_path / "empty")


def test_a_tokenizer_of_another_model_is_refused(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    mixed = shutil.copytree(checkpoints["bert"], tmp_path / "mixed")
    small = save_bert_checkpoint(tmp_path / "small", vocab_size=120)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(small / name, mixed / name)
    with pytest.raises(CheckpointError, match="token embeddings"):
        import_checkpoint(inspect_checkpoint(mixed), tmp_path / "out")


def test_an_older_bert_with_only_vocab_txt_imports(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    """Original BERT releases ship vocab.txt, no tokenizer.json: transformers builds the fast
    tokenizer from it, and the import keeps that tokenizer's tokenizer.json."""
    old = tmp_path / "old-bert"
    old.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy2(checkpoints["bert"] / name, old / name)
    vocab = json.loads((checkpoints["bert"] / "tokenizer.json").read_text())["model"]["vocab"]
    (old / "vocab.txt").write_text("\n".join(sorted(vocab, key=vocab.get)) + "\n")
    (old / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True})
    )
    summary = import_checkpoint(inspect_checkpoint(old), tmp_path / "imported")
    assert summary["vocab_size"] == len(vocab)
    _, tokenizer = load_pretrained("bert", tmp_path / "imported")
    assert len(tokenizer) == len(vocab) and tokenizer.cls_token_id == vocab["[CLS]"]
    assert tokenizer.unk_token_id not in tokenizer("the minister said")["input_ids"]
