"""storage.remote and storage.remote_sources against a real S3-compatible server (moto, on
127.0.0.1): sources at URLs, the store's mirror (manifest last, atomic pulls) and the fail-fast
messages."""

from __future__ import annotations

import gzip
import importlib.util
import json
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

import pipelines.data.ingest as ingest_lib
from pretrainlab.config import spec_from_dict
from storage import remote, remote_sources
from storage.atomic import MANIFEST, atomic_dir, read_manifest, write_json, write_manifest
from storage.layout import Layout

_spec = importlib.util.spec_from_file_location("moto_s3", Path(__file__).with_name("moto_s3.py"))
moto_s3 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(moto_s3)

LINES = [f"Document number {i} talks about topic {i % 7} in plain words." for i in range(300)]


@pytest.fixture(scope="module")
def endpoint():
    with moto_s3.moto_server() as url:
        yield url


@pytest.fixture(autouse=True)
def _credentials(monkeypatch):
    for key, value in moto_s3.CREDENTIALS.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def store(endpoint) -> remote.ObjectStore:
    return remote.ObjectStore(endpoint=endpoint, timeout_s=5)


@pytest.fixture
def bucket(endpoint) -> str:
    name = f"lab-{uuid.uuid4().hex[:8]}"
    moto_s3.create_bucket(endpoint, name)
    return name


def _put(store: remote.ObjectStore, key: str, data: bytes) -> None:
    with store.s3().open_output_stream(key, compression=None) as out:
        out.write(data)


def _spec(tmp_path: Path, store: remote.ObjectStore, url: str, name: str = "store"):
    return spec_from_dict(
        {
            "store": str(tmp_path / name),
            "corpus": {"sources": [{"path": "unused.txt"}]},
            "storage": {"remote": url, "endpoint": store.endpoint, "timeout_s": 5},
        }
    )


def test_glob_regex_keeps_stars_inside_one_level() -> None:
    pattern = remote_sources._glob_regex("b/raw/*.jsonl.gz")
    assert pattern.match("b/raw/a.jsonl.gz")
    assert not pattern.match("b/raw/sub/a.jsonl.gz")
    deep = remote_sources._glob_regex("b/raw/**/*.txt")
    assert deep.match("b/raw/a.txt") and deep.match("b/raw/x/y/a.txt")
    assert not deep.match("b/raw/a.txt.gz")
    assert remote_sources._glob_regex("b/part-[0-9].txt").match("b/part-3.txt")


def test_resolve_url_lists_objects_globs_and_prefixes(store, bucket) -> None:
    for key in ("raw/a.jsonl.gz", "raw/b.jsonl.gz", "raw/c.txt", "raw/.hidden.jsonl.gz"):
        _put(store, f"{bucket}/{key}", b"x\n")
    found = remote_sources.resolve_url(f"s3://{bucket}/raw/*.jsonl.gz", store)
    assert [f.url for f in found] == [
        f"s3://{bucket}/raw/a.jsonl.gz",
        f"s3://{bucket}/raw/b.jsonl.gz",
    ]
    assert [f.name for f in found] == ["a.jsonl.gz", "b.jsonl.gz"]
    assert found[0].fingerprint()["bytes"] == 2 and found[0].fingerprint()["mtime_ns"]
    prefix = remote_sources.resolve_url(f"s3://{bucket}/raw", store)
    assert [f.name for f in prefix] == ["a.jsonl.gz", "b.jsonl.gz", "c.txt"]  # hidden skipped
    one = remote_sources.resolve_url(f"s3://{bucket}/raw/c.txt", store)
    assert len(one) == 1 and one[0].size == 2
    with pytest.raises(remote.RemoteError, match="no such object"):
        remote_sources.resolve_url(f"s3://{bucket}/nothing-here", store)
    with pytest.raises(remote.RemoteError, match="glob matches no objects"):
        remote_sources.resolve_url(f"s3://{bucket}/raw/*.csv", store)


