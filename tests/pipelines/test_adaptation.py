"""Domain adaptation (ULMFiT's middle stage): the task's texts (never its labels) become token
shards, and each language model continues its own objective on them from its weights."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

import pipelines.models.elmo as elmo
from pipelines.data.task_data import Example, TaskData
from pipelines.data.tokenizer_training import (
    TOKENIZER_SUBDIR,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)
from pipelines.models.hf_import import import_checkpoint, inspect_checkpoint
from pipelines.models.saved import load_pretrained
from pipelines.training.adaptation import (
    AdaptationError,
    AdaptJob,
    adapt,
    task_texts,
    write_task_shards,
)
from pretrainlab.config import ELMoSpec, SpecError, WordLevelSpec, spec_from_dict
from tests.pipelines.hf_checkpoints import save_bert_checkpoint, save_gpt2_checkpoint, sentences

LOOP = {"batch_size": 4, "eval_batches": 1, "warmup_steps": 1, "log_every": 1, "device": "cpu"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _spec():
    return spec_from_dict(
        {
            "corpus": {"sources": [{"dataset": "lee-news"}]},
            "pretrain": {
                "gpt": {"block_size": 32, "loop": LOOP},
                "bert": {"max_seq_len": 32, "loop": LOOP},
                "elmo": {"embedding_dim": 8, "hidden_dim": 16, "seq_len": 16, "loop": LOOP},
            },
        }
    )


def _save_elmo(directory: Path) -> Path:
    """A tiny ELMo (random weights) with a word-level tokenizer, in the lab's model layout."""
    save_tokenizer(
        train_tokenizer(WordLevelSpec(vocab_size=2000, min_count=1), sentences()),
        directory / TOKENIZER_SUBDIR,
    )
    tok = load_tokenizer(directory / TOKENIZER_SUBDIR)
    specials = {"pad": tok.pad_token_id, "bos": tok.bos_token_id, "eos": tok.eos_token_id}
    config = elmo.config_from_spec(
        ELMoSpec(embedding_dim=8, hidden_dim=16, adaptive_cutoffs=[100]),
        len(tok),
        tok.pad_token_id,
        specials,
    )
    torch.manual_seed(7)
    elmo.save_elmo(elmo.ELMo(config), directory)
    return directory


