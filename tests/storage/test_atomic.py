"""Atomic writes: nothing half-written is ever visible or trusted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from storage.atomic import (
    atomic_dir,
    is_complete,
    read_manifest,
    remove_stale_temps,
    write_json,
    write_manifest,
    write_parquet,
)


def test_failed_file_write_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "t.parquet"
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "d") as tmp:
        write_parquet(tmp / "x.parquet", pa.table({"a": [1]}))
        raise RuntimeError("boom")
    assert not (tmp_path / "d").exists()
    assert list(tmp_path.iterdir()) == []
    write_parquet(target, pa.table({"a": [1, 2]}))
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]


def test_directory_is_complete_only_with_its_manifest(tmp_path: Path) -> None:
    final = tmp_path / "out"
    with atomic_dir(final) as tmp:
        (tmp / "part-0").write_text("data")
        assert not final.exists()
        write_manifest(tmp, {"rows": 1})
    assert is_complete(final) and read_manifest(final) == {"rows": 1}
    (final / "_manifest.json").write_text("{truncated")
    assert not is_complete(final)


def test_incomplete_leftover_is_replaced(tmp_path: Path) -> None:
    final = tmp_path / "out"
    final.mkdir()
    (final / "half").write_text("from a crashed run")
    with atomic_dir(final) as tmp:
        write_manifest(tmp, {"ok": True})
    assert sorted(p.name for p in final.iterdir()) == ["_manifest.json"]


def test_temps_of_dead_processes_are_removed_live_ones_kept(tmp_path: Path) -> None:
    final = tmp_path / "out"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    stale = tmp_path / f".out.tmp-{dead}-abc"
    live = tmp_path / f".out.tmp-{os.getpid()}-def"
    stale.mkdir()
    live.mkdir()
    assert remove_stale_temps(final) == [stale]
    assert live.exists() and not stale.exists()


def test_write_json_is_readable_and_sorted(tmp_path: Path) -> None:
    path = write_json(tmp_path / "a" / "b.json", {"b": 1, "a": "é"})
    assert path.read_text(encoding="utf-8").index('"a"') < path.read_text().index('"b"')


def test_exclusive_makes_a_second_builder_wait_and_names_the_holder(tmp_path: Path) -> None:
    import os
    import threading

    from storage.atomic import exclusive

    target = tmp_path / "models" / "gpt" / "abc"
    order: list[str] = []
    waited: list[str] = []
    holding = threading.Event()

    def second() -> None:
        holding.wait()
        with exclusive(target, waited.append):
            order.append("second")

    thread = threading.Thread(target=second)
    thread.start()
    with exclusive(target):
        holding.set()
        thread.join(timeout=0.5)
        assert thread.is_alive()  # blocked while the first one holds it
        order.append("first")
    thread.join(timeout=10)
    assert order == ["first", "second"]
    assert waited == [f"another run (pid {os.getpid()}) is building {target}: waiting for it"]
