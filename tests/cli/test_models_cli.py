"""`pretrainlab models list|compare|promote` and `pretrainlab gc` on a real tiny store.

In-process (typer's runner): the same parsing, exit codes and output as the console script,
without paying ~10 s of imports per command on a busy 2-core machine (tests/cli/test_cli.py
already proves the console script itself starts)."""

from __future__ import annotations

import csv
import io
import json

import pytest
from typer.testing import CliRunner

from pretrainlab.cli import app
from tests.storage.lab_store import Lab, age, make_lab, output_dir


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    lab = make_lab(tmp_path_factory.mktemp("cli"))
    v1 = lab.pretrain("bert", {"pretrain.bert.n_layer": "1"}, {"valid_loss": 5.0}, model_key="K1")
    v2 = lab.pretrain("bert", {"pretrain.bert.n_layer": "2"}, {"valid_loss": 4.0}, model_key="K2")
    lab.transfer(v1, "bert", "polarity", "finetune", [0.5, 0.6])
    lab.transfer(v2, "bert", "polarity", "finetune", [0.7, 0.8])
    output_dir(lab.layout.model("bert", "K1"), {"work/checkpoint.pt": b"x" * 2048}, {"run_id": v1})
    output_dir(lab.layout.model("gpt", "old"), {"model/weights": b"x" * 4096}, {"run_id": "gone"})
    age(lab.store / "models", 30)
    return lab


@pytest.fixture(autouse=True)
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # rich reads it at print time


class Done:
    def __init__(self, result) -> None:
        self.returncode, self.stdout, self.stderr = result.exit_code, result.stdout, result.stderr


def cli(lab: Lab, *args: str) -> Done:
    """The store's own mlflow.db: no MLFLOW_TRACKING_URI (conftest removes it per test)."""
    return Done(CliRunner().invoke(app, [*args, "--store", str(lab.store)]))


def test_list_and_compare(lab: Lab) -> None:
    listed = cli(lab, "models", "list", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["name"], r["version"], r["aliases"]) for r in rows] == [
        ("lab-bert", 1, ""),
        ("lab-bert", 2, "candidate"),
    ]
    compared = cli(lab, "models", "compare", "lab-bert@v1", "lab-bert@v2", "--format", "csv")
    assert compared.returncode == 0, compared.stderr
    table = list(csv.DictReader(io.StringIO(compared.stdout)))
    delta = next(r for r in table if r["section"] == "downstream" and r["version"] == "lab-bert@v2")
    assert float(delta["delta"]) == pytest.approx(0.2) and delta["task"] == "polarity"
    assert any(r["key"] == "pretrain.bert.n_layer" for r in table)
    as_json = json.loads(cli(lab, "models", "compare", "lab-bert@v2", "--format", "json").stdout)
    loss = next(r for r in as_json if r["key"] == "valid_loss")
    assert loss["section"] == "pretrain" and loss["value"] == 4.0  # a number, not text
    shown = cli(lab, "models", "compare", "lab-bert")
    assert shown.returncode == 0, shown.stderr
    assert "downstream" in shown.stdout and "+0.2" in shown.stdout and "lab-bert@v2" in shown.stdout


def test_promote_dry_run_then_for_real(lab: Lab) -> None:
    dry = cli(lab, "models", "promote", "lab-bert", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would move champion" in " ".join(dry.stdout.split())
    assert "champion" not in lab.client.get_registered_model("lab-bert").aliases
    done = cli(lab, "models", "promote", "lab-bert", "--margin", "0.05", "--format", "json")
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["applied"] and record["best"] == 2 and record["rule"]["margin"] == 0.05
    assert str(lab.client.get_registered_model("lab-bert").aliases["champion"]) == "2"


def test_gc_dry_run_and_clear_errors(lab: Lab) -> None:
    dry = cli(lab, "gc", "--dry-run", "--show-kept")
    assert dry.returncode == 0, dry.stderr
    text = " ".join(dry.stdout.split())
    assert "models/gpt/old" in text and "models/bert/K1/work" in text
    assert "would remove: 2 item(s), 6.0 KB" in text and "registered lab-bert v1" in text
    assert (lab.layout.model("gpt", "old") / "model" / "weights").is_file()
    bad = cli(lab, "models", "compare", "lab-gpt@v1")
    assert bad.returncode == 2 and "registered: lab-bert@v1" in " ".join(bad.stderr.split())
    assert "Traceback" not in bad.stderr