@pytest.fixture(scope="module")
def parents(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """architecture -> a model directory in the lab's layout."""
    root = tmp_path_factory.mktemp("parents")
    bert = inspect_checkpoint(save_bert_checkpoint(root / "hf-bert"))
    gpt = inspect_checkpoint(save_gpt2_checkpoint(root / "hf-gpt2"))
    import_checkpoint(bert, root / "bert")
    import_checkpoint(gpt, root / "gpt")
    return {"bert": root / "bert", "gpt": root / "gpt", "elmo": _save_elmo(root / "elmo")}


@pytest.fixture(scope="module")
def task() -> TaskData:
    short = [s for s in sentences() if 5 <= len(s.split()) <= 20]
    examples = [
        Example(text_a=s, text_b=short[i + 1], label="LABEL_POSITIVE" if i % 2 else "LABEL_NEG")
        for i, s in enumerate(short[:80])
    ]
    return TaskData(
        "paraphrase",
        "pair",
        tuple(examples[:60]),
        tuple(examples[60:70]),
        tuple(examples[70:80]),
        ("LABEL_NEG", "LABEL_POSITIVE"),
        "fp",
    )


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_texts_come_from_every_split_without_labels(task: TaskData) -> None:
    texts = task_texts(task)
    assert task.test[-1].text_b in texts and task.dev[0].text_a in texts
    assert len(texts) == len(set(texts))  # a text shared by two pairs is kept once
    assert not any("LABEL_" in text for text in texts)
    tagged = TaskData(
        "pos", "tag", (Example(words=("The", "cat"), tags=("DT", "NN")),), (), (), ("DT",), "f"
    )
    assert task_texts(tagged) == ("The cat",)


def test_shards_hold_texts_in_documents_with_a_held_out_share(
    task: TaskData, parents: dict[str, Path], tmp_path: Path
) -> None:
    texts = task_texts(task)
    stats = write_task_shards(texts, parents["gpt"] / TOKENIZER_SUBDIR, tmp_path, 64)
    table = pq.read_table(tmp_path / "part-00000.parquet").to_pylist()
    assert stats["sentences"] == len(table) == len(texts)
    assert {row["split"] for row in table} == {"train", "valid"}
    docs = {row["doc_id"] for row in table}
    assert stats["documents"] == len(docs) and max(row["sent_idx"] for row in table) == 7
    again = tmp_path / "again"
    write_task_shards(texts, parents["gpt"] / TOKENIZER_SUBDIR, again, 64)
    assert pq.read_table(again / "part-00000.parquet").equals(
        pq.read_table(tmp_path / "part-00000.parquet")
    )


@pytest.mark.parametrize("arch", ["gpt", "bert", "elmo"])
def test_adaptation_moves_the_weights_from_the_parent(
    arch: str, task: TaskData, parents: dict[str, Path], tmp_path: Path
) -> None:
    job = AdaptJob(arch, parents[arch], task_texts(task), tmp_path / "work", tmp_path / "out", 3)
    logged: list[int] = []
    summary = adapt(_spec(), job, lambda metrics, step: logged.append(step))
    assert summary["steps"] == 3 and summary["stopped_reason"] == "max_steps"
    assert summary["parent_valid_loss"] > 0 and summary["valid_loss"] > 0
    assert summary["data_texts"] == len(task_texts(task)) and logged
    parent = load_pretrained(arch, parents[arch])
    child = load_pretrained(arch, tmp_path / "out")
    before, after = _weights(parent[0]), _weights(child[0])
    assert before.keys() == after.keys()
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert moved, "adaptation left every weight where it was"
    assert len(child[1]) == len(parent[1])  # the parent's tokenizer, unchanged
    # Continued, not restarted: the weights stay near the parent's.
    drift = max((before[k] - after[k]).abs().max().item() for k in moved)
    assert drift < 0.1


def test_too_little_text_is_a_clear_error(parents: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(AdaptationError, match="add text to the task"):
        write_task_shards(("one text", "two texts"), parents["gpt"] / TOKENIZER_SUBDIR, tmp_path, 8)


def test_word2vec_cannot_be_adapted(task: TaskData, tmp_path: Path) -> None:
    job = AdaptJob("word2vec", tmp_path, task_texts(task), tmp_path / "w", tmp_path / "o", 3)
    with pytest.raises(AdaptationError, match="no language model"):
        adapt(_spec(), job, lambda metrics, step: None)


def test_a_killed_adaptation_resumes_to_the_same_weights(
    task: TaskData, parents: dict[str, Path], tmp_path: Path
) -> None:
    texts = task_texts(task)
    whole = AdaptJob("gpt", parents["gpt"], texts, tmp_path / "w1", tmp_path / "o1", 4)
    adapt(_spec(), whole, lambda metrics, step: None)
    killed = AdaptJob("gpt", parents["gpt"], texts, tmp_path / "w2", tmp_path / "o2", 4)
    stopped = adapt(_spec(), killed, lambda metrics, step: None, stop_at_step=2)
    assert stopped["stopped_reason"] == "stop_at_step" and stopped["steps"] == 2
    resumed = adapt(_spec(), killed, lambda metrics, step: None)
    assert resumed["resumed_from"] == 2 and resumed["steps"] == 4
    assert resumed["parent_valid_loss"] == pytest.approx(stopped["parent_valid_loss"])
    one = _weights(load_pretrained("gpt", tmp_path / "o1")[0])
    two = _weights(load_pretrained("gpt", tmp_path / "o2")[0])
    assert all(torch.allclose(one[k], two[k], atol=1e-6) for k in one)


def test_the_spec_refuses_adapting_a_model_nobody_makes() -> None:
    base = {"corpus": {"sources": [{"dataset": "lee-news"}]}}
    with pytest.raises(SpecError, match=r"neither in pretrain\.families"):
        spec_from_dict(
            {
                **base,
                "pretrain": {"families": ["gpt"]},
                "transfer": {"adapt": {"families": ["bert"]}},
            }
        )
    with pytest.raises(SpecError, match="no language model to continue"):
        spec_from_dict({**base, "transfer": {"adapt": {"families": ["word2vec"]}}})
    spec = spec_from_dict(
        {
            **base,
            "pretrain": {"families": ["gpt"]},
            "transfer": {
                "checkpoints": [{"name": "mine", "path": "x"}],
                "adapt": {"families": ["gpt", "mine"]},
            },
        }
    )
    assert spec.transfer.adapt.max_steps == 50 and spec.transfer.adapt.lr is None


def test_an_adaptation_that_raised_the_held_out_loss_says_it_overfit() -> None:
    from pipelines.training.adaptation import overfit_warning

    summary = {"parent_valid_loss": 6.214, "valid_loss": 6.407, "steps": 200,
               "tokens_seen": 409_600, "data_tokens_train": 22_509}
    warning = overfit_warning(summary)
    assert warning is not None
    assert "6.214 -> 6.407" in warning and "~18 passes" in warning
    assert "transfer.adapt.max_steps" in warning
    assert overfit_warning({**summary, "valid_loss": 6.0}) is None