def test_ingest_from_the_bucket_equals_ingest_from_disk(tmp_path, store, bucket) -> None:
    """Streaming (gzip JSONL, plain text) and random access (Parquet) give the same corpus."""
    jsonl = gzip.compress("".join(json.dumps({"text": t}) + "\n" for t in LINES[:150]).encode())
    text = ("\n".join(LINES[150:250]) + "\n").encode()
    table = pa.table({"text": LINES[250:] + LINES[:10]})  # 10 duplicates of the JSONL ones
    local = tmp_path / "src"
    local.mkdir()
    (local / "a.jsonl.gz").write_bytes(jsonl)
    (local / "b.txt").write_bytes(text)
    pq.write_table(table, local / "c.parquet")
    for path in local.iterdir():
        _put(store, f"{bucket}/corpus/{path.name}", path.read_bytes())
    settings = ingest_lib.IngestSettings(rows_per_shard=120)
    remote_files = ingest_lib.resolve_paths(f"s3://{bucket}/corpus/*", store)
    assert all(isinstance(f, remote_sources.RemoteFile) for f in remote_files)
    local_files = ingest_lib.resolve_paths(str(local / "*"))
    stats = {}
    for name, files in (("remote", remote_files), ("local", local_files)):
        source = ingest_lib.SourceInput(paths=files, label=name)
        stats[name] = ingest_lib.ingest([source], settings, tmp_path / name)
    assert stats["remote"].docs_written == stats["local"].docs_written == 300
    assert stats["remote"].duplicates == 10
    assert stats["remote"].bytes_read == stats["local"].bytes_read
    columns = ["doc_id", "text", "split"]
    got = pq.read_table(tmp_path / "remote", columns=columns)
    want = pq.read_table(tmp_path / "local", columns=columns)
    assert got.equals(want)
    sources = set(pq.read_table(tmp_path / "remote", columns=["source"])["source"].to_pylist())
    assert sources == {f"s3://{bucket}/corpus/{n}" for n in ("a.jsonl.gz", "b.txt", "c.parquet")}
    fingerprints = ingest_lib.fingerprint_sources(remote_files)
    assert fingerprints[0] == {
        "path": f"s3://{bucket}/corpus/a.jsonl.gz",
        "bytes": len(jsonl),
        "mtime_ns": remote_files[0].mtime_ns,
    }


def _complete_output(directory: Path) -> None:
    with atomic_dir(directory) as tmp:
        pq.write_table(pa.table({"x": [1, 2, 3]}), tmp / "part-00000.parquet")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "weights.bin").write_bytes(b"\x00\x01" * 1000)
        write_manifest(tmp, {"rows": 3})


def test_mirror_pushes_then_a_fresh_store_pulls(tmp_path, store, bucket) -> None:
    url = f"s3://{bucket}/lab"
    first = remote.Mirror(tmp_path / "a", url, store)
    first.check()
    assert json.loads(Layout.at(tmp_path / "a").mirror_record.read_text())["url"] == url
    output = Layout.at(tmp_path / "a").corpus("c0ffee")
    _complete_output(output)
    assert first.sync(output) == "pushed"
    assert first.sync(output) == "in sync"
    fs = store.s3()
    keys = sorted(
        i.path
        for i in fs.get_file_info(pafs.FileSelector(f"{bucket}/lab", recursive=True))
        if i.type == pafs.FileType.File
    )
    prefix = f"{bucket}/lab/corpus/c0ffee/"
    assert [k for k in keys if k.startswith(prefix)] == [
        prefix + MANIFEST,
        prefix + "part-00000.parquet",
        prefix + "sub/weights.bin",
    ]
    second = remote.Mirror(tmp_path / "b", url, store)
    pulled = Layout.at(tmp_path / "b").corpus("c0ffee")
    assert second.sync(pulled) == "pulled"
    assert read_manifest(pulled) == {"rows": 3}
    for name in ("part-00000.parquet", "sub/weights.bin", MANIFEST):
        assert (pulled / name).read_bytes() == (output / name).read_bytes()
    assert second.sync(pulled) == "in sync"

    rows = tmp_path / "a" / "results" / "task" / "k1.parquet"
    rows.parent.mkdir(parents=True)
    pq.write_table(pa.table({"value": [0.5]}), rows)
    assert first.sync(rows) == "pushed"
    copy = tmp_path / "b" / "results" / "task" / "k1.parquet"
    assert second.sync(copy) == "pulled" and copy.read_bytes() == rows.read_bytes()
    assert second.sync(tmp_path / "b" / "results" / "task" / "absent.parquet") == "absent"


