"""Probes with controls (Hewitt & Liang 2019): a fixed random label per word type, scored on
seen types, selectivity per layer; and the majority / shuffled-label floor where a per-type
control is undefined. A real (untrained) tiny BERT checkpoint supplies the features."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pipelines.data.task_data import Example, TaskData
from pipelines.models.hf_import import import_checkpoint, inspect_checkpoint
from pipelines.transfer import probes
from pipelines.transfer.protocol import TransferConfig
from tests.pipelines.hf_checkpoints import save_bert_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

POS = {"cat": "N", "dog": "N", "bird": "N", "runs": "V", "sees": "V", "red": "A", "the": "D"}


def _task(kind: str, examples: list[Example], labels: set[str], test: list[Example]) -> TaskData:
    digest = hashlib.sha256(repr(examples + test).encode()).hexdigest()[:16]
    n = len(examples)
    return TaskData("t", kind, tuple(examples[: n * 3 // 4]), tuple(examples[n * 3 // 4 :]),
                    tuple(test), tuple(sorted(labels)), digest)  # fmt: skip


def _sentence(rng: np.random.Generator, words: list[str]) -> Example:
    chosen = tuple(rng.choice(words, size=5))
    return Example(words=chosen, tags=tuple(POS.get(w, "N") for w in chosen))


@pytest.fixture(scope="module")
def tag_task() -> TaskData:
    rng = np.random.default_rng(0)
    known = sorted(POS)
    examples = [_sentence(rng, known) for _ in range(48)]
    test = [_sentence(rng, known) for _ in range(12)]
    test.append(Example(words=("zebra", "runs"), tags=("N", "V")))  # an unseen type
    return _task("tag", examples, set(POS.values()), test)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("probe-model")
    info = inspect_checkpoint(save_bert_checkpoint(root / "ckpt"))
    import_checkpoint(info, root / "imported")
    return root / "imported"


def _config(seed: int = 0) -> TransferConfig:
    return TransferConfig(
        mode="frozen", lr=5e-2, batch_size=8, max_len=32, seed=seed, passes=2, min_steps=120,
        max_steps=120, evals=10, patience=50, warmup=0.1, encoder_lr_scale=1.0,
    )  # fmt: skip


def test_control_labels_are_fixed_per_type_and_follow_the_tag_distribution() -> None:
    words = [f"w{i}" for i in range(4000)]
    tags = ["A"] * 7 + ["B"] * 3  # P(A) = 0.7
    examples = [Example(words=tuple(words[i : i + 10]), tags=tuple(tags)) for i in range(0, 4000,
                                                                                          10)]
    task = TaskData("t", "tag", tuple(examples), tuple(examples[:5]), tuple(examples[5:10]),
                    ("A", "B"), "fp")  # fmt: skip
    control = probes.control_task(task)
    by_type: dict[str, set[str]] = {}
    for split in ("train", "dev", "test"):
        for ex in getattr(control, split):
            for w, t in zip(ex.words, ex.tags, strict=True):
                by_type.setdefault(w, set()).add(t)
    assert all(len(t) == 1 for t in by_type.values())  # one label per type, in every split
    share = Counter(t for (t,) in by_type.values())["A"] / len(by_type)
    assert share == pytest.approx(0.7, abs=0.03)
    again = probes.control_task(task)  # fixed seed: the same labels every time
    assert again.train == control.train and control.fingerprint != task.fingerprint


def test_seen_mask_excludes_types_train_never_had(tag_task: TaskData) -> None:
    mask = probes.seen_mask(tag_task)
    assert mask.sum() == len(mask) - 1 and not mask[-2]  # "zebra" only


def test_control_probe_fits_its_random_labels_and_selectivity_is_per_layer(
    model: Path, tag_task: TaskData, tmp_path: Path
) -> None:
    found = probes.probe_with_control("bert", model, tag_task, _config(), tmp_path / "features")
    assert sorted(found) == [0, 1, 2]
    assert [found[layer]["relative_depth"] for layer in found] == [0.0, 0.5, 1.0]
    for layer, metrics in found.items():
        # a handful of types in a 16-wide layer: memorising a random label per type is easy
        assert metrics["control_accuracy"] >= 0.9, (layer, metrics)
        assert metrics["selectivity"] == pytest.approx(
            metrics["seen_accuracy"] - metrics["control_accuracy"]
        )
        assert metrics["selectivity"] < metrics["seen_accuracy"]  # memorisation discounted
        assert metrics["seen_tokens"] == probes.seen_mask(tag_task).sum()
    other_seed = probes.probe_with_control("bert", model, tag_task, _config(seed=1),
                                           tmp_path / "features")  # fmt: skip
    assert set(other_seed) == set(found)  # every seed covers every layer


def test_classification_probe_reports_its_floor(model: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    texts = [" ".join(rng.choice(sorted(POS), size=4)) for _ in range(60)]
    examples = [Example(text_a=t, label="1" if "cat" in t else "0") for t in texts]
    task = _task("classify", examples[:48], {"0", "1"}, examples[48:])
    found = probes.probe_with_control("bert", model, task, _config(), tmp_path / "features")
    majority = probes.majority_accuracy(task)
    for metrics in found.values():
        assert "control_accuracy" not in metrics and metrics["majority_accuracy"] == majority
        assert metrics["floor"] == max(majority, metrics["shuffled_accuracy"])
        assert metrics["above_floor"] == pytest.approx(metrics["accuracy"] - metrics["floor"])
    shuffled = probes.shuffled_task(task)
    assert Counter(e.label for e in shuffled.train) == Counter(e.label for e in task.train)
    assert shuffled.test == task.test and shuffled.train != task.train
