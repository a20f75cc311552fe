"""A tag that occurs once, only in test, is normal in tagging data: the transfer stage keeps
it, scores it as an error, counts it in its rows, and the report shows the count. Real Prefect
(the session harness), MLflow on SQLite and DuckDB, on a temp store; no pretraining needed:
the baseline run of the transfer stage writes the rows the report reads."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from pretrainlab.config import spec_from_dict
from storage.layout import Layout
from tasks.report import build_report
from tasks.transfer import load_task, run_baseline

WORDS = [("the", "DT"), ("cat", "NN"), ("sat", "VBD"), ("on", "IN"), ("a", "DT"), ("mat", "NN")]


def _conll(path: Path, sentences: list[list[tuple[str, str]]]) -> Path:
    path.write_text(
        "\n\n".join("\n".join(f"{w}\t{t}" for w, t in s) for s in sentences) + "\n",
        encoding="utf-8",
    )
    return path


def test_a_tag_seen_once_in_test_reaches_the_report_as_a_count(
    tmp_path: Path, prefect_harness: None
) -> None:
    train = [[(f"{w}{i % 7}", t) for w, t in WORDS] for i in range(40)]
    test = [[(f"{w}{i % 7}", t) for w, t in WORDS] for i in range(9)]
    test.append([("zebra", "RARE"), *WORDS[1:]])  # the only RARE, and only in test
    spec = spec_from_dict({
        "experiment": "unseen",
        "store": str(tmp_path / "store"),
        "corpus": {"sources": [{"path": str(tmp_path / "corpus.txt")}]},
        "transfer": {
            "tasks": [{"name": "pos", "kind": "tag",
                       "train": str(_conll(tmp_path / "t.conll", train)),
                       "test": str(_conll(tmp_path / "x.conll", test))}],
            "budgets": ["all"],
            "seeds": [0],
        },
    })  # fmt: skip
    data = load_task.fn(spec, spec.transfer.tasks[0])
    assert "RARE" not in data.labels and data.unseen == ("RARE",)
    assert data.unseen_labels == {"dev": 0, "test": 1}

    run_baseline.fn(spec, data)
    rows = pq.read_table(next(Layout.at(spec.store).results.glob("pos/*.parquet"))).to_pylist()
    counts = {r["split"]: r["value"] for r in rows if r["metric"] == "unseen_labels"}
    assert counts == {"dev": 0.0, "test": 1.0}
    accuracy = next(r["value"] for r in rows if r["split"] == "test" and r["metric"] == "accuracy")
    assert accuracy < 1.0  # the RARE word is always wrong, whatever else is right

    report = Path(build_report.fn(spec)["output"]).with_name("report.md").read_text()
    assert "pos: items whose label never occurs in train (test 1)" in report
