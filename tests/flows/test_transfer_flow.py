"""The whole pipeline on tiny real data: transfer sweep, baselines, probes and the report."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from flows.pipeline import pipeline, plan
from pretrainlab.config import Spec, spec_from_dict
from storage import catalog
from tests.flows.tiny_specs import tiny_spec_dict

pytestmark = pytest.mark.usefixtures("prefect_harness")


def spec_for(tmp_path: Path) -> Spec:
    sources = [{"dataset": "lee-news", "limit": 100}, {"dataset": "wordnet-glosses", "limit": 300}]
    data = tiny_spec_dict(tmp_path, "xfer", sources, steps=4)
    return spec_from_dict(
        {
            **data,
            "transfer": {
                "tasks": [
                    {
                        "name": "polarity",
                        "kind": "classify",
                        "dataset": "polarity-sentences",
                        "max_examples": 60,
                    },
                    {"name": "wic", "kind": "wic", "dataset": "wic-wordnet", "max_examples": 40},
                ],
                "modes": ["scratch", "frozen", "finetune", "partial:1"],
                "budgets": [20, "all"],
                "seeds": [0, 1],
                "lrs": {
                    "scratch": [1e-3],
                    "frozen": [1e-2],
                    "finetune": [1e-3, 3e-4],
                    "partial": [1e-3],
                },
                "passes": 2,
                "min_steps": 10,
                "max_steps": 20,
                "evals": 10,
                "batch_size": 8,
                "max_len": 32,
                "probe_tasks": ["wic"],
            },
        }
    )


def test_pipeline_ends_with_results_runs_and_a_report(tmp_path: Path) -> None:
    spec = spec_for(tmp_path)
    results = pipeline(spec)
    store = Path(spec.store)

    def sql(text: str) -> list[dict]:
        return catalog.query(store, text, tracking_uri=spec.tracking_uri()).to_pylist()

    # 2 tasks x 2 budgets x 2 seeds x (4 families x 4 modes - word2vec partial) + baselines.
    runs = sql(
        "select task, family, mode, count(distinct run_id) as n from results "
        "where mode != 'probe' and task != 'polysemy' group by all"
    )
    assert {(r["task"], r["family"]) for r in runs} >= {
        (t, f) for t in ("polarity", "wic") for f in ("word2vec", "elmo", "gpt", "bert", "baseline")
    }
    assert all(r["n"] == 4 for r in runs)  # budgets x seeds
    assert not any(r["family"] == "word2vec" and r["mode"].startswith("partial") for r in runs)

    test_rows = sql(
        "select family, mode, value from results where split = 'test' and "
        "metric = 'accuracy' and task = 'polarity'"
    )
    assert test_rows and all(0.0 <= r["value"] <= 1.0 for r in test_rows)
    # every trained run records its optimizer steps (within the floor and ceiling) and whether
    # it converged, as test-split metric rows
    protocol = sql(
        "select run_id, list(metric order by metric) as metrics, "
        "max(value) filter (where metric = 'steps') as steps, "
        "max(value) filter (where metric = 'converged') as converged from results "
        "where split = 'test' and metric in ('steps', 'converged') group by run_id"
    )
    trained = sql(
        "select count(distinct run_id) as n from results where split = 'dev' and metric = 'step'"
    )
    assert len(protocol) == trained[0]["n"] > 0
    assert all(r["metrics"] == ["converged", "steps"] for r in protocol)
    assert all(10 <= r["steps"] <= 20 and r["converged"] in (0.0, 1.0) for r in protocol)
    # every row names its task data and flags the task's headline metric (accuracy here);
    # every trained run has per-item test predictions whose mean correctness is its accuracy
    flags = sql(
        "select count(*) filter (where task_fingerprint is null) as unkeyed, "
        "list(distinct metric) filter (where headline) as heads from results"
    )
    assert flags[0]["unkeyed"] == 0 and flags[0]["heads"] == ["accuracy"]
    scored = sql(
        "select r.run_id, r.value, avg(p.correct::int) as rate from results r "
        "join predictions p using (run_id) where r.split = 'test' and r.metric = 'accuracy' "
        "and r.layer is null group by all"
    )
    assert len(scored) == trained[0]["n"]
    assert all(abs(r["value"] - r["rate"]) < 1e-9 for r in scored)
    probes = sql(
        "select family, count(distinct layer) as layers from results "
        "where mode = 'probe' and metric = 'accuracy' group by 1 order by 1"
    )
    assert {r["family"]: r["layers"] for r in probes} == {"bert": 2, "elmo": 3, "gpt": 2}
    # Polysemy: word2vec is static (the same vector in both sentences), by construction.
    sims = sql(
        "select family, metric, avg(value) as v from results where task = 'polysemy' group by 1, 2"
    )
    static = {r["metric"]: r["v"] for r in sims if r["family"] == "word2vec"}
    assert static["same_sense_sim"] == pytest.approx(static["diff_sense_sim"])
    assert {r["family"] for r in sims} == {"word2vec", "elmo", "gpt", "bert"}
    chosen = sql("select distinct lr from results where family = 'gpt' and mode = 'finetune'")
    assert {r["lr"] for r in chosen} <= {1e-3, 3e-4}

    # Every transfer run is an MLflow run in transfer/<task>, linked to its pretrain run.
    mlflow.set_tracking_uri(spec.tracking_uri())
    transfer_runs = mlflow.search_runs(
        experiment_names=["xfer/transfer/polarity"], output_format="list"
    )
    pretrain_ids = {m["run_id"] for m in results["pretrain"]["families"].values()}
    linked = [r for r in transfer_runs if r.data.tags.get("family") != "baseline"]
    assert linked and all(r.data.tags["pretrain_run_id"] in pretrain_ids for r in linked)
    # ... and to the MLflow Model it evaluated (the model's page lists the run as an input).
    # search_runs (MLflow 3.17) leaves model inputs out: read each run whole.
    model_ids = {m["model_id"] for m in results["pretrain"]["families"].values()}
    client = mlflow.MlflowClient()
    assert all(
        {i.model_id for i in client.get_run(r.info.run_id).inputs.model_inputs}
        == {r.data.tags["model_id"]} <= model_ids
        for r in linked
    )

    report = results["report"]
    html = Path(report["output"])
    assert html.is_file() and html.with_name("report.md").is_file()
    assert list(html.parent.glob("*.png"))
    assert set(report["claims"].values()) <= {
        "supported",
        "contradicted",
        "mixed",
        "inconclusive",
        "not measured",
    }
    markdown = html.with_name("report.md").read_text()
    assert "baseline" in markdown.lower()
    assert "## Protocol" in markdown and "pilot:" in markdown

    # Unchanged re-run: the dry run calls every stage cached, and each is skipped as a whole.
    assert all(status.cached for status in plan(spec)), plan(spec)
    again = pipeline(spec, until="transfer")
    assert again["transfer"]["cache_hit"]

    # Widening the sweep runs only what is new: every row already computed is reused.
    wider = spec.model_copy(deep=True)
    wider.transfer.modes.append("frozen:layer=0")
    grown = pipeline(wider, until="transfer")["transfer"]
    assert grown["runs"] > again["transfer"]["runs"]
    assert grown["computed"] == grown["runs"] - again["transfer"]["runs"]
