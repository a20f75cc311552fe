"""The ingest flow end to end: real Prefect (test harness), real MLflow (SQLite) and DuckDB."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import mlflow
import pyarrow.parquet as pq
import pytest

from flows.pipeline import pipeline, plan
from pretrainlab.config import spec_from_dict
from storage import catalog
from storage.layout import Layout

pytestmark = pytest.mark.usefixtures("prefect_harness")

DOCS = [
    "The quick brown fox jumps over the lazy dog.",
    "Pretraining helps most when labelled data are scarce.",
    "自然语言处理是人工智能的一个分支。它研究人与计算机之间的交流。",
    "The quick brown fox jumps over the lazy dog.",  # duplicate
    "",
]


def make_spec(tmp_path: Path, **corpus):
    sources = tmp_path / "src"
    sources.mkdir(exist_ok=True)
    (sources / "a.txt").write_text("\n".join(DOCS) + "\n", encoding="utf-8")
    with gzip.open(sources / "b.jsonl.gz", "wt", encoding="utf-8") as handle:
        for i in range(40):
            handle.write(
                json.dumps({"body": f"Document number {i} about transfer learning."}) + "\n"
            )
        handle.write("{not json\n")
    data = {
        "experiment": "flowtest",
        "store": str(tmp_path / "store"),
        "corpus": {
            "sources": [
                {"path": str(sources / "a.txt")},
                {"path": str(sources / "b.jsonl.gz"), "text_field": "body"},
                {"dataset": "lee-news", "limit": 50},
            ],
            "valid_fraction": 0.2,
            **corpus,
        },
    }
    return spec_from_dict(data)


def test_ingest_flow_builds_records_and_caches(tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    assert [s.cached for s in plan(spec, "ingest")] == [False]

    first = pipeline(spec, until="ingest")["ingest"]
    corpus_dir = Layout.at(spec.store).corpus(first["corpus_id"])
    table = pq.read_table(sorted(corpus_dir.glob("part-*.parquet")))
    assert table.num_rows == 3 + 40 + 50 == first["stats"]["docs_written"]
    assert first["stats"]["duplicates"] == 1
    assert first["stats"]["rejected_by_reason"] == {"empty": 1, "malformed_json": 1}
    assert set(table.column("split").to_pylist()) == {"train", "valid"}
    assert pq.read_table(corpus_dir / "rejects.parquet").num_rows == 2

    # MLflow: one run with the spec as params and the corpus statistics as metrics.
    mlflow.set_tracking_uri(spec.tracking_uri())
    runs = mlflow.search_runs(experiment_names=["flowtest"], output_format="list")
    assert len(runs) == 1
    assert runs[0].data.params["corpus.valid_fraction"] == "0.2"
    assert runs[0].data.metrics["docs_written"] == first["stats"]["docs_written"]
    assert runs[0].data.tags["corpus_id"] == first["corpus_id"]

    # DuckDB catalog answers the README's question.
    counts = catalog.query(
        Path(spec.store),
        "select split, count(*) as n from corpus group by 1 order by 1",
        tracking_uri=spec.tracking_uri(),
    ).to_pylist()
    assert sum(row["n"] for row in counts) == table.num_rows

    # Re-run with nothing changed: a cache hit, same id, nothing rewritten.
    mtimes = {p: p.stat().st_mtime_ns for p in corpus_dir.iterdir()}
    assert [s.cached for s in plan(spec, "ingest")] == [True]
    second = pipeline(spec, until="ingest")["ingest"]
    assert second["cache_hit"] and second["corpus_id"] == first["corpus_id"]
    assert {p: p.stat().st_mtime_ns for p in corpus_dir.iterdir()} == mtimes


def test_changing_a_setting_or_source_changes_the_corpus_id(tmp_path: Path) -> None:
    base = plan(make_spec(tmp_path), "ingest")[0].output
    assert plan(make_spec(tmp_path, valid_fraction=0.3), "ingest")[0].output != base
    spec = make_spec(tmp_path)
    (tmp_path / "src" / "a.txt").write_text("something else entirely\n", encoding="utf-8")
    assert plan(spec, "ingest")[0].output != base


def test_deleted_output_is_rebuilt(tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    first = pipeline(spec, until="ingest")["ingest"]
    corpus_dir = Layout.at(spec.store).corpus(first["corpus_id"])
    (corpus_dir / "_manifest.json").unlink()  # an incomplete output is never trusted
    again = pipeline(spec, until="ingest")["ingest"]
    assert not again["cache_hit"] and again["corpus_id"] == first["corpus_id"]
