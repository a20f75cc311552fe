"""Ingest -> tokenize -> pretrain on real text, with a real MLflow registry and DuckDB catalog."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

import pipelines.models.saved as saved
import pipelines.training.pretraining as pretraining
from flows.pipeline import pipeline, plan
from flows.transfer import compared_models
from pipelines.report.document import NOT_MEASURED
from pipelines.report.report import build_report
from pretrainlab.config import Spec, spec_from_dict
from storage import catalog, registry, tracking
from storage.layout import Layout
from storage.registry import ModelRef
from tasks.pretrain import model_key
from tests.flows.tiny_specs import tiny_spec_dict
from tests.storage.lab_store import Lab

pytestmark = pytest.mark.usefixtures("prefect_harness")


def tiny_spec(tmp_path: Path, **pretrain: Any) -> Spec:
    data = tiny_spec_dict(tmp_path, "pretest", [{"dataset": "lee-news", "limit": 120}])
    data["pretrain"] |= pretrain
    return spec_from_dict(data)


def test_pretrain_registers_every_family_and_caches(tmp_path: Path) -> None:
    spec = tiny_spec(tmp_path)
    result = pipeline(spec, until="pretrain")["pretrain"]
    models = result["families"]
    assert set(models) == {"word2vec", "elmo", "gpt", "bert"}

    mlflow.set_tracking_uri(spec.tracking_uri())
    client = MlflowClient()
    for family, model in models.items():
        name = f"pretest-{family}"
        version = client.get_model_version_by_alias(name, "candidate")
        assert str(version.version) == model["version"] == "1"
        assert {"corpus_id", "tokenizer_id", "config_hash", "git_sha"} <= set(version.tags)
        run = client.get_run(model["run_id"])
        assert run.info.status == "FINISHED"
        assert run.data.tags["family"] == family
        assert "learned_little" in run.data.tags
        assert run.data.params["compute.cpu_autocast"] == "auto"
        active = pretraining.cpu_autocast(spec, family)  # auto: GPT and BERT on a bf16 CPU
        assert run.data.params["cpu_autocast_active"] == str(active).lower()
        if family != "word2vec":
            assert "unigram_entropy" in run.data.metrics and "valid_loss" in run.data.metrics
            history = client.get_metric_history(model["run_id"], "loss")
            assert [m.step for m in history] == [2, 4, 6]
    assert "wordsim353_spearman" in client.get_run(models["word2vec"]["run_id"]).data.metrics

    # Anyone can load a registered version by alias and get a ready model + tokenizer.
    resolved = registry.resolve("models:/pretest-gpt@candidate")
    model, tokenizer = saved.load_pretrained("gpt", registry.download(resolved))
    ids = torch.tensor([tokenizer("Pretraining helps.")["input_ids"]])
    assert model(ids).logits.shape[-1] == len(tokenizer)

    # The catalog answers version questions in SQL.
    rows = catalog.query(
        Path(spec.store),
        "select name, version, aliases from model_versions order by name",
        tracking_uri=spec.tracking_uri(),
    ).to_pylist()
    assert [r["name"] for r in rows] == sorted(f"pretest-{f}" for f in models)
    assert all("candidate" in r["aliases"] for r in rows)

    # Unchanged re-run: every family is a cache hit, no new version.
    assert all(status.cached for status in plan(spec, "pretrain"))
    again = pipeline(spec, until="pretrain")["pretrain"]
    assert again["cache_hit"]
    assert len(client.search_model_versions("name='pretest-bert'")) == 1


def test_a_setting_or_code_change_gives_a_new_model_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    spec = tiny_spec(tmp_path)
    key = model_key(spec, "bert", "tok", "/x/tokens/enc")
    masking_ablation = tiny_spec(
        tmp_path,
        bert={
            **spec.pretrain.bert.model_dump(),
            "mask_replace_prob": 1.0,
            "random_replace_prob": 0.0,
        },
    )
    assert model_key(masking_ablation, "bert", "tok", "/x/tokens/enc") != key
    assert model_key(spec, "gpt", "tok", "/x/tokens/enc") != key
    monkeypatch.setitem(pretraining.CODE, "bert", [pretraining.bert, pretraining.gpt])
    assert model_key(spec, "bert", "tok", "/x/tokens/enc") != key
    monkeypatch.undo()
    # bf16 autocast trains other weights: its own key (fp32 settings hash as they did before).
    keys = {}
    for setting in ("on", "off"):
        data = tiny_spec_dict(tmp_path, "pretest", [{"dataset": "lee-news", "limit": 120}])
        keys[setting] = model_key(
            spec_from_dict({**data, "compute": {"cpu_autocast": setting}}), "bert", "tok", "/x/e"
        )
    assert keys["on"] != keys["off"]


def test_a_variant_is_one_more_registered_model_the_report_pairs_with_its_family(
    tmp_path: Path,
) -> None:
    """The masking ablation in one spec: BERT plus `bert-mask100` on BERT's own shards."""
    mask100 = {"mask_replace_prob": 1.0, "random_replace_prob": 0.0}
    spec = tiny_spec(
        tmp_path,
        families=["bert"],
        variants=[{"name": "bert-mask100", "family": "bert", "set": mask100}],
    )
    assert [s.stage for s in plan(spec, "pretrain")][-2:] == ["pretrain/bert",
                                                              "pretrain/bert-mask100"]
    models = pipeline(spec, until="pretrain")["pretrain"]["families"]
    assert list(models) == ["bert", "bert-mask100"]
    base, variant = models["bert"], models["bert-mask100"]
    assert variant["tokenizer_id"] == base["tokenizer_id"]  # no second tokenizer
    assert variant["model_key"] != base["model_key"]
    assert Path(variant["model_dir"]).parts[-3] == "bert-mask100"

    client = MlflowClient(spec.tracking_uri(), registry_uri=spec.tracking_uri())
    version = client.get_model_version_by_alias("pretest-bert-mask100", "candidate")
    assert version.run_id == variant["run_id"]
    assert {k: version.tags[k] for k in ("family", "architecture", "variant_of")} == {
        "family": "bert-mask100", "architecture": "bert", "variant_of": "bert"}
    params = {name: client.get_run(m["run_id"]).data.params for name, m in models.items()}
    assert params["bert-mask100"]["pretrain.bert.mask_replace_prob"] == "1.0"
    assert params["bert-mask100"]["pretrain.bert.random_replace_prob"] == "0.0"
    assert params["bert"]["pretrain.bert.mask_replace_prob"] == "0.8"
    assert all(status.cached for status in plan(spec, "pretrain"))  # unchanged: both reused
    refs = {name: ModelRef.from_dict(m) for name, m in models.items()}
    assert list(compared_models(None, refs)) == list(compared_models(["bert"], refs)) == [
        "bert", "bert-mask100"]  # transfer runs the variant as one more model

    # Transfer rows as the transfer stage writes them: both versions are a bare "1".
    layout = Layout.at(spec.store)
    tracking.configure(spec.tracking_uri(), layout.mlflow_artifacts)
    try:
        lab = Lab(layout.store, spec.tracking_uri(), client, age_s=0, experiment="pretest",
                  versions={m["run_id"]: m["version"] for m in models.values()})
        for name, scores in (("bert", [0.80, 0.81, 0.79]), ("bert-mask100", [0.70, 0.71, 0.69])):
            lab.transfer(models[name]["run_id"], name, "polarity", "finetune", scores)
        catalog.refresh(layout.store, spec.tracking_uri())
        result = build_report(layout.store, tmp_path / "report", experiment="pretest")
    finally:
        mlflow.set_tracking_uri(None)
    md = result.markdown_path.read_text()
    masking = md.split("## 6. Masking ablation")[1].split("\n## ")[0]
    assert masking.count("| polarity |") == 2  # one cell per model, each its own pretrain run
    assert "| polarity | finetune | all | bert | 0.800 | 0.800 ±" in masking
    assert "| polarity | finetune | all | bert-mask100 | 1.000 | 0.700 ±" in masking
    claim = next(c for c in result.claims if c.name.startswith("BERT's masking"))
    assert claim.verdict != NOT_MEASURED and "polarity/finetune@all" in claim.line
