"""The `pretrainlab` command as a user runs it: real subprocesses, real Prefect, real files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "pretrainlab.cli"]


def cli(*args: str, env: dict[str, str], cwd: Path, timeout: float = 300):
    return subprocess.run(
        [*CLI, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    values = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "COLUMNS": "200",
        "PYTHONPATH": str(ROOT),
    }
    values.pop("MLFLOW_TRACKING_URI", None)
    return values


def write_spec(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_bad_spec_names_file_field_and_expectation(tmp_path: Path, env) -> None:
    spec = write_spec(
        tmp_path / "bad.yaml",
        {
            "corpus": {"sources": [{"path": "x.txt", "format": "txt"}], "min_chars": "ten"},
            "surprise": 1,
        },
    )
    done = cli("run", str(spec), "--dry-run", env=env, cwd=tmp_path)
    assert done.returncode == 2
    message = " ".join(done.stderr.split())
    assert "bad.yaml" in message
    assert "corpus.sources[0].format" in message and "'text'" in message
    assert "corpus.min_chars" in message and "integer" in message
    assert "surprise" in message and "Extra inputs are not permitted" in message
    assert "Traceback" not in done.stderr


def test_missing_source_is_one_clear_message(tmp_path: Path, env) -> None:
    spec = write_spec(
        tmp_path / "s.yaml",
        {
            "store": str(tmp_path / "store"),
            "corpus": {"sources": [{"path": "nowhere/*.txt"}]},
        },
    )
    done = cli("run", str(spec), "--until", "ingest", env=env, cwd=tmp_path)
    assert done.returncode == 2
    assert "nowhere/*.txt" in done.stderr and "Traceback" not in done.stderr


def _big_corpus(path: Path, n_docs: int) -> Path:
    words = (ROOT / "README.md").read_text().split() or ["word"]
    with path.open("w", encoding="utf-8") as handle:
        for i in range(n_docs):
            handle.write(f"doc {i}: " + " ".join(words[(i + j) % len(words)] for j in range(60)))
            handle.write("\n")
    return path


def test_killed_ingest_resumes_to_identical_output(tmp_path: Path, env) -> None:
    source = _big_corpus(tmp_path / "big.txt", 150_000)
    specs = {}
    for name in ("killed", "clean"):
        specs[name] = write_spec(
            tmp_path / f"{name}.yaml",
            {
                "store": str(tmp_path / name),
                "experiment": "killtest",
                "corpus": {"sources": [{"path": str(source)}], "rows_per_shard": 10_000},
            },
        )
    process = subprocess.Popen(
        [*CLI, "run", str(specs["killed"]), "--until", "ingest"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    corpus_root = tmp_path / "killed" / "corpus"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        partial = (
            [p for p in corpus_root.glob(".*tmp-*/part-*.parquet")] if corpus_root.exists() else []
        )
        if partial:
            break
        time.sleep(0.05)
    assert partial, "ingest never started writing parts"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert not list(corpus_root.glob("*/_manifest.json")), (
        "a killed run must leave nothing complete"
    )

    for name in ("killed", "clean"):
        done = cli("run", str(specs[name]), "--until", "ingest", env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
    leftovers = [p.name for p in corpus_root.iterdir() if p.name.startswith(".")]
    assert leftovers == [], "the killed run's temp dir is removed by the next run"
    killed = sorted((tmp_path / "killed" / "corpus").glob("*/part-*.parquet"))
    clean = sorted((tmp_path / "clean" / "corpus").glob("*/part-*.parquet"))
    assert [p.parent.name for p in killed] == [p.parent.name for p in clean]  # same corpus_id
    assert len(killed) == 15
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(killed, clean, strict=True))

    done = cli(
        "query",
        "select split, count(*) as n from corpus group by 1 order by 1",
        "--spec",
        str(specs["clean"]),
        "--format",
        "json",
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(done.stdout)
    assert sum(row["n"] for row in rows) == 150_000
    assert {row["split"] for row in rows} == {"train", "valid"}

    done = cli("run", str(specs["clean"]), "--until", "ingest", "--dry-run", env=env, cwd=tmp_path)
    assert done.returncode == 0 and "cached" in done.stdout


def test_query_errors_say_what_to_do(tmp_path: Path, env) -> None:
    store = tmp_path / "store"
    done = cli("query", "select 1", "--store", str(store), env=env, cwd=tmp_path)
    assert done.returncode == 2 and "pretrainlab run SPEC" in done.stderr
    store.mkdir()
    done = cli("query", "select * from no_such_table", "--store", str(store), env=env, cwd=tmp_path)
    assert done.returncode == 2
    assert "no_such_table" in done.stderr and "catalog_info" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_user_error_inside_a_flow_prints_its_message_once_without_traceback(
    tmp_path: Path, env
) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    spec = write_spec(
        tmp_path / "s.yaml",
        {"store": str(tmp_path / "store"), "corpus": {"sources": [{"path": str(empty)}]}},
    )
    done = cli("run", str(spec), "--until", "ingest", env=env, cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-3000:]
    assert output.count("the corpus is empty") == 1, output[-3000:]
    assert "Traceback" not in output
    assert "Task run 'build-corpus" in output and "failed: IngestError" in output  # which task


def test_check_rejects_a_misspelt_mode_in_seconds(tmp_path: Path, env) -> None:
    spec = write_spec(
        tmp_path / "s.yaml",
        {"corpus": {"sources": [{"path": "c.txt"}]}, "transfer": {"modes": ["partal:1"]}},
    )
    started = time.monotonic()
    done = cli("check", str(spec), env=env, cwd=tmp_path)
    assert done.returncode == 2 and time.monotonic() - started < 30
    message = " ".join(done.stderr.split())
    assert "transfer.modes[0]" in message and "'partal:1'" in message
    assert "finetune | partial:k | partial:k:frozen" in message and "Traceback" not in message
    debug = cli("--debug", "check", str(spec), env=env, cwd=tmp_path)
    assert debug.returncode == 2 and "Traceback" in debug.stderr and "partal:1" in debug.stderr
    assert not (tmp_path / ".pretrainlab").exists()  # nothing written
