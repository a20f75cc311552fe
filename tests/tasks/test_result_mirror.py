"""A transfer run's per-item predictions travel with its result rows through the store's
mirror (a real file:// mirror): a second store that reuses the rows gets the predictions too."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pretrainlab.config import spec_from_dict
from storage.atomic import write_parquet
from storage.layout import Layout
from tasks import transfer


def _spec(tmp_path: Path, name: str, mirror: Path):
    return spec_from_dict({"store": str(tmp_path / name), "corpus": {"sources": [{"path": "x"}]},
                           "storage": {"remote": mirror.as_uri()}})


def test_predictions_are_pushed_and_pulled_with_their_rows(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    calls: list[Path] = []

    def compute(path: Path) -> dict:
        calls.append(path)
        layout = Layout.at(path.parents[2])
        write_parquet(layout.prediction("pos", path.stem), pa.table({"item": [0, 1]}))
        write_parquet(path, pa.table({"run_id": ["r1"]}))
        return {"cache_hit": False, "rows": 1, "run_id": "r1"}

    first = transfer._result(_spec(tmp_path, "a", mirror), "pos", "k1", compute)
    second = transfer._result(_spec(tmp_path, "b", mirror), "pos", "k1", compute)
    assert not first["cache_hit"] and second["cache_hit"] and len(calls) == 1
    pulled = Layout.at(tmp_path / "b").prediction("pos", "k1")
    assert pulled.exists() and pq.read_table(pulled).num_rows == 2
