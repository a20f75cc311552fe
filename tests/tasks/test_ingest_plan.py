"""The corpus id is computed from the sources' bytes once per process while they are unchanged."""

from __future__ import annotations

import inspect
from pathlib import Path

import pipelines.data.ingest as ingest_lib
from pretrainlab.config import spec_from_dict
from tasks.ingest import plan_corpus_plain


def test_sources_are_hashed_once_until_they_change(tmp_path: Path, monkeypatch) -> None:
    source = tmp_path / "corpus.txt"
    source.write_text("one document\nanother one\n", encoding="utf-8")
    spec = spec_from_dict(
        {"store": str(tmp_path / "store"), "corpus": {"sources": [{"path": str(source)}]}}
    )
    calls = []
    real = ingest_lib.fingerprint_sources
    monkeypatch.setattr(ingest_lib, "fingerprint_sources", lambda p: calls.append(p) or real(p))

    first = plan_corpus_plain(spec)
    assert plan_corpus_plain(spec).corpus_id == first.corpus_id
    assert len(calls) == 1  # the second plan reused the hashes

    source.write_text("one document\nanother one, edited\n", encoding="utf-8")
    assert plan_corpus_plain(spec).corpus_id != first.corpus_id
    assert len(calls) == 2


def test_every_ingest_module_is_in_the_corpus_id(tmp_path: Path, monkeypatch) -> None:
    """Editing any module of the ingest package (a reader, the cleaning) names a new corpus."""
    package = Path(ingest_lib.__file__).parent
    modules = {f"pipelines.data.ingest.{p.stem}" for p in package.glob("*.py")} - {
        "pipelines.data.ingest.__init__"
    }
    assert {m.__name__ for m in ingest_lib.CODE} == modules

    source = tmp_path / "corpus.txt"
    source.write_text("one document\n", encoding="utf-8")
    spec = spec_from_dict(
        {"store": str(tmp_path / "store"), "corpus": {"sources": [{"path": str(source)}]}}
    )
    before = plan_corpus_plain(spec).corpus_id
    real = inspect.getsource
    readers = ingest_lib.readers
    monkeypatch.setattr(
        inspect, "getsource", lambda m: real(m) + ("# edited\n" if m is readers else "")
    )
    assert plan_corpus_plain(spec).corpus_id != before