def test_an_upload_without_its_manifest_is_never_trusted(tmp_path, store, bucket) -> None:
    """A killed push leaves parts but no manifest: a fresh store does not pull it, and the
    next push completes it."""
    url = f"s3://{bucket}/lab"
    _put(store, f"{bucket}/lab/corpus/dead/part-00000.parquet", b"half a file")
    mirror = remote.Mirror(tmp_path / "b", url, store)
    target = Layout.at(tmp_path / "b").corpus("dead")
    assert mirror.sync(target) == "absent" and not target.exists()
    source = remote.Mirror(tmp_path / "a", url, store)
    _complete_output(Layout.at(tmp_path / "a").corpus("dead"))
    assert source.sync(Layout.at(tmp_path / "a").corpus("dead")) == "pushed"
    assert mirror.sync(target) == "pulled"
    assert pq.read_table(target / "part-00000.parquet")["x"].to_pylist() == [1, 2, 3]


def test_sync_pointer_pulls_the_index_and_the_output_it_names(tmp_path, store, bucket) -> None:
    url = f"s3://{bucket}/lab"
    spec_a, spec_b = _spec(tmp_path, store, url, "a"), _spec(tmp_path, store, url, "b")
    layout_a, layout_b = Layout.at(spec_a.store), Layout.at(spec_b.store)
    mirror_a = remote.open_mirror(spec_a.store, spec_a.storage)
    mirror_b = remote.open_mirror(spec_b.store, spec_b.storage)
    index_a = layout_a.tokenizer_index("key1")
    assert mirror_a.sync_pointer(index_a, layout_a.tokenizer) == "absent"
    _complete_output(layout_a.tokenizer("tok1"))
    write_json(index_a, {"tokenizer_id": "tok1"})
    assert mirror_a.sync_pointer(index_a, layout_a.tokenizer) == "pushed"
    index_b = layout_b.tokenizer_index("key1")
    assert mirror_b.sync_pointer(index_b, layout_b.tokenizer) == "pulled"
    assert json.loads(index_b.read_text()) == {"tokenizer_id": "tok1"}
    assert read_manifest(layout_b.tokenizer("tok1")) == {"rows": 3}
    local_only = spec_from_dict(
        {"store": str(tmp_path / "c"), "corpus": {"sources": [{"path": "x"}]}}
    )
    assert remote.open_mirror(local_only.store, local_only.storage) is None


def test_mirror_datasets_cover_complete_outputs_only(tmp_path, store, bucket) -> None:
    url = f"s3://{bucket}/lab"
    mirror = remote.Mirror(tmp_path / "a", url, store)
    layout = Layout.at(tmp_path / "a")
    _complete_output(layout.corpus("c1"))
    _complete_output(layout.tokens("t1", "e1"))
    for path in (layout.corpus("c1"), layout.tokens("t1", "e1")):
        mirror.sync(path)
    _put(store, f"{bucket}/lab/corpus/c2/part-00000.parquet", b"incomplete")
    found = mirror.datasets()
    assert sorted(found) == ["remote_corpus", "remote_tokens"]
    corpus = found["remote_corpus"].to_table()
    assert corpus["corpus_id"].to_pylist() == ["c1"] * 3
    tokens = found["remote_tokens"].to_table()
    assert set(tokens["tokenizer_id"].to_pylist()) == {"t1"}
    assert set(tokens["encoding_id"].to_pylist()) == {"e1"}


