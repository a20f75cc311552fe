"""storage.versions, version_compare and downstream, and the promotion rule (tasks.promote,
pipelines.report.promotion) on a real MLflow registry and real result rows."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tasks.promote as promote_task
from pipelines.report.promotion import Rule
from storage import catalog, downstream, version_compare, versions
from storage.atomic import write_parquet
from storage.registry import CHAMPION
from tests.storage.lab_store import Lab, make_lab

PARAMS_V1 = {"pretrain.bert.n_layer": "1", "pretrain.bert.lr": "0.001", "corpus.min_chars": "1"}
PARAMS_V2 = {**PARAMS_V1, "pretrain.bert.n_layer": "2"}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    """lab-bert v1, v2 (better on both tasks), v3 (no `tags` scores), v4 (adapted on polarity,
    best everywhere, never champion material); lab-gpt v1. Built once:
    the tests below run in file order, and only the promote test moves an alias."""
    lab = make_lab(tmp_path_factory.mktemp("versions"))
    v1 = lab.pretrain("bert", PARAMS_V1, {"valid_loss": 5.0, "tokens_per_s": 100.0})
    v2 = lab.pretrain("bert", PARAMS_V2, {"valid_loss": 4.5, "tokens_per_s": 80.0})
    v3 = lab.pretrain("bert", PARAMS_V2, {"valid_loss": 4.0})
    gpt = lab.pretrain("gpt", PARAMS_V1, {"valid_loss": 6.0})
    adapted = {"stage": "adapt", "adapted_on": "polarity"}  # as tasks/pretrain.adapt_model tags
    v4 = lab.pretrain("bert", PARAMS_V2, {}, extra_tags=adapted, alias="adapted-polarity")
    lab.transfer(v1, "bert", "polarity", "finetune", [0.60, 0.70])
    lab.transfer(v1, "bert", "tags", "finetune", [0.40, 0.50], metric="span_f1")
    lab.transfer(v1, "bert", "tags", "finetune", [0.90, 0.90], metric="accuracy", headline=False)
    lab.transfer(v2, "bert", "polarity", "finetune", [0.70, 0.80])
    lab.transfer(v2, "bert", "tags", "finetune", [0.50, 0.60], metric="span_f1")
    lab.transfer(v2, "bert", "polarity", "frozen", [0.55, 0.55])
    lab.transfer(v3, "bert", "polarity", "finetune", [0.95, 0.95])
    lab.transfer(gpt, "gpt", "polarity", "finetune", [0.65, 0.65])
    lab.transfer(v4, "bert", "polarity", "finetune", [0.99, 0.99])
    lab.transfer(v4, "bert", "tags", "finetune", [0.99, 0.99], metric="span_f1")
    return lab


def rows(comparison: version_compare.Comparison, section: str) -> list[dict]:
    return [r for r in comparison.rows if r["section"] == section]


def test_version_scores_view_links_rows_to_versions_and_marks_headlines(lab: Lab) -> None:
    catalog.refresh(lab.store, lab.uri)
    found = catalog.query(
        lab.store,
        "select name, version, task, mode, metric, headline, seeds, round(mean, 6) as mean "
        "from version_scores order by all",
        tracking_uri=lab.uri,
        refresh_first=False,
    ).to_pylist()
    by_key = {(r["name"], r["version"], r["task"], r["mode"], r["metric"]): r for r in found}
    assert by_key[("lab-bert", 1, "polarity", "finetune", "accuracy")]["mean"] == 0.65
    assert by_key[("lab-bert", 1, "polarity", "finetune", "accuracy")]["seeds"] == 2
    assert by_key[("lab-bert", 1, "tags", "finetune", "span_f1")]["headline"] is True
    assert by_key[("lab-bert", 1, "tags", "finetune", "accuracy")]["headline"] is False
    assert by_key[("lab-gpt", 1, "polarity", "finetune", "accuracy")]["mean"] == 0.65
    assert len(found) == 10  # dev rows never count


def test_compare_shows_spec_differences_pretraining_and_downstream_deltas(lab: Lab) -> None:
    comparison = version_compare.compare(lab.store, ["lab-bert@v1", "lab-bert/2"], lab.uri)
    assert [v.label for v in comparison.versions] == ["lab-bert@v1", "lab-bert@v2"]
    spec_keys = {r["key"] for r in rows(comparison, "spec")}
    assert "pretrain.bert.n_layer" in spec_keys and "tag.config_hash" in spec_keys
    assert "pretrain.bert.lr" not in spec_keys and "corpus.min_chars" not in spec_keys
    pretrain = {(r["key"], r["version"]): r for r in rows(comparison, "pretrain")}
    assert pretrain[("valid_loss", "lab-bert@v2")]["delta"] == pytest.approx(-0.5)
    assert pretrain[("tokens_per_s", "lab-bert@v2")]["delta"] == pytest.approx(-20.0)
    down = {
        (r["task"], r["mode"], r["key"], r["version"]): r for r in rows(comparison, "downstream")
    }
    polarity = down[("polarity", "finetune", "accuracy", "lab-bert@v2")]
    assert polarity["value"] == pytest.approx(0.75) and polarity["delta"] == pytest.approx(0.10)
    assert polarity["seeds"] == 2
    assert down[("tags", "finetune", "span_f1", "lab-bert@v2")]["delta"] == pytest.approx(0.10)
    assert ("tags", "finetune", "accuracy", "lab-bert@v1") not in down  # headline only
    frozen = down[("polarity", "frozen", "accuracy", "lab-bert@v1")]
    assert frozen["value"] is None and frozen["delta"] is None  # v1 has no frozen score
    table = comparison.table()
    assert table.column_names == list(version_compare.COLUMNS)
    assert table.num_rows == len(comparison.rows)


def test_compare_across_families_by_alias_and_every_version_by_name(lab: Lab) -> None:
    refs = ["lab-bert@candidate", "lab-gpt@candidate"]
    across = version_compare.compare(lab.store, refs, lab.uri)
    assert [v.label for v in across.versions] == ["lab-bert@v3", "lab-gpt@v1"]
    assert {r["key"] for r in rows(across, "spec")} >= {"tag.family", "tag.model_key"}
    everything = version_compare.compare(lab.store, ["lab-bert"], lab.uri, headline_only=False)
    assert [v.version for v in everything.versions] == [1, 2, 3, 4]
    assert any(r["key"] == "accuracy" and r["task"] == "tags" for r in everything.rows)


def test_bad_references_name_what_exists(lab: Lab) -> None:
    with pytest.raises(versions.VersionError, match=r"lab-bert@v1, .*lab-gpt@v1"):
        version_compare.compare(lab.store, ["lab-bert@v9"], lab.uri)
    with pytest.raises(versions.VersionError, match="expected NAME"):
        version_compare.compare(lab.store, ["lab bert"], lab.uri)
    with pytest.raises(versions.VersionError, match="no such registered model"):
        promote_task.decide(lab.store, "lab-elmo", Rule(), lab.uri)
    with pytest.raises(versions.VersionError, match=r"task\(s\) sentiment.*scored tasks: polarity"):
        promote_task.decide(lab.store, "lab-bert", Rule(tasks=("sentiment",)), lab.uri)


def champion(lab: Lab, name: str = "lab-bert") -> str | None:
    found = lab.client.get_registered_model(name).aliases.get(CHAMPION)
    return None if found is None else str(found)


def test_promote_moves_champion_by_the_rule_and_records_why(lab: Lab) -> None:
    rule = Rule(mode="finetune", budget="all")
    dry = promote_task.promote(lab.store, "lab-bert", rule, lab.uri, dry_run=True)
    assert dry.promote and not dry.applied and champion(lab) is None
    # v3 has no `tags` score, so it cannot be ranked although its polarity score is highest.
    assert dry.tasks == ["polarity", "tags"] and 3 in dry.ineligible
    assert dry.ineligible[4] == "adapted on polarity" and 4 not in dry.scores
    assert dry.scores[1] == pytest.approx((0.65 + 0.45) / 2)
    assert dry.scores[2] == pytest.approx((0.75 + 0.55) / 2) and dry.best == 2

    done = promote_task.promote(lab.store, "lab-bert", rule, lab.uri)
    assert done.applied and champion(lab) == "2"
    record = json.loads(lab.client.get_model_version("lab-bert", "2").tags[versions.REASON_TAG])
    assert record["best"] == 2 and record["previous_champion"] is None
    assert record["rule"]["mode"] == "finetune" and record["scores"]["1"] == pytest.approx(0.55)
    model_tags = lab.client.get_registered_model("lab-bert").tags
    assert json.loads(model_tags[versions.REASON_TAG])["decided_at"] == record["decided_at"]

    again = promote_task.promote(lab.store, "lab-bert", rule, lab.uri)
    assert not again.promote and "still the best" in again.reason and champion(lab) == "2"

    # On polarity alone v3 is best (0.95 vs 0.75): a margin of 0.3 keeps v2, 0.1 moves it.
    polarity = Rule(tasks=("polarity",), margin=0.3)
    kept = promote_task.promote(lab.store, "lab-bert", polarity, lab.uri)
    assert not kept.promote and "not more than the margin" in kept.reason and champion(lab) == "2"
    moved = promote_task.promote(
        lab.store, "lab-bert", Rule(tasks=("polarity",), margin=0.1), lab.uri
    )
    assert moved.applied and champion(lab) == "3" and moved.champion == 2


def test_worst_case_rule_and_explicit_metric(lab: Lab) -> None:
    worst = promote_task.decide(lab.store, "lab-bert", Rule(aggregate="min"), lab.uri)
    assert worst.scores[2] == pytest.approx(0.55)
    by_accuracy = promote_task.decide(
        lab.store, "lab-bert", Rule(tasks=("tags",), metric="accuracy"), lab.uri
    )
    assert by_accuracy.scores == {1: pytest.approx(0.9)}
    assert set(by_accuracy.ineligible) == {2, 3, 4}


def test_publish_downstream_logs_summaries_once(lab: Lab) -> None:
    logged = downstream.publish_downstream(lab.store, lab.uri)
    run_v2 = next(run for run, version in lab.versions.items() if version == "2")
    metrics = lab.client.get_run(run_v2).data.metrics
    assert metrics["downstream/polarity/finetune/all/accuracy"] == pytest.approx(0.75)
    assert metrics["downstream/tags/finetune/all/span_f1"] == pytest.approx(0.55)
    assert metrics["downstream/mean/finetune/all/headline"] == pytest.approx(0.65)
    assert "downstream/tags/finetune/all/accuracy" not in metrics  # only headlines
    assert logged == 3 + 5 + 2 + 3 + 2  # v1: 2 + a mean, v2: 3 + 2 means, v3: 1 + 1, v4: 2 + 1
    assert downstream.publish_downstream(lab.store, lab.uri) == 0
    pretrain = version_compare.compare(lab.store, ["lab-bert@v2"], lab.uri)
    assert not any(r["key"].startswith("downstream/") for r in rows(pretrain, "pretrain"))


def test_list_versions_has_aliases_and_pretraining_numbers(lab: Lab) -> None:
    listed = versions.list_versions(lab.store, lab.uri).to_pylist()
    assert [(r["name"], r["version"]) for r in listed] == [
        ("lab-bert", 1),
        ("lab-bert", 2),
        ("lab-bert", 3),
        ("lab-bert", 4),
        ("lab-gpt", 1),
    ]
    assert "candidate" in listed[2]["aliases"].split(",") and listed[0]["aliases"] == ""
    assert listed[1]["valid_loss"] == pytest.approx(4.5) and listed[1]["family"] == "bert"



def test_version_scores_never_pool_two_settings_of_a_task(tmp_path: Path) -> None:
    """The same task name run on other task data (another max_examples, split or file) gets its
    own cells, labelled with the data's fingerprint, as in the report."""
    lab = make_lab(tmp_path)
    bert = lab.pretrain("bert", PARAMS_V1, {"valid_loss": 5.0})
    lab.transfer(bert, "bert", "polarity", "finetune", [0.60, 0.70])
    lab.transfer(bert, "bert", "polarity", "finetune", [0.20, 0.30])  # a run per seed
    for path in (lab.layout.results / "polarity").glob("*.parquet"):
        table = pq.read_table(path)
        if min(table.column("value").to_pylist()) < 0.5:  # the second setting's runs
            column = table.schema.get_field_index("task_fingerprint")
            other = pa.array(["other-data"] * table.num_rows)
            write_parquet(path, table.set_column(column, "task_fingerprint", other))
    catalog.refresh(lab.store, lab.uri)
    found = catalog.query(
        lab.store, "select task, round(mean, 6) as mean from version_scores order by 1",
        tracking_uri=lab.uri, refresh_first=False,
    ).to_pylist()
    assert found == [{"task": "polarity [fp-polar]", "mean": 0.65},
                     {"task": "polarity [other-da]", "mean": 0.25}]
