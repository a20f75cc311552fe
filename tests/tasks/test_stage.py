"""tasks.stage: the one cache-check / build / mirror mechanism every task uses, against a real
local mirror (file://) so a second store reuses what the first built."""

from __future__ import annotations

from pathlib import Path

import pytest

from pretrainlab.config import spec_from_dict
from storage.atomic import atomic_dir, write_json, write_manifest
from storage.hashing import code_hash, stable_hash
from tasks import stage


def _spec(tmp_path: Path, name: str, mirror: Path | None = None):
    data = {"store": str(tmp_path / name), "corpus": {"sources": [{"path": "x.txt"}]}}
    if mirror is not None:
        data["storage"] = {"remote": mirror.as_uri()}
    return spec_from_dict(data)


def _build_dir(calls: list[Path]):
    def build(path: Path) -> dict:
        calls.append(path)
        with atomic_dir(path) as tmp:
            (tmp / "part-0.txt").write_text("rows")
            write_manifest(tmp, {"rows": 1})
        return {"rows": 1, "cache_hit": False}

    return build


def test_a_complete_output_is_built_once_then_reused(tmp_path: Path) -> None:
    store = stage.store_of(_spec(tmp_path, "store"))
    assert store.mirror is None and store.sync(tmp_path / "anything") == "local"
    calls: list[Path] = []
    out = store.layout.corpus("c1")
    first = stage.cached_output(store, out, _build_dir(calls), lock=True)
    again = stage.cached_output(store, out, _build_dir(calls), lock=True)
    assert calls == [out] and not first["cache_hit"]
    assert again == {"rows": 1, "output": str(out), "cache_hit": True}


def test_an_incomplete_output_is_rebuilt(tmp_path: Path) -> None:
    store = stage.store_of(_spec(tmp_path, "store"))
    out = store.layout.corpus("c1")
    out.mkdir(parents=True)
    (out / "part-0.txt").write_text("half")  # no manifest: a killed write
    calls: list[Path] = []
    assert not stage.cached_output(store, out, _build_dir(calls))["cache_hit"]
    assert calls == [out]


def test_a_second_store_pulls_what_the_first_built(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    first = stage.store_of(_spec(tmp_path, "a", mirror))
    second = stage.store_of(_spec(tmp_path, "b", mirror))
    calls: list[Path] = []
    stage.cached_output(first, first.layout.corpus("c1"), _build_dir(calls))
    assert (mirror / "corpus" / "c1" / "_manifest.json").is_file()  # pushed once built
    pulled = stage.cached_output(second, second.layout.corpus("c1"), _build_dir(calls))
    assert pulled["cache_hit"] and len(calls) == 1
    assert (second.layout.corpus("c1") / "part-0.txt").read_text() == "rows"


def test_an_index_entry_travels_with_the_output_it_names(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    first = stage.store_of(_spec(tmp_path, "a", mirror))
    second = stage.store_of(_spec(tmp_path, "b", mirror))

    def train(index: Path) -> dict:
        with atomic_dir(first.layout.tokenizer("tok1")) as tmp:
            write_manifest(tmp, {"vocab": 5})
        write_json(index, {"tokenizer_id": "tok1"})
        return {"tokenizer_id": "tok1", "cache_hit": False}

    def read(index: Path) -> dict | None:
        return {"cache_hit": True} if index.is_file() else None

    stage.cached_output(first, first.layout.tokenizer_index("k"), train, read,
                        target_of=first.layout.tokenizer)
    found = stage.cached_output(second, second.layout.tokenizer_index("k"), train, read,
                                target_of=second.layout.tokenizer)
    assert found == {"cache_hit": True}
    assert (second.layout.tokenizer("tok1") / "_manifest.json").is_file()


def test_content_key_is_the_inputs_and_the_code(tmp_path: Path) -> None:
    inputs = {"corpus_id": "c1", "max": 3}
    assert stage.content_key(inputs, [stage]) == stable_hash(
        {**inputs, "code": code_hash([stage])}
    )
    assert stage.content_key(inputs, [stage]) != stage.content_key(inputs, [pytest])
