"""storage.gc on a real tiny store: real MLflow runs and versions, manifests, result rows."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from storage import gc
from tests.storage.lab_store import Lab, age, index_entry, make_lab, output_dir

BLOB = b"x" * 1000


def dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(done.stdout)


def build(tmp_path: Path) -> Lab:
    """Registered bert (K1), gpt reached only through result rows (K2), an unreferenced elmo
    (K3), a killed elmo run (K4), their inputs, caches and temporaries: all 30 days old except
    corpus cR (1 day)."""
    lab = make_lab(tmp_path)
    r1 = lab.pretrain("bert", {}, {}, corpus_id="cA", tokenizer_id="tA", model_key="K1")
    r2 = lab.pretrain("gpt", {}, {}, "cA", "tG", "K2", register=False)
    lab.transfer(r2, "gpt", "polarity", "finetune", [0.5])
    r3 = lab.pretrain("elmo", {}, {}, "cB", "tB", "K3", register=False)
    r4 = lab.pretrain("elmo", {}, {}, "cB", "tB", "K4", register=False)
    layout, store = lab.layout, lab.store
    for corpus in ("cA", "cB", "cR"):
        output_dir(layout.corpus(corpus), {"part-00000.parquet": BLOB}, {"rows": 1})
    for tokenizer, corpus in (("tA", "cA"), ("tG", "cA"), ("tB", "cB")):
        output_dir(layout.tokenizer(tokenizer), {"tokenizer.json": BLOB}, {"corpus_id": corpus})
        index_entry(layout, f"key-{tokenizer}", corpus, tokenizer)
    output_dir(layout.tokens("tA", "e1"), {"part-00000.parquet": BLOB}, {"corpus_id": "cA"})
    output_dir(layout.tokens("tB", "e2"), {"part-00000.parquet": BLOB}, {"corpus_id": "cB"})
    checkpoint = {"model/model.safetensors": BLOB, "work/checkpoints/checkpoint.pt": BLOB * 5}
    output_dir(layout.model("bert", "K1"), checkpoint, {"run_id": r1, "version": "1"})
    output_dir(layout.model("gpt", "K2"), {"model/model.safetensors": BLOB}, {"run_id": r2})
    output_dir(layout.model("elmo", "K3"), checkpoint, {"run_id": r3})
    output_dir(
        layout.model("elmo", "K4"), {"work/run.json": f'{{"run_id": "{r4}"}}'.encode()}, None
    )
    for family, key, name in (("bert", "K1", "polarity-bert-1"), ("elmo", "K3", "polarity-elmo-3")):
        model_dir = str(layout.model(family, key) / "model")
        output_dir(
            store / "features" / family / name, {"train.npy": BLOB}, {"model_dir": model_dir}
        )
    output_dir(layout.corpora / f".cZ.tmp-{dead_pid()}-abc", {"part-00000.parquet": BLOB}, None)
    (layout.results / "polarity" / ".x.parquet.tmp-abcd1234").write_bytes(BLOB)
    layout.prediction("polarity", "x").parent.mkdir(parents=True)
    (layout.predictions / "polarity" / ".x.parquet.tmp-abcd1234").write_bytes(BLOB)
    layout.prediction("polarity", "kept").write_bytes(BLOB)  # a run's predictions: never garbage
    layout.audit("polarity", "kept").parent.mkdir(parents=True)
    layout.audit("polarity", "kept").write_bytes(BLOB)  # an audit: never garbage
    (layout.audits / "polarity" / ".y.parquet.tmp-abcd1234").write_bytes(BLOB)
    for area in ("corpus", "tokenizers", "tokens", "models", "features", "results", "predictions",
                 "audit"):
        age(store / area, 30)
    age(layout.corpus("cR"), 1)
    return lab


GARBAGE = {
    "corpus/cB",
    "corpus/.cZ.tmp-PID-abc",
    "tokenizers/tB",
    "tokenizers/index/key-tB.json",
    "tokens/tB/e2",
    "models/bert/K1/work",
    "models/elmo/K3",
    "models/elmo/K4",
    "features/elmo/polarity-elmo-3",
    "results/polarity/.x.parquet.tmp-abcd1234",
    "predictions/polarity/.x.parquet.tmp-abcd1234",
    "audit/polarity/.y.parquet.tmp-abcd1234",
}


def relative(plan: gc.Plan, outputs: list[gc.Output]) -> set[str]:
    names = {str(o.path.relative_to(plan.store)) for o in outputs}
    return {re.sub(r"\.tmp-\d+-", ".tmp-PID-", name) for name in names}


def snapshot(root: Path) -> dict[str, tuple[int, float]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime)
        for p in root.rglob("*")
        if p.is_file()
    }


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    """One store for the tests that only plan (they never delete)."""
    return build(tmp_path_factory.mktemp("gc"))


def test_dry_run_lists_what_and_how_much_and_deletes_nothing(shared: Lab) -> None:
    lab = shared
    before = snapshot(lab.store)
    plan = gc.gc(lab.store, lab.uri, keep_days=7, dry_run=True)
    assert relative(plan, plan.remove) == GARBAGE
    assert snapshot(lab.store) == before
    why = {str(o.path.relative_to(plan.store)): o.keep for o in plan.kept}
    assert why["models/bert/K1"] == "registered lab-bert v1"
    assert why["models/gpt/K2"] == "result rows of polarity"
    assert why["tokenizers/tG"] == "result rows of polarity"
    assert why["tokens/tA/e1"] == "needed by model:bert/K1"
    assert why["features/bert/polarity-bert-1"] == "serves kept model:bert/K1"
    assert why["corpus/cR"].startswith("modified ")
    k3 = next(o for o in plan.remove if o.path.name == "K3")
    assert k3.bytes == len(BLOB) * 6 + len(
        (lab.layout.model("elmo", "K3") / "_manifest.json").read_bytes()
    )
    assert plan.bytes == sum(o.bytes for o in plan.remove) > 6 * len(BLOB)
    k1 = next(o for o in plan.kept if o.path.name == "K1")
    assert len(BLOB) < k1.bytes < 2 * len(BLOB)  # its checkpoint is counted once, as garbage


def test_collect_removes_only_the_unreferenced_and_never_mlflow(tmp_path: Path) -> None:
    lab = build(tmp_path)
    mlflow_files = {
        k: v
        for k, v in snapshot(lab.store).items()
        if k == "mlflow.db" or k.startswith("mlartifacts")
    }
    plan = gc.gc(lab.store, lab.uri, keep_days=7, dry_run=False)
    assert relative(plan, plan.remove) == GARBAGE and not plan.skipped
    for output in plan.remove:
        assert not output.path.exists()
    for output in plan.kept:
        assert output.path.exists(), output.path
    assert (lab.layout.model("bert", "K1") / "model" / "model.safetensors").is_file()
    assert not (lab.store / "tokens" / "tB").exists()  # emptied parent pruned
    assert not list(lab.store.rglob("*.gc-*"))  # no half-removed leftovers
    after = snapshot(lab.store)
    assert {k: after[k] for k in mlflow_files} == mlflow_files
    assert gc.plan(lab.store, lab.uri, keep_days=7).remove == []


def test_recent_runs_keep_what_they_name_and_keep_days_zero_does_not(tmp_path: Path) -> None:
    lab = build(tmp_path)
    lab.age_s = 3600  # a run started an hour ago that has not registered anything yet
    lab.pretrain("elmo", {}, {}, "cB", "tB", "K3", register=False)
    kept = {str(o.path.relative_to(lab.store)) for o in gc.plan(lab.store, lab.uri, 7).kept}
    assert {"models/elmo/K3", "tokenizers/tB", "tokens/tB/e2", "corpus/cB"} <= kept
    assert "tokenizers/index/key-tB.json" in kept
    none_recent = gc.plan(lab.store, lab.uri, keep_days=0)
    assert {"corpus/cR", "models/elmo/K3"} <= relative(none_recent, none_recent.remove)


def test_keep_checkpoints_and_refusals(
    shared: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = shared
    plan = gc.plan(lab.store, lab.uri, keep_days=7, keep_checkpoints=True)
    assert "models/bert/K1/work" not in relative(plan, plan.remove)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # set by mlflow.set_tracking_uri
    (tmp_path / "empty").mkdir()
    with pytest.raises(gc.GCError, match="no MLflow tracking"):
        gc.plan(tmp_path / "empty")
    with pytest.raises(gc.GCError, match="no store at"):
        gc.plan(tmp_path / "missing", lab.uri)
    with pytest.raises(gc.GCError, match="cannot read MLflow"):
        gc.plan(lab.store, "http://127.0.0.1:9/")
