"""Pretraining points (issue 16) end to end on a tiny corpus: snapshots kept, tagged and
registered without an alias, transfer on each point, scratch once, one catalog row per
(point, mode, budget, seed), and the break-even and label-equivalent readings in the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from flows.pipeline import pipeline
from pretrainlab.config import spec_from_dict
from storage import catalog, registry
from tests.flows.tiny_specs import tiny_spec_dict

pytestmark = pytest.mark.usefixtures("prefect_harness")

POINTS = ("0.25", "0.5")


def _spec(tmp_path: Path):
    sources = [{"dataset": "lee-news", "limit": 100}, {"dataset": "wordnet-glosses", "limit": 300}]
    data = tiny_spec_dict(tmp_path, "points", sources, steps=8)
    data["pretrain"]["families"] = ["word2vec", "gpt"]
    data["pretrain"]["points"] = [0.25, 0.5, 1.0]
    data["pretrain"]["word2vec"]["epochs"] = 4  # points after epochs 1 and 2
    data["pretrain"]["gpt"]["loop"] |= {"schedule": "wsd", "cooldown": 0.5}  # steps 2 and 4
    data["transfer"] = {
        "tasks": [{"name": "polarity", "kind": "classify", "dataset": "polarity-sentences",
                   "max_examples": 60}],
        "modes": ["scratch", "frozen"],
        "budgets": [10, 20, "all"],
        "seeds": [0, 1],
        "lrs": {"scratch": [1e-3], "frozen": [1e-2]},
        "passes": 2, "min_steps": 10, "max_steps": 10, "evals": 10, "batch_size": 8, "max_len": 32,
    }  # fmt: skip
    return spec_from_dict(data)


def test_points_are_kept_tagged_transferred_and_read(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    results = pipeline(spec)
    store, uri = Path(spec.store), spec.tracking_uri()

    def sql(text: str) -> list[dict]:
        return catalog.query(store, text, tracking_uri=uri).to_pylist()

    # Snapshots: two points per family, each a registered version tagged with its amount ...
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    for family, unit in (("gpt", {"0.25": 2, "0.5": 4}), ("word2vec", {"0.25": 1, "0.5": 2})):
        final = results["pretrain"]["families"][family]
        name = final["registered_name"]
        versions = client.search_model_versions(f"name = '{name}'")
        points = {v.tags["point"]: v for v in versions if v.tags.get("point")}
        assert sorted(points) == list(POINTS)
        for label, version in points.items():
            assert int(version.tags["pretrain_step"]) == unit[label]
            assert 0 < int(version.tags["tokens_seen"]) < final["summary"]["tokens_seen"]
            assert float(version.tags["flops"]) > 0
            assert version.run_id == final["run_id"]  # the same pretrain run
        assert int(points["0.25"].tags["tokens_seen"]) < int(points["0.5"].tags["tokens_seen"])
        # ... but `candidate` stays on the final model
        candidate = client.get_model_version_by_alias(name, registry.CANDIDATE)
        assert str(candidate.version) == str(final["version"])
        assert all(v.aliases == [] for v in points.values())
        manifest = json.loads((Path(final["model_dir"]).parent / "_manifest.json").read_text())
        assert [p["point"] for p in manifest["points"]] == list(POINTS)
    gpt_points = client.search_model_versions(
        f"name = '{results['pretrain']['families']['gpt']['registered_name']}'"
    )
    assert {v.tags.get("schedule") for v in gpt_points if v.tags.get("point")} == {"wsd"}

    # Transfer: frozen runs once per (point, budget, seed); scratch once, at the final model.
    rows = sql(
        "select family, mode, coalesce(point, 'final') as point, count(distinct run_id) as n "
        "from results where family <> 'baseline' group by all"
    )
    runs = {(r["family"], r["mode"], r["point"]): r["n"] for r in rows}
    for family in ("gpt", "word2vec"):
        assert runs[(family, "scratch", "final")] == 6  # 3 budgets x 2 seeds
        assert not any(k[:2] == (family, "scratch") and k[2] != "final" for k in runs)
        for point in (*POINTS, "final"):
            assert runs[(family, "frozen", point)] == 6

    # The catalog: one row per (point, mode, budget, seed), with the pretraining amount.
    cells = sql(
        "select family, point, mode, budget, seed, count(*) as n, any_value(tokens_seen) as t "
        "from point_scores group by all"
    )
    assert all(c["n"] == 1 for c in cells)
    assert len(cells) == 2 * (6 + 3 * 6)
    assert all(c["t"] == 0 for c in cells if c["mode"] == "scratch")
    amounts = {(c["family"], c["point"]): c["t"] for c in cells if c["mode"] == "frozen"}
    assert amounts[("gpt", "0.25")] < amounts[("gpt", "0.5")] < amounts[("gpt", None)]

    # Every existing view and section still sees one model per family.
    versions = sql("select family, count(distinct version) as n from version_scores group by 1")
    assert {r["family"]: r["n"] for r in versions} == {"gpt": 1, "word2vec": 1}

    # The report reads break-even and label-equivalents, and the catalog queries them.
    report = Path(results["report"]["output"]).with_name("report.md").read_text()
    assert "Break-even" in report and "Label-equivalents" in report
    assert "warmup-stable-decay" in report  # says how the points were made
    breaks = sql("select family, mode, budget, unit, reading from break_even")
    assert {(b["family"], b["unit"]) for b in breaks} >= {("gpt", "tokens"), ("gpt", "FLOPs")}
    equivalents = sql("select family, mode, labels, estimate from label_equivalents")
    assert {e["family"] for e in equivalents} == {"gpt", "word2vec"}