def test_unreachable_endpoint_fails_fast_naming_it(tmp_path) -> None:
    port = moto_s3.free_port()  # nothing listens there
    store = remote.ObjectStore(endpoint=f"http://127.0.0.1:{port}", timeout_s=2)
    started = time.perf_counter()
    with pytest.raises(remote.RemoteError) as error:
        remote_sources.resolve_url("s3://corpus/raw/*.jsonl.gz", store)
    assert time.perf_counter() - started < 10
    message = str(error.value)
    assert f"127.0.0.1:{port}" in message and "server is running" in message
    spec = _spec(tmp_path, store, "s3://corpus/lab")
    with pytest.raises(remote.RemoteError, match=f"cannot reach endpoint http://127.0.0.1:{port}"):
        remote.open_mirror(spec.store, spec.storage)  # checked on opening: before any work


def test_missing_bucket_is_named(store) -> None:
    with pytest.raises(remote.RemoteError, match="bucket 'no-such-bucket' does not exist"):
        remote_sources.resolve_url("s3://no-such-bucket/raw/a.txt", store)
    with pytest.raises(remote.RemoteError, match="no bucket in the URL"):
        remote_sources.resolve_url("s3:///raw/a.txt", store)


def test_wrong_credentials_name_the_variables_to_check() -> None:
    """moto with authentication on from the first request: unknown keys are refused."""
    with moto_s3.moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": "0"}) as strict:
        store = remote.ObjectStore(endpoint=strict, timeout_s=5)
        with pytest.raises(remote.RemoteError) as error:
            remote_sources.resolve_url("s3://corpus/raw/a.txt", store)
    message = str(error.value)
    assert "refused the credentials" in message and "AWS_ACCESS_KEY_ID" in message
    assert strict.removeprefix("http://") in message


def test_spec_rejects_a_remote_that_is_not_a_url(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"storage: .*remote must be a URL"):
        spec_from_dict(
            {"corpus": {"sources": [{"path": "x"}]}, "storage": {"remote": "bucket/prefix"}}
        )


def test_a_file_url_mirror_works_like_a_bucket(tmp_path) -> None:
    """file:// (an NFS mount, say) goes through the same pyarrow.fs code path."""
    url = (tmp_path / "shared" / "lab").as_uri()
    first = remote.Mirror(tmp_path / "a", url)
    first.check()
    _complete_output(Layout.at(tmp_path / "a").corpus("c1"))
    assert first.sync(Layout.at(tmp_path / "a").corpus("c1")) == "pushed"
    assert (tmp_path / "shared" / "lab" / "corpus" / "c1" / MANIFEST).is_file()
    target = Layout.at(tmp_path / "b").corpus("c1")
    assert remote.Mirror(tmp_path / "b", url).sync(target) == "pulled"
    assert read_manifest(target) == {"rows": 3}
    found = remote_sources.resolve_url(f"{url}/corpus/*/part-*.parquet", remote.ObjectStore())
    assert [f.url for f in found] == [f"{url}/corpus/c1/part-00000.parquet"]


def test_catalog_queries_the_mirror_and_explains_an_empty_one(tmp_path, store, bucket) -> None:
    from storage import catalog

    url = f"s3://{bucket}/lab"
    first = remote.Mirror(tmp_path / "a", url, store)
    first.check()  # records the mirror in <store>/remote.json, which the catalog reads
    with pytest.raises(catalog.CatalogError, match="no complete corpus output on the store's"):
        catalog.query(tmp_path / "a", "select count(*) from remote_corpus")
    _complete_output(Layout.at(tmp_path / "a").corpus("c9"))
    first.sync(Layout.at(tmp_path / "a").corpus("c9"))
    rows = catalog.query(
        tmp_path / "a", "select corpus_id, sum(x) as total from remote_corpus group by 1"
    ).to_pylist()
    assert rows == [{"corpus_id": "c9", "total": 6}]
