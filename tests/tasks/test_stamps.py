"""Stage-level cache checks: a stage is skipped only when its key and its outputs are intact."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pretrainlab.config import spec_from_dict
from storage.atomic import write_manifest
from storage.layout import Layout
from tasks import stamps


def make_spec(tmp_path: Path, **transfer):
    (tmp_path / "train.csv").write_text("text,label\ngood film,1\nbad film,0\n", encoding="utf-8")
    task = {"name": "mine", "kind": "classify", "train": str(tmp_path / "train.csv")}
    return spec_from_dict(
        {
            "experiment": "stamps",
            "store": str(tmp_path / "store"),
            "corpus": {"sources": [{"path": str(tmp_path / "corpus.txt")}]},
            "transfer": {"tasks": [task], **transfer},
        }
    )


@pytest.fixture
def done(tmp_path: Path):
    """A recorded tokenize stage whose outputs are a complete directory and a file."""
    spec = make_spec(tmp_path)
    shards = tmp_path / "store" / "tokens" / "t1"
    shards.mkdir(parents=True)
    write_manifest(shards, {"rows": 3})
    tokenizer = tmp_path / "store" / "tokenizer.json"
    tokenizer.write_text("{}", encoding="utf-8")
    key = stamps.stage_key(spec, "tokenize", "corpus-1")
    result = {"families": {"word": {"tokens": str(shards)}}, "cache_hit": False}
    stamps.record_stage(spec, "tokenize", key, result, [str(shards), str(tokenizer)])
    return spec, key, shards, tokenizer


def test_unchanged_stage_is_a_hit_with_its_result(done) -> None:
    spec, key, shards, _ = done
    hit = stamps.cached_stage(spec, "tokenize", key)
    assert hit == {"families": {"word": {"tokens": str(shards)}}, "cache_hit": True}
    assert stamps.stage_key(spec, "tokenize", "corpus-1") == key


def test_changed_spec_upstream_or_task_file_changes_the_key(done, tmp_path: Path) -> None:
    spec, key, *_ = done
    assert stamps.stage_key(spec, "tokenize", "corpus-2") != key
    assert stamps.stage_key(make_spec(tmp_path, min_steps=99), "tokenize", "corpus-1") != key
    before = stamps.stage_key(spec, "transfer", "models")
    (tmp_path / "train.csv").write_text("text,label\nfine film,1\nbad film,0\n", encoding="utf-8")
    assert stamps.stage_key(spec, "transfer", "models") != before


def test_volatile_fields_do_not_change_the_key(done) -> None:
    spec, *_ = done
    first = {"m": {"version": "1", "cache_hit": False, "mlflow_run_id": "a", "seconds": 3.0}}
    again = {"m": {"version": "1", "cache_hit": True, "mlflow_run_id": "b", "seconds": 0.0}}
    assert stamps.stage_key(spec, "pretrain", first) == stamps.stage_key(spec, "pretrain", again)
    assert stamps.stage_key(spec, "pretrain", {"m": {"version": "2"}}) != stamps.stage_key(
        spec, "pretrain", first
    )


def test_edited_file_or_incomplete_directory_is_a_miss(done) -> None:
    spec, key, shards, tokenizer = done
    stat = tokenizer.stat()
    os.utime(tokenizer, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert stamps.cached_stage(spec, "tokenize", key) is None
    os.utime(tokenizer, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert stamps.cached_stage(spec, "tokenize", key) is not None
    (shards / "_manifest.json").unlink()
    assert stamps.cached_stage(spec, "tokenize", key) is None


def test_missing_or_corrupt_stamp_is_a_miss(done) -> None:
    spec, key, *_ = done
    assert stamps.cached_stage(spec, "report", key) is None
    path = Path(spec.store) / "stamps" / "tokenize-stamps.json"
    path.write_text("{half", encoding="utf-8")
    assert stamps.cached_stage(spec, "tokenize", key) is None


def test_report_key_sees_runs_deleted_in_mlflow_outside_a_run(tmp_path: Path) -> None:
    """Soft-deleting a run in MLflow changes what the catalog (and so the report) holds: the
    report stage's key must change with it, and a transfer sub-experiment's runs count too."""
    import mlflow

    spec = make_spec(tmp_path)
    (tmp_path / "store").mkdir()
    client = mlflow.MlflowClient(spec.tracking_uri())
    other = client.create_experiment("stamps-other/transfer/mine")  # another experiment: ignored
    transfer = client.create_experiment("stamps/transfer/mine")
    kept = client.create_run(transfer).info.run_id
    client.create_run(other)
    results = {"pretrain": {"families": {}}}

    def key() -> str:
        return stamps.stage_key(spec, "report", stamps.upstream(spec, "report", "c", results))

    before = key()
    client.create_run(other)
    report = client.get_experiment_by_name("stamps") or client.create_experiment("stamps")
    client.create_run(getattr(report, "experiment_id", report), tags={"stage": "report"})
    assert key() == before  # another experiment's run, or the report's own: no change
    client.delete_run(kept)
    assert key() != before


def test_report_key_sees_a_new_contamination_audit(tmp_path: Path) -> None:
    """The report shows the audit: a new audit file alone rebuilds it."""
    spec = make_spec(tmp_path)
    (tmp_path / "store").mkdir()
    results = {"pretrain": {"families": {}}}

    def key() -> str:
        return stamps.stage_key(spec, "report", stamps.upstream(spec, "report", "c", results))

    before = key()
    audit = Layout.at(spec.store).audit("mine", "k1")
    audit.parent.mkdir(parents=True)
    audit.write_bytes(b"rows")
    assert key() != before
