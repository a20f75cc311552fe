"""storage.catalog on a real store: Parquet outputs written with storage.atomic, a real MLflow
(SQLite under tmp) with runs, metric histories and a registered model version with an alias."""

from __future__ import annotations

import json
import math
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import mlflow
import pyarrow as pa
import pytest
from mlflow import MlflowClient

from storage import tracking
from storage.atomic import atomic_dir, write_json, write_manifest, write_parquet
from storage.catalog import (
    PREDICTION_SCHEMA,
    RESULT_SCHEMA,
    CatalogError,
    StaleResultsError,
    client_metric_points,
    list_relations,
    query,
    refresh,
    sqlite_metric_points,
)
from storage.layout import Layout
from storage.tracking import configure, log_metrics_safe, log_spec, start_stage_run

EXPERIMENT = "lab-pretrain"
MODEL = "lab-pretrain-bert"


def docs(*texts: str, extra: bool = False) -> pa.Table:
    columns = {
        "doc_id": [f"d-{t}" for t in texts],
        "source": ["test"] * len(texts),
        "text": list(texts),
        "n_chars": [len(t) for t in texts],
        "split": ["train"] * len(texts),
    }
    if extra:
        columns["lang"] = ["en"] * len(texts)
    return pa.table(columns)


def sentences(n: int) -> pa.Table:
    return pa.table(
        {
            "doc_id": [f"d{i}" for i in range(n)],
            "sent_idx": pa.array(range(n), pa.int32()),
            "split": ["train"] * n,
            "ids": pa.array([[1, 2, 3]] * n, pa.list_(pa.int32())),
        }
    )


def write_output(
    directory: Path,
    parts: list[pa.Table],
    complete: bool = True,
    manifest: dict | None = None,
    **files: pa.Table,
) -> None:
    """A stage output built the way stages build them: atomic_dir, manifest written last."""
    with atomic_dir(directory) as tmp:
        for index, part in enumerate(parts):
            write_parquet(tmp / f"part-{index:05d}.parquet", part)
        for name, table in files.items():
            write_parquet(tmp / f"{name}.parquet", table)
        if complete:
            write_manifest(tmp, {"rows": sum(p.num_rows for p in parts), **(manifest or {})})


def write_tokenizer(layout: Layout, tokenizer_id: str, kind: str, manifest: dict) -> None:
    """Files as tasks/tokenization.py writes them: tokenizer.json, its meta, then the manifest."""
    with atomic_dir(layout.tokenizer(tokenizer_id)) as tmp:
        write_json(tmp / "tokenizer.json", {"model": {"type": "whatever"}})
        meta = {"tokenizer_id": tokenizer_id, "kind": kind, "vocab_size": 100}
        write_json(tmp / "tokenizer_meta.json", meta)
        write_manifest(tmp, {"tokenizer_id": tokenizer_id, "corpus_id": "corpA", **manifest})


def write_outputs(layout: Layout) -> None:
    write_output(
        layout.corpus("corpA"),
        [docs("a", "b", "c"), docs("d", "e")],
        rejects=pa.table({"reason": ["empty"], "source": ["x"]}),
    )
    write_output(layout.corpus("corpB"), [docs("f", "g", "h", "i", extra=True)])
    write_output(layout.corpus("corpC"), [docs("never", "counted")], complete=False)
    # A directory still being built by atomic_dir: hidden name, manifest already inside.
    hidden = layout.corpora / ".corpD.tmp-1234"
    hidden.mkdir()
    write_parquet(hidden / "part-00000.parquet", docs("hidden"))
    write_manifest(hidden, {"rows": 1})

    write_tokenizer(layout, "tokW", "wordpiece", {"family": "bert"})
    write_tokenizer(layout, "tokB", "bpe", {})  # no family recorded: its kind says gpt
    write_json(layout.tokenizer_index("key1"), {"tokenizer_id": "tokW"})
    # Token outputs are named by encoding id; the corpus is in their manifest.
    write_output(
        layout.tokens("tokW", "encA"), [sentences(3), sentences(4)], manifest={"corpus_id": "corpA"}
    )
    write_output(layout.tokens("tokW", "encB"), [sentences(1)], manifest={"corpus_id": "corpB"})
    write_output(layout.tokens("tokB", "encA2"), [sentences(2)], manifest={"corpus_id": "corpA"})
    write_output(layout.tokens("tokW", "encX"), [sentences(9)], complete=False)

    rows = pa.Table.from_pylist(
        [{"task": "polarity", "metric": "acc", "value": v} for v in (0.5, 0.7)], RESULT_SCHEMA
    )
    write_parquet(layout.results / "polarity" / "run1.parquet", rows)
    write_parquet(layout.results / "polarity" / ".run2.parquet.tmp-abcd", rows)


