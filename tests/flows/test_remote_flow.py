"""Storage anywhere, end to end, against a real S3-compatible server (moto on 127.0.0.1):
ingest from a bucket, tokenise, mirror the store to the bucket; a second machine (a fresh
store with the same mirror) gets every output by download, and DuckDB queries the mirror."""

from __future__ import annotations

import gzip
import importlib.util
import json
import random
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from flows.pipeline import pipeline, plan
from pretrainlab.config import spec_from_dict
from storage import catalog, remote
from storage.layout import Layout


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HERE = Path(__file__).parent
moto_s3 = _load("moto_s3", HERE.parent / "storage" / "moto_s3.py")
tiny_specs = _load("tiny_specs", HERE / "tiny_specs.py")

pytestmark = pytest.mark.usefixtures("prefect_harness")

WORDS = [f"{stem}{n}" for stem in ("model", "corpus", "layer", "token") for n in range(40)]


def _documents(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))) for _ in range(n)]


def _jsonl_gz(texts: list[str]) -> bytes:
    return gzip.compress("".join(json.dumps({"text": t}) + "\n" for t in texts).encode())


@pytest.fixture(autouse=True)
def _credentials(monkeypatch):
    for key, value in moto_s3.CREDENTIALS.items():
        monkeypatch.setenv(key, value)


def _spec(tmp_path: Path, name: str, endpoint: str):
    data = tiny_specs.tiny_spec_dict(
        tmp_path / name, "remotelab", [{"path": "s3://lab/raw/*.jsonl.gz"}]
    )
    data["pretrain"]["families"] = ["word2vec"]  # the word-level tokenizer only: fast
    data["storage"] = {"remote": "s3://lab/mirror", "endpoint": endpoint, "timeout_s": 5}
    return spec_from_dict(data)


def _keys(fs: pafs.FileSystem, prefix: str) -> set[str]:
    found = fs.get_file_info(pafs.FileSelector(prefix, recursive=True))
    return {i.path.removeprefix(prefix + "/") for i in found if i.type == pafs.FileType.File}


def test_ingest_from_a_bucket_mirror_it_and_reuse_it_on_a_fresh_store(tmp_path: Path) -> None:
    with moto_s3.moto_server() as endpoint:
        moto_s3.create_bucket(endpoint, "lab")
        fs = remote.ObjectStore(endpoint=endpoint).s3()
        for i in range(2):
            with fs.open_output_stream(f"lab/raw/part-{i}.jsonl.gz", compression=None) as out:
                out.write(_jsonl_gz(_documents(i, 200)))

        first_spec = _spec(tmp_path, "machine-a", endpoint)
        first = pipeline(first_spec, until="pretrain")
        corpus_id = first["ingest"]["corpus_id"]
        word = first["tokenize"]["families"]["word"]
        assert first["ingest"]["cache_hit"] is False and first["tokenize"]["cache_hit"] is False
        assert first["ingest"]["stats"]["sources"][0]["files"] == 2
        docs = first["ingest"]["stats"]["docs_written"]
        assert docs > 300

        mirrored = _keys(fs, "lab/mirror")
        encoded = Path(word["tokens"]).relative_to(Layout.at(first_spec.store).store).as_posix()
        assert {
            f"corpus/{corpus_id}/_manifest.json",
            f"corpus/{corpus_id}/part-00000.parquet",
            f"corpus/{corpus_id}/rejects.parquet",
            f"tokenizers/{word['tokenizer_id']}/_manifest.json",
            f"tokenizers/{word['tokenizer_id']}/tokenizer.json",
            f"{encoded}/_manifest.json",
        } <= mirrored
        assert any(k.startswith("tokenizers/index/") for k in mirrored)
        model = Path(first["pretrain"]["families"]["word2vec"]["model_dir"]).parent
        model_key = model.relative_to(Layout.at(first_spec.store).store).as_posix()
        assert f"{model_key}/_manifest.json" in mirrored  # the trained model too

        second_spec = _spec(tmp_path, "machine-b", endpoint)
        started = time.perf_counter()
        second = pipeline(second_spec, until="pretrain")
        seconds = time.perf_counter() - started
        assert second["ingest"]["corpus_id"] == corpus_id
        assert second["ingest"]["cache_hit"] is True
        assert second["tokenize"]["cache_hit"] is True
        assert second["pretrain"]["cache_hit"] is True  # the model came from the mirror
        pulled_model = Path(second["pretrain"]["families"]["word2vec"]["model_dir"])
        assert pulled_model.is_relative_to(Layout.at(second_spec.store).store)
        assert (pulled_model.parent / "_manifest.json").exists()
        pulled = second["tokenize"]["families"]["word"]
        assert pulled["tokenizer_id"] == word["tokenizer_id"]
        second_store = Layout.at(second_spec.store)
        assert Path(pulled["tokens"]).is_relative_to(second_store.store)  # not machine A's path
        for part in Path(word["tokens"]).glob("part-*.parquet"):
            assert (Path(pulled["tokens"]) / part.name).read_bytes() == part.read_bytes()
        print(f"second machine: ingest + tokenize from the mirror in {seconds:.1f}s")

        count = catalog.query(
            second_store.store,
            "select count(*) as n, count(distinct corpus_id) as corpora, "
            "count(*) filter (where doc_id in (select doc_id from corpus)) as local "
            "from remote_corpus",
        ).to_pylist()
        assert count == [{"n": docs, "corpora": 1, "local": docs}]
        tokens = catalog.query(
            second_store.store, "select count(distinct tokenizer_id) as t from remote_tokens"
        ).to_pylist()
        assert tokens == [{"t": 1}]


def test_an_unreachable_source_bucket_fails_before_any_work(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{moto_s3.free_port()}"  # nothing listens there
    spec = _spec(tmp_path, "offline", endpoint)
    started = time.perf_counter()
    with pytest.raises(remote.RemoteError, match=f"cannot reach endpoint {endpoint}"):
        plan(spec, until="tokenize")
    assert time.perf_counter() - started < 10
    assert not (tmp_path / "offline" / "store" / "corpus").exists()
