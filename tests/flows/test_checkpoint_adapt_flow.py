"""The transfer flow with a user's own Hugging Face checkpoint and domain adaptation: the
checkpoint is registered and compared in every mode; its adapted copy is a new version of the
same registered model with its parent in the tags; dev rows carry optimizer steps; a rerun is
answered from the cache."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from flows.transfer import transfer
from pipelines.models.saved import load_pretrained
from pretrainlab.config import Spec, spec_from_dict
from storage import catalog
from tests.pipelines.hf_checkpoints import save_bert_checkpoint, sentences

pytestmark = pytest.mark.usefixtures("prefect_harness")
MODES = ["scratch", "frozen", "finetune", "partial:1"]


def _spec(tmp_path: Path) -> Spec:
    short = [s for s in sentences() if 5 <= len(s.split()) <= 20][:90]
    task_file = tmp_path / "has_the.csv"
    with task_file.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows([s, "yes" if " the " in s else "no"] for s in short)
    checkpoint = save_bert_checkpoint(tmp_path / "my-bert")
    return spec_from_dict(
        {
            "experiment": "ckpt",
            "store": str(tmp_path / "store"),
            "corpus": {"sources": [{"dataset": "lee-news"}]},
            "pretrain": {
                "bert": {"max_seq_len": 32, "loop": {"batch_size": 4, "eval_batches": 1}},
            },
            "transfer": {
                "tasks": [{"name": "has-the", "kind": "classify", "train": str(task_file)}],
                "checkpoints": [{"name": "mybert", "path": str(checkpoint)}],
                "adapt": {"families": ["mybert"], "max_steps": 3},
                "modes": MODES,
                "budgets": ["all"],
                "seeds": [0],
                "lrs": {"scratch": [1e-3], "frozen": [1e-2], "finetune": [1e-3], "partial": [1e-3]},
                "passes": 2,
                "min_steps": 10,
                "max_steps": 20,
                "evals": 10,
                "batch_size": 8,
                "max_len": 32,
                "probe_tasks": ["has-the"],
            },
        }
    )


def test_checkpoint_and_its_adapted_copy_join_every_mode(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    spec = _spec(tmp_path)
    result = transfer(spec, {})
    store = Path(spec.store)

    def sql(text: str) -> list[dict]:
        return catalog.query(store, text, tracking_uri=spec.tracking_uri()).to_pylist()

    rows = sql(
        "select family, mode, model_version, count(*) as n from results "
        "where split = 'test' and metric = 'accuracy' group by all order by all"
    )
    modes = {(r["family"], r["mode"]): r["model_version"] for r in rows}
    for mode in MODES:
        assert modes[("mybert", mode)] == "1"
        if mode != "scratch":  # an adapted model's scratch run would repeat its parent's
            assert modes[("mybert+adapt", mode)] == "2"
    assert ("mybert+adapt", "scratch") not in modes
    assert modes[("mybert", "probe")] == "1" and modes[("mybert+adapt", "probe")] == "2"

    # Registry: v1 is the imported checkpoint, v2 its adaptation with the parent recorded.
    client = MlflowClient(spec.tracking_uri())
    v1 = client.get_model_version("ckpt-mybert", "1")
    v2 = client.get_model_version("ckpt-mybert", "2")
    assert v1.tags["source_path"] == str((tmp_path / "my-bert").resolve())
    assert len(v1.tags["content_hash"]) == 16 and v1.tags["architecture"] == "bert"
    assert v2.tags["parent_version"] == "1" and v2.tags["parent_run_id"] == v1.run_id
    assert v2.tags["adapted_on"] == "has-the"
    assert str(client.get_model_version_by_alias("ckpt-mybert", "adapted-has-the").version) == "2"
    assert str(client.get_model_version_by_alias("ckpt-mybert", "candidate").version) == "1"

    # The adapted weights moved away from the checkpoint's.
    models = Path(spec.store) / "models"
    (parent_dir,) = (models / "mybert").glob("*/model")
    (child_dir,) = (models / "mybert+adapt").glob("*/model")
    parent, child = load_pretrained("bert", parent_dir)[0], load_pretrained("bert", child_dir)[0]
    name = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(parent.state_dict()[name], child.state_dict()[name])

    # Dev curves vs optimizer steps: one `step` row per dev epoch, increasing.
    steps = sql(
        "select run_id, list(value order by epoch) as steps, count(*) as n from results "
        "where split = 'dev' and metric = 'step' group by run_id"
    )
    epochs = sql(
        "select run_id, count(*) as n from results where split = 'dev' and metric = 'accuracy' "
        "and layer is null and family not in ('baseline') group by run_id"
    )
    assert {r["run_id"]: r["n"] for r in steps} == {r["run_id"]: r["n"] for r in epochs}
    assert all(r["steps"] == sorted(r["steps"]) and r["steps"][0] > 0 for r in steps)

    # Unchanged rerun: no new import, no new adaptation, every result reused.
    again = transfer(spec, {})
    assert again["cache_hit"] and again["runs"] == result["runs"]
    assert len(client.search_model_versions("name = 'ckpt-mybert'")) == 2