def write_runs(layout: Layout) -> dict[str, str]:
    """Two finished pretraining runs, one failed, and a registered version with an alias."""
    configure(layout.default_tracking_uri, layout.mlflow_artifacts)
    run_ids = {}
    for family in ("bert", "gpt"):
        tags = {"stage": "pretrain", "family": family, "corpus_id": "corpA"}
        with start_stage_run(EXPERIMENT, f"pretrain-{family}", tags) as run:
            log_spec(
                {
                    "tracking": {"uri": "postgresql://lab:hunter2@db/mlflow"},
                    "model": {"family": family, "layers": 2},
                    "api_key": "sk-secret",
                }
            )
            for step in range(3):
                log_metrics_safe({"train_loss": 3.0 - step, "valid_loss": 4.0 - step}, step=step)
            mlflow.log_text("weights", "model/weights.txt")
        run_ids[family] = run.info.run_id
    with pytest.raises(RuntimeError), start_stage_run(EXPERIMENT, "broken", {"stage": "x"}) as run:
        mlflow.log_metric("train_loss", math.nan, step=0)  # diverged, then crashed
        raise RuntimeError("stage crashed")
    run_ids["failed"] = run.info.run_id
    client = MlflowClient()
    client.create_registered_model(MODEL)
    source = f"{client.get_run(run_ids['bert']).info.artifact_uri}/model"
    version = client.create_model_version(MODEL, source, run_id=run_ids["bert"])
    client.set_registered_model_alias(MODEL, "champion", version.version)
    return run_ids


@dataclass
class Lab:
    store: Path
    uri: str
    run_ids: dict[str, str]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    layout = Layout.at(tmp_path_factory.mktemp("store"))
    write_outputs(layout)
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.setattr(tracking, "_configured_artifact_root", None)
        try:
            run_ids = write_runs(layout)
        finally:
            while mlflow.active_run() is not None:
                mlflow.end_run()
            mlflow.set_tracking_uri(None)
    yield Lab(layout.store, layout.default_tracking_uri, run_ids)


@pytest.fixture(autouse=True)
def no_global_tracking_uri(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The catalog must read MLflow from the URI it is given, never from global state."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    mlflow.set_tracking_uri(None)


def rows(table: pa.Table) -> list[tuple]:
    data = table.to_pylist()
    return [tuple(r.values()) for r in data]


# ----------------------------------------------------------------------------- Parquet views


def test_refresh_reports_views_and_tables(lab: Lab) -> None:
    summary = refresh(lab.store, lab.uri)
    assert summary["views"] == {
        "corpus": 3,
        "rejects": 1,
        "tokens_bert": 3,
        "tokens_gpt": 1,
        "tokens": 4,
        "results": 1,
        "probe_layers": 1,  # derived from the result rows
    }
    assert summary["mlflow"] == "ok"
    assert summary["tables"]["runs"] == 3
    assert summary["tables"]["model_versions"] == 1
    assert Path(summary["catalog"]) == lab.store / "catalog.duckdb"
    assert not list(lab.store.glob(".catalog.duckdb.tmp-*"))


def test_corpus_counts_only_complete_visible_outputs(lab: Lab) -> None:
    got = query(
        lab.store, "select corpus_id, count(*) as n from corpus group by 1 order by 1", lab.uri
    )
    assert rows(got) == [("corpA", 5), ("corpB", 4)]
    lang = query(lab.store, "select count(lang) from corpus", refresh_first=False)
    assert rows(lang) == [(4,)]  # union_by_name: the column only corpB has
    rejects = query(lab.store, "select corpus_id, reason from rejects", refresh_first=False)
    assert rows(rejects) == [("corpA", "empty")]


def test_token_views_by_family_with_ids(lab: Lab) -> None:
    refresh(lab.store, lab.uri)
    bert = query(
        lab.store,
        "select tokenizer_id, encoding_id, corpus_id, count(*) from tokens_bert "
        "group by all order by all",
        refresh_first=False,
    )
    assert rows(bert) == [("tokW", "encA", "corpA", 7), ("tokW", "encB", "corpB", 1)]
    families = query(
        lab.store, "select family, count(*) from tokens group by 1 order by 1", refresh_first=False
    )
    assert rows(families) == [("bert", 8), ("gpt", 2)]  # tokW/encX has no manifest
    tokenizers = query(
        lab.store,
        "select tokenizer_id, family, kind, vocab_size, corpus_id from tokenizers order by 1",
        refresh_first=False,
    )
    assert rows(tokenizers) == [
        ("tokB", "gpt", "bpe", 100, "corpA"),
        ("tokW", "bert", "wordpiece", 100, "corpA"),
    ]


def test_results_and_outputs(lab: Lab) -> None:
    refresh(lab.store, lab.uri)
    assert rows(query(lab.store, "select sum(value) from results", refresh_first=False)) == [
        (pytest.approx(1.2),)
    ]
    outputs = query(
        lab.store,
        "select kind, output_id, manifest from outputs order by 1, 2",
        refresh_first=False,
    )
    assert [(k, o) for k, o, _ in rows(outputs)] == [
        ("corpus", "corpA"),
        ("corpus", "corpB"),
        ("tokens", "tokB/encA2"),
        ("tokens", "tokW/encA"),
        ("tokens", "tokW/encB"),
    ]
    assert json.loads(outputs["manifest"][0].as_py()) == {"rows": 5}


# ------------------------------------------------------------------------------ MLflow tables


def test_runs_with_status_tags_and_experiment(lab: Lab) -> None:
    got = query(
        lab.store,
        "select run_id, experiment, run_name, status, family, stage, "
        "tags['corpus_id'] from runs order by run_name",
        lab.uri,
    )
    assert rows(got) == [
        (lab.run_ids["failed"], EXPERIMENT, "broken", "FAILED", None, "x", None),
        (lab.run_ids["bert"], EXPERIMENT, "pretrain-bert", "FINISHED", "bert", "pretrain", "corpA"),
        (lab.run_ids["gpt"], EXPERIMENT, "pretrain-gpt", "FINISHED", "gpt", "pretrain", "corpA"),
    ]
    experiments = query(
        lab.store,
        "select name, artifact_location from experiments where name = 'lab-pretrain'",
        refresh_first=False,
    )
    location = experiments["artifact_location"][0].as_py()
    assert location.startswith((lab.store / "mlartifacts").as_uri())


def test_params_are_redacted(lab: Lab) -> None:
    got = query(
        lab.store,
        f"select key, value from params where run_id = '{lab.run_ids['bert']}' order by key",
        lab.uri,
    )
    assert dict(rows(got)) == {
        "api_key": "***",
        "model.family": "bert",
        "model.layers": "2",
        "tracking.uri": "postgresql://lab:***@db/mlflow",
    }
    leaks = query(
        lab.store,
        "select count(*) from params where value like '%hunter2%' or value like '%sk-secret%'",
        refresh_first=False,
    )
    assert rows(leaks) == [(0,)]


def test_metric_history_and_latest(lab: Lab) -> None:
    refresh(lab.store, lab.uri)
    history = query(
        lab.store,
        "select key, count(*), min(step), max(step) from metrics group by 1 order by 1",
        refresh_first=False,
    )
    assert rows(history) == [("train_loss", 7, 0, 2), ("valid_loss", 6, 0, 2)]
    diverged = query(
        lab.store,
        f"select isnan(value) from metrics where run_id = '{lab.run_ids['failed']}'",
        refresh_first=False,
    )
    assert rows(diverged) == [(True,)]
    latest = query(
        lab.store,
        f"select key, value from metrics_latest where run_id = '{lab.run_ids['gpt']}' order by key",
        refresh_first=False,
    )
    assert rows(latest) == [("train_loss", 1.0), ("valid_loss", 2.0)]


def test_direct_sqlite_history_equals_the_client_api(lab: Lab) -> None:
    """The fast path reads MLflow's own table: it must agree with MlflowClient, NaN included."""
    client = MlflowClient(lab.uri)
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    direct = sqlite_metric_points(lab.store / "mlflow.db", {r.info.run_id for r in runs})
    via_client = [row for run in runs for row in client_metric_points(client, run)]

    def comparable(points: list[tuple]) -> list[tuple]:
        return sorted(tuple("nan" if v != v else v for v in point) for point in points)

    assert len(direct) == 13
    assert comparable(direct) == comparable(via_client)


def test_model_versions_with_aliases(lab: Lab) -> None:
    got = query(
        lab.store,
        "select name, version, run_id, aliases from model_versions "
        "where list_contains(aliases, 'champion')",
        lab.uri,
    )
    assert rows(got) == [(MODEL, 1, lab.run_ids["bert"], ["champion"])]
    models = query(
        lab.store, "select name, aliases['champion'] from registered_models", refresh_first=False
    )
    assert rows(models) == [(MODEL, "1")]


def test_store_mlflow_db_is_found_without_a_uri(lab: Lab) -> None:
    summary = refresh(lab.store, None)
    assert summary["mlflow"] == "ok" and summary["tables"]["runs"] == 3


# ------------------------------------------------------------------------- errors and rebuilds


def test_query_error_lists_relations(lab: Lab) -> None:
    with pytest.raises(CatalogError) as caught:
        query(lab.store, "select * from nope", lab.uri)
    message = str(caught.value)
    assert "nope" in message
    for name in ("corpus (view", "runs (table", "metrics_latest (view", "tokens_bert (view"):
        assert name in message


def test_catalog_is_read_only_for_queries(lab: Lab) -> None:
    with pytest.raises(CatalogError, match="read-only"):
        query(lab.store, "create table scratch as select 1", lab.uri)


def test_empty_store_hints_which_stage_to_run(tmp_path: Path) -> None:
    summary = refresh(tmp_path, None)
    assert summary["views"] == {} and "not configured" in summary["mlflow"]
    with pytest.raises(CatalogError, match=r"no complete corpus .*pretrainlab run SPEC"):
        query(tmp_path, "select count(*) from corpus", refresh_first=False)
    with pytest.raises(CatalogError, match="transfer stage"):
        query(tmp_path, "select * from results", refresh_first=False)
    with pytest.raises(CatalogError, match="MLflow tables are missing"):
        query(tmp_path, "select * from runs", refresh_first=False)
    assert [name for name, _, _ in list_relations(tmp_path)] == [
        "catalog_info",
        "outputs",
        "tokenizers",
    ]


def test_missing_store_is_an_error_not_a_new_directory(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="no store at"):
        query(tmp_path / "typo", "select 1")
    assert not (tmp_path / "typo").exists()


def test_damaged_parquet_names_the_view(tmp_path: Path) -> None:
    layout = Layout.at(tmp_path)
    write_output(layout.corpus("bad"), [docs("a")])
    (layout.corpus("bad") / "part-00000.parquet").write_bytes(b"not parquet")
    with pytest.raises(CatalogError, match="view corpus"):
        refresh(tmp_path, None)
    assert not list(tmp_path.glob("*.duckdb*")) and not list(tmp_path.glob(".catalog*"))


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_tracking_keeps_parquet_views(lab: Lab) -> None:
    uri = f"http://127.0.0.1:{_closed_port()}"
    summary = refresh(lab.store, uri)
    assert summary["mlflow"].startswith("unavailable") and "corpus" in summary["views"]
    assert rows(query(lab.store, "select count(*) from corpus", refresh_first=False)) == [(9,)]
    with pytest.raises(CatalogError, match="make up"):
        query(lab.store, "select * from runs", refresh_first=False)


def test_deleted_catalog_is_rebuilt(lab: Lab) -> None:
    refresh(lab.store, lab.uri)
    (lab.store / "catalog.duckdb").unlink()
    got = query(lab.store, "select count(*) from runs", lab.uri, refresh_first=False)
    assert rows(got) == [(3,)]
    relations = {name: (kind, n) for name, kind, n in list_relations(lab.store)}
    assert relations["corpus"] == ("view", 7)  # corpus_id + 5 columns + corpB's lang
    assert relations["runs"][0] == "table"


def test_refresh_while_a_reader_holds_the_old_file(lab: Lab) -> None:
    refresh(lab.store, lab.uri)
    catalog = lab.store / "catalog.duckdb"
    with duckdb.connect(str(catalog), read_only=True) as reader:
        refresh(lab.store, lab.uri)  # renames a new file over the one the reader has open
        assert reader.execute("select count(*) from runs").fetchall() == [(3,)]
    assert rows(query(lab.store, "select count(*) from runs", refresh_first=False)) == [(3,)]


def test_concurrent_refreshes_leave_one_good_catalog(lab: Lab) -> None:
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            refresh(lab.store, lab.uri)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert rows(query(lab.store, "select count(*) from corpus", refresh_first=False)) == [(9,)]
    assert not list(lab.store.glob(".catalog.duckdb.tmp-*"))


def test_result_file_of_an_older_row_schema_says_to_rerun_transfer(tmp_path: Path) -> None:
    """Rows without task_fingerprint / headline / point cannot be keyed or read by headline:
    the refresh refuses them, naming the file and the command that rewrites them."""
    layout = Layout.at(tmp_path)
    old = pa.schema([f for f in RESULT_SCHEMA if f.name not in ("task_fingerprint", "headline",
                                                                "point")])  # fmt: skip
    stale = layout.results / "polarity" / "old.parquet"
    write_parquet(stale, pa.Table.from_pylist([{"task": "polarity", "value": 0.5}], old))
    with pytest.raises(StaleResultsError) as error:
        refresh(tmp_path, None)
    message = str(error.value)
    assert str(stale) in message and "task_fingerprint, headline, point" in message
    assert "pretrainlab run <spec> --until transfer" in message
    assert f"Remove {layout.results}" in message
    stale.unlink()
    write_parquet(stale, pa.Table.from_pylist([{"task": "polarity", "value": 0.5}], RESULT_SCHEMA))
    assert refresh(tmp_path, None)["views"] == {"results": 1, "probe_layers": 1}


def test_predictions_view_reads_the_side_table(tmp_path: Path) -> None:
    layout = Layout.at(tmp_path)
    items = [{"run_id": "r1", "task": "pos", "seed": 0, "item": i, "gold": "N", "pred": p,
              "correct": p == "N"} for i, p in enumerate(["N", "V", "N"])]  # fmt: skip
    write_parquet(layout.prediction("pos", "key1"), pa.Table.from_pylist(items, PREDICTION_SCHEMA))
    assert layout.prediction("pos", "key1") == tmp_path.resolve() / "predictions/pos/key1.parquet"
    assert refresh(tmp_path, None)["views"] == {"predictions": 1}
    got = query(tmp_path, "select run_id, count(*), sum(correct::int) from predictions group by 1",
                refresh_first=False)  # fmt: skip
    assert rows(got) == [("r1", 3, 2)]
