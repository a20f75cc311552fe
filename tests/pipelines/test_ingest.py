"""pipelines.data.ingest: every source format, cleaning, dedup, splits, rejects and errors.

Data is written by the tests into tmp_path, plus small real slices shipped with gensim
(the Lee news corpus and the Wikipedia dump sample).
"""

from __future__ import annotations

import bz2
import csv
import gzip
import hashlib
import json
import lzma
import unicodedata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from gensim.test.utils import datapath

import pipelines.data.ingest as ingest_mod
from pipelines.data.ingest import (
    CORPUS_SCHEMA,
    REJECTS_SCHEMA,
    IngestError,
    IngestSettings,
    SourceInput,
    detect_format,
    fingerprint_sources,
    ingest,
    resolve_paths,
)

WIKI = Path(datapath("enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"))
LEE = Path(datapath("lee_background.cor"))
DOCS = ["The first document.", "A second, longer document about pretraining.", "Third one."]
COMPRESSORS = {
    ".gz": gzip.compress,
    ".bz2": bz2.compress,
    ".xz": lzma.compress,
    ".zst": zstandard.ZstdCompressor().compress,
}


def source(path: Path | list[Path], **options) -> SourceInput:
    paths = path if isinstance(path, list) else [path]
    return SourceInput(paths=paths, label=str(paths[0]), **options)


def run(tmp_path: Path, *sources: SourceInput, out: str = "out", **settings):
    """Ingest and read everything back: (stats, corpus rows, reject rows)."""
    out_dir = tmp_path / out
    stats = ingest(list(sources), IngestSettings(**settings), out_dir)
    parts = sorted(out_dir.glob("part-*.parquet"))
    corpus = pa.concat_tables([pq.read_table(p) for p in parts]) if parts else None
    rejects = pq.read_table(out_dir / "rejects.parquet")
    assert rejects.schema.equals(REJECTS_SCHEMA)
    assert corpus is not None and corpus.schema.equals(CORPUS_SCHEMA)
    assert stats.docs_in == stats.docs_written + stats.duplicates + stats.rejected
    assert stats.rejected == rejects.num_rows == sum(stats.rejected_by_reason.values())
    return stats, corpus.to_pylist(), rejects.to_pylist()


def texts(rows: list[dict]) -> list[str]:
    return [row["text"] for row in rows]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- finding files ---------------------------------------------------------------------------


def test_resolve_paths_file_dir_glob_sorted_and_hidden_skipped(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / ".hidden").mkdir()
    for name in ["d/b.txt", "d/a.txt", "d/sub/c.txt", "d/.secret.txt", "d/.hidden/x.txt"]:
        (tmp_path / name).write_text("x\n")
    d = tmp_path / "d"
    assert resolve_paths(str(d / "a.txt")) == [d / "a.txt"]
    assert resolve_paths(str(d)) == [d / "a.txt", d / "b.txt", d / "sub" / "c.txt"]
    assert resolve_paths(str(d / "*.txt")) == [d / "a.txt", d / "b.txt"]
    assert resolve_paths(str(d / "**" / "*.txt")) == [d / "a.txt", d / "b.txt", d / "sub/c.txt"]


def test_resolve_paths_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match=r"nope\.txt: no such file or directory"):
        resolve_paths(str(tmp_path / "nope.txt"))
    with pytest.raises(IngestError, match=r"\*\.jsonl: the glob matches no files"):
        resolve_paths(str(tmp_path / "*.jsonl"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(IngestError, match="empty: the directory holds no"):
        resolve_paths(str(tmp_path / "empty"))


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("a.txt", "text"),
        ("a.text", "text"),
        ("README", "text"),
        ("a.cor", "text"),
        ("a.txt.gz", "text"),
        ("a.jsonl", "jsonl"),
        ("a.JSON.zst", "jsonl"),
        ("a.ndjson.xz", "jsonl"),
        ("a.csv", "csv"),
        ("a.tsv.bz2", "csv"),
        ("a.parquet", "parquet"),
        ("dump.xml", "mediawiki"),
        ("dump.xml.bz2", "mediawiki"),
        (WIKI.name, "mediawiki"),
    ],
)
def test_detect_format(name: str, fmt: str) -> None:
    assert detect_format(Path(name)) == fmt


def test_fingerprint_sources(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "a.txt", DOCS)
    data = path.read_bytes()
    assert fingerprint_sources([path]) == [
        {"path": str(path), "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    ]


# --- formats ---------------------------------------------------------------------------------


def test_text_one_doc_per_line(tmp_path: Path) -> None:
    stats, rows, rejects = run(tmp_path, source(write_lines(tmp_path / "a.txt", DOCS)))
    assert texts(rows) == DOCS
    assert stats.docs_written == 3 and rejects == []
    assert [r["n_chars"] for r in rows] == [len(d) for d in DOCS]
    assert {r["source"] for r in rows} == {str(tmp_path / "a.txt")}


def test_text_one_doc_per_paragraph(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("para one\nstill one\n\n\n  \npara two\r\n\r\nthree\nends", encoding="utf-8")
    stats, rows, _ = run(tmp_path, source(path, doc_per="paragraph"))
    assert texts(rows) == ["para one\nstill one", "para two", "three\nends"]
    assert stats.docs_in == 3  # blank separator lines are not records


def test_text_one_doc_per_file(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "1.txt").write_text("  whole\r\nfile one\n\n", encoding="utf-8")
    (tmp_path / "d" / "2.txt").write_text("file two", encoding="utf-8")
    _, rows, _ = run(tmp_path, source(resolve_paths(str(tmp_path / "d")), doc_per="file"))
    assert texts(rows) == ["whole\nfile one", "file two"]


def test_directory_and_glob_keep_sorted_file_order(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    write_lines(tmp_path / "d" / "b.txt", ["from b"])
    write_lines(tmp_path / "d" / "a.txt", ["from a"])
    write_lines(tmp_path / "d" / "sub" / "c.txt", ["from c"])
    _, rows, _ = run(tmp_path, source(resolve_paths(str(tmp_path / "d"))))
    assert texts(rows) == ["from a", "from b", "from c"]
    assert [r["source"] for r in rows][-1] == str(tmp_path / "d" / "sub" / "c.txt")
    _, rows, _ = run(tmp_path, source(resolve_paths(str(tmp_path / "d" / "*.txt"))), out="g")
    assert texts(rows) == ["from a", "from b"]


@pytest.mark.parametrize("suffix", list(COMPRESSORS))
def test_compressed_text(tmp_path: Path, suffix: str) -> None:
    data = ("\n".join(DOCS) + "\n").encode()
    path = tmp_path / f"a.txt{suffix}"
    path.write_bytes(COMPRESSORS[suffix](data))
    stats, rows, _ = run(tmp_path, source(path))
    assert texts(rows) == DOCS
    assert stats.bytes_read == path.stat().st_size


def test_zstd_multiple_frames(tmp_path: Path) -> None:
    compress = zstandard.ZstdCompressor().compress
    path = tmp_path / "a.jsonl.zst"
    path.write_bytes(b"".join(compress(json.dumps({"text": d}).encode() + b"\n") for d in DOCS))
    _, rows, _ = run(tmp_path, source(path))
    assert texts(rows) == DOCS


def test_jsonl_docs_and_per_line_rejects(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl.gz"
    lines = [
        json.dumps({"body": "good one", "id": 1}).encode(),
        b'{"body": "broken',
        json.dumps({"other": "no body"}).encode(),
        json.dumps({"body": 42}).encode(),
        b"",
        json.dumps({"body": "bad"}).encode()[:-2] + b"\xff\xfe" + b'"}',
        json.dumps({"body": "\ud800 lone surrogate"}).encode(),
        json.dumps({"body": "good two 中文"}, ensure_ascii=False).encode(),
        json.dumps({"body": None}).encode(),
        b"[1, 2]",
    ]
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    stats, rows, rejects = run(tmp_path, source(path, text_field="body"))
    assert texts(rows) == ["good one", "good two 中文"]
    assert [(r["position"], r["reason"]) for r in rejects] == [
        (2, "malformed_json"),
        (3, "missing_field"),
        (4, "not_text"),
        (5, "empty"),
        (6, "invalid_utf8"),
        (7, "invalid_utf8"),
        (9, "missing_field"),
        (10, "missing_field"),
    ]
    assert rejects[0]["sample"] == '{"body": "broken'
    assert stats.rejected_by_reason["malformed_json"] == 1


def test_csv_and_tsv_with_named_column(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        writer.writerow([1, "plain row"])
        writer.writerow([2, "a quoted, multi-line\nrow"])
        writer.writerow([3])
        writer.writerow([4, "after the short row"])
    _, rows, rejects = run(tmp_path, source(path))
    assert texts(rows) == ["plain row", "a quoted, multi-line\nrow", "after the short row"]
    assert [(r["position"], r["reason"]) for r in rejects] == [(5, "missing_field")]
    tsv = tmp_path / "b.tsv.gz"
    tsv.write_bytes(gzip.compress(b"label\tsentence\n1\tone, with comma\n"))
    _, rows, _ = run(tmp_path, source(tsv, text_field="sentence"), out="tsv")
    assert texts(rows) == ["one, with comma"]


def test_parquet_with_named_column_and_nulls(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    table = pa.table({"n": [1, 2, 3, 4], "content": ["alpha", None, "beta", "  "]})
    pq.write_table(table, path, row_group_size=2)
    _, rows, rejects = run(tmp_path, source(path, text_field="content"))
    assert texts(rows) == ["alpha", "beta"]
    assert [(r["position"], r["reason"]) for r in rejects] == [(2, "missing_field"), (4, "empty")]


def test_mediawiki_dump_sample_with_limit(tmp_path: Path) -> None:
    stats, rows, rejects = run(tmp_path, source(WIKI, limit=3))
    assert stats.docs_written == 3 and rejects == []
    assert texts(rows)[0].startswith("Anarchism is a political philosophy")
    for text in texts(rows):
        assert "[[" not in text and "{{" not in text and "'''" not in text and "==" not in text
        assert len(text) > 5000 and not text.lower().startswith("#redirect")


def test_mediawiki_skips_redirects_and_other_namespaces(tmp_path: Path) -> None:
    def page(title: str, ns: int, text: str, redirect: bool = False) -> str:
        mark = f'<redirect title="{text}" />' if redirect else ""
        return (
            f"<page><title>{title}</title><ns>{ns}</ns><id>1</id>{mark}<revision>"
            f"<text>{text}</text></revision></page>"
        )

    dump = (
        '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/"><siteinfo><sitename>W'
        "</sitename></siteinfo>"
        + page("Talk:A", 1, "talk talk")
        + page("B", 0, "#REDIRECT [[A]]", redirect=True)
        + page("C", 0, "#redirect [[A]]")
        + page("A", 0, "'''A''' is a [[letter|symbol]].\n== History ==\nOld.")
        + "</mediawiki>"
    )
    path = tmp_path / "dump.xml.bz2"
    path.write_bytes(bz2.compress(dump.encode()))
    stats, rows, _ = run(tmp_path, source(path))
    assert texts(rows) == ["A is a symbol.\nHistory\nOld."]
    assert rows[0]["source"] == str(path)
    assert stats.skipped == 3 and stats.docs_in == 1


def test_real_news_slice_one_doc_per_line(tmp_path: Path) -> None:
    lines = LEE.read_text(encoding="utf-8").split("\n")
    expected = list(
        dict.fromkeys(
            s for s in (unicodedata.normalize("NFC", line).strip() for line in lines[:100]) if s
        )
    )
    path = write_lines(tmp_path / "lee.txt", lines[:100])
    _, rows, _ = run(tmp_path, source(path))
    assert texts(rows) == expected
    _, limited, _ = run(tmp_path, source(LEE, limit=25), out="limited")
    assert texts(limited) == expected[:25]


# --- cleaning, dedup, splits -------------------------------------------------------------------


def test_nfc_composed_and_decomposed_are_one_document(tmp_path: Path) -> None:
    composed, decomposed = "caf\u00e9 na\u00efve", "cafe\u0301 nai\u0308ve"
    assert composed != decomposed
    path = write_lines(tmp_path / "a.txt", [decomposed, composed])
    stats, rows, _ = run(tmp_path, source(path))
    assert texts(rows) == [composed]
    assert rows[0]["n_chars"] == len(composed) and stats.duplicates == 1


def test_dedup_within_and_across_sources(tmp_path: Path) -> None:
    a = write_lines(tmp_path / "a.txt", ["x one", "  x two  ", "x one", "x two"])
    b = tmp_path / "b.jsonl"
    b.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["x two", "x three"]))
    stats, rows, _ = run(tmp_path, source(a), source(b))
    assert texts(rows) == ["x one", "x two", "x three"]
    assert stats.duplicates == 3 and stats.docs_in == 6
    assert [s.duplicates for s in stats.sources] == [2, 1]


def test_doc_id_and_split_follow_the_hash_and_never_change(tmp_path: Path) -> None:
    first = [f"document number {i}" for i in range(200)]
    stats, rows, _ = run(
        tmp_path, source(write_lines(tmp_path / "a.txt", first)), valid_fraction=0.25
    )
    for row in rows:
        digest = hashlib.sha256(row["text"].encode()).hexdigest()
        assert row["doc_id"] == digest[:16]
        assert row["split"] == ("valid" if int(digest[16:24], 16) / 2**32 < 0.25 else "train")
    assert 20 < stats.valid_docs < 80 and stats.train_docs + stats.valid_docs == 200
    more = [f"another text {i}" for i in range(300)] + first
    _, grown, _ = run(
        tmp_path, source(write_lines(tmp_path / "b.txt", more)), out="grown", valid_fraction=0.25
    )
    before = {r["doc_id"]: r["split"] for r in rows}
    after = {r["doc_id"]: r["split"] for r in grown}
    assert {k: after[k] for k in before} == before


def test_rejects_have_reasons_positions_and_samples(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(
        b"fine line\n"  # 1
        b"bad \xc3\x28 utf8\n"  # 2
        b"has a NUL \x00 byte\n"  # 3
        b"\x01\x02\x03\x04ctl\n"  # 4: mostly control characters
        b"   \t \n"  # 5
        b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n"  # 6: 50 characters
        b"a bell \x07 in a sentence is kept\n"  # 7: a low share of control characters
        b"tab\tand\x0cform feed are text\n"  # 8
    )
    stats, rows, rejects = run(tmp_path, source(path), max_chars=30)
    kept = ["fine line", "a bell \x07 in a sentence is kept", "tab\tand\x0cform feed are text"]
    assert texts(rows) == kept
    assert [(r["position"], r["reason"]) for r in rejects] == [
        (2, "invalid_utf8"),
        (3, "binary"),
        (4, "binary"),
        (5, "empty"),
        (6, "too_long"),
    ]
    assert rejects[0]["sample"] == "bad \ufffd( utf8"
    assert rejects[4]["sample"] == "x" * 50
    assert stats.rejected_by_reason == {
        "binary": 2,
        "empty": 1,
        "invalid_utf8": 1,
        "too_long": 1,
    }
    assert all(r["source"] == str(path) for r in rejects)


def test_min_chars_and_sample_length(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "a.txt", ["tiny", "long enough", "y" * 500])
    _, rows, rejects = run(tmp_path, source(path), min_chars=5, max_chars=100)
    assert texts(rows) == ["long enough"]
    assert [r["reason"] for r in rejects] == ["empty", "too_long"]
    assert len(rejects[1]["sample"]) == 200


def test_chinese_text_is_kept_intact(tmp_path: Path) -> None:
    docs = ["自然语言处理是人工智能的一个分支。", "预训练模型：词向量、ELMo、GPT 和 BERT。"]
    _, rows, _ = run(tmp_path, source(write_lines(tmp_path / "zh.txt", docs)))
    assert texts(rows) == docs
    assert [r["n_chars"] for r in rows] == [len(d) for d in docs]


def test_shards_limit_progress_and_stats(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    write_lines(tmp_path / "d" / "a.txt", [f"a doc {i}" for i in range(1500)])
    write_lines(tmp_path / "d" / "b.txt", [f"b doc {i}" for i in range(1500)])
    calls: list[tuple[int, int]] = []
    out = tmp_path / "out"
    stats = ingest(
        [source(resolve_paths(str(tmp_path / "d")), limit=2000)],
        IngestSettings(rows_per_shard=700),
        out,
        progress=lambda *a: calls.append(a),
    )
    parts = sorted(out.glob("part-*.parquet"))
    assert [pq.read_metadata(p).num_rows for p in parts] == [700, 700, 600]
    assert stats.parts == 3 and stats.docs_written == 2000 and stats.docs_in == 2000
    assert pq.read_table(parts[-1]).column("text").to_pylist()[-1] == "b doc 499"
    assert len(calls) >= 2 and calls == sorted(calls)
    assert calls[-1] == (stats.bytes_read, 2000)
    assert stats.chars == sum(pq.read_table(p)["n_chars"].to_numpy().sum() for p in parts)


def test_limit_stops_reading_where_it_is_reached(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "a.txt", ["", "one", "one", "two", "", "three", "\x00"])
    stats, rows, rejects = run(tmp_path, source(path, limit=2))
    assert texts(rows) == ["one", "two"]
    # lines 5-7 come after the limit: not read, so neither rejected nor counted
    assert [(r["position"], r["reason"]) for r in rejects] == [(1, "empty")]
    assert (stats.docs_in, stats.duplicates, stats.rejected) == (4, 1, 1)


def test_output_is_byte_identical_on_rerun(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "a.txt", [f"line {i} {'é' * (i % 5)}" for i in range(3000)] + ["", "bad"]
    )
    for out in ("one", "two"):
        ingest(
            [source(path), source(WIKI, limit=2)],
            IngestSettings(rows_per_shard=1000),
            tmp_path / out,
        )
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
        "part-00003.parquet",
        "rejects.parquet",
    ]
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_small_blocks_give_the_same_corpus_and_skip_overlong_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = [f"line {i} café 中文" for i in range(200)]
    lines[50] = "z" * 20_000  # longer than max_record_bytes: never held whole
    path = write_lines(tmp_path / "a.txt", lines)
    expected = run(tmp_path, source(path), out="big", max_chars=1000)
    monkeypatch.setattr(ingest_mod.readers, "BLOCK_BYTES", 64)
    assert run(tmp_path, source(path), out="small", max_chars=1000) == expected
    _, rows, rejects = expected
    assert [(r["position"], r["reason"]) for r in rejects] == [(51, "too_long")]
    assert len(rows) == 199 and rows[50]["text"] == "line 51 café 中文"
    para = tmp_path / "p.txt"
    para.write_text("one\ntwo\n\n" + "w" * 20_000 + "\nrest of it\n\nlast\n", encoding="utf-8")
    _, rows, rejects = run(tmp_path, source(para, doc_per="paragraph"), out="p", max_chars=1000)
    assert texts(rows) == ["one\ntwo", "last"]
    assert [(r["position"], r["reason"]) for r in rejects] == [(4, "too_long")]


# --- whole-file errors ---------------------------------------------------------------------------


def test_unreadable_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "adir.txt").mkdir()
    with pytest.raises(IngestError, match=r"adir\.txt: cannot open the file"):
        ingest([source(tmp_path / "adir.txt")], IngestSettings(), tmp_path / "out")


def test_csv_without_the_column_lists_its_columns(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("id,body\n1,hello\n", encoding="utf-8")
    with pytest.raises(
        IngestError,
        match=r"a\.csv: CSV has no column 'text'; its columns are "
        r"\['id', 'body'\]",
    ):
        ingest([source(path)], IngestSettings(), tmp_path / "out")


def test_csv_unclosed_quote_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text('text\nok\n"never closed\n' + "more text\n" * 2000, encoding="utf-8")
    with pytest.raises(IngestError, match=r"a\.csv line \d+: .*unbalanced quote"):
        ingest([source(path)], IngestSettings(max_chars=1000), tmp_path / "out")


def test_parquet_errors(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"n": [1], "body": ["x"]}), path)
    with pytest.raises(IngestError, match=r"a\.parquet: Parquet has no column 'text'.*'body'"):
        ingest([source(path)], IngestSettings(), tmp_path / "o1")
    with pytest.raises(IngestError, match=r"column 'n' holds int64, not text"):
        ingest([source(path, text_field="n")], IngestSettings(), tmp_path / "o2")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(IngestError, match=r"bad\.parquet: not a readable Parquet file"):
        ingest([source(bad)], IngestSettings(), tmp_path / "o3")


@pytest.mark.parametrize("suffix", list(COMPRESSORS))
def test_truncated_compressed_file_is_an_error(tmp_path: Path, suffix: str) -> None:
    data = "\n".join(f"line {i} of a longer file" for i in range(5000)).encode()
    packed = COMPRESSORS[suffix](data)
    path = tmp_path / f"a.txt{suffix}"
    path.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(IngestError, match=rf"a\.txt\{suffix}: .*truncated or corrupt"):
        ingest([source(path)], IngestSettings(), tmp_path / "out")


def test_wrong_compression_and_bad_xml_are_errors(tmp_path: Path) -> None:
    fake = tmp_path / "a.txt.gz"
    fake.write_bytes(b"plain text, not gzip\n")
    with pytest.raises(IngestError, match=r"a\.txt\.gz: cannot read the file"):
        ingest([source(fake)], IngestSettings(), tmp_path / "o1")
    cut = tmp_path / "dump.xml.bz2"
    cut.write_bytes(bz2.compress(bz2.decompress(WIKI.read_bytes())[:200_000]))
    with pytest.raises(IngestError, match=r"dump\.xml\.bz2 line \d+, column \d+: not well-formed"):
        ingest([source(cut)], IngestSettings(), tmp_path / "o2")
    other = tmp_path / "other.xml"
    other.write_text("<root><a>x</a></root>", encoding="utf-8")
    with pytest.raises(IngestError, match=r"other\.xml: not a MediaWiki XML dump"):
        ingest([source(other)], IngestSettings(), tmp_path / "o3")


def test_utf16_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes("hello\nworld\n".encode("utf-16"))
    with pytest.raises(IngestError, match=r"a\.txt: the file is UTF-16.*`encoding: utf-16`.*iconv"):
        ingest([source(path)], IngestSettings(), tmp_path / "out")


def test_utf8_bom_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_bytes(b"\xef\xbb\xbftext\nhello\n")
    _, rows, _ = run(tmp_path, source(path))
    assert texts(rows) == ["hello"]


def test_empty_corpus_after_filtering_is_an_error(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "a.txt", ["", "ab", "  "])
    with pytest.raises(
        IngestError,
        match=r"corpus is empty after filtering: 3 records .*a\.txt"
        r".*'empty': 3",
    ):
        ingest([source(path)], IngestSettings(min_chars=5), tmp_path / "out")


def test_bad_settings_are_errors() -> None:
    with pytest.raises(IngestError, match="min_chars <= max_chars"):
        IngestSettings(min_chars=10, max_chars=5)
    with pytest.raises(IngestError, match="valid_fraction"):
        IngestSettings(valid_fraction=1.0)


# --- encodings -------------------------------------------------------------------------------

SIMPLIFIED = [
    "中华人民共和国成立于一九四九年，北京是中国的首都。",
    "我们今天去公园散步，天气很好，孩子们在草地上玩耍。",
    "经济发展需要科学技术的支持，教育是国家的根本。",
    "这部电影非常好看，演员的表演自然，我很喜欢。",
]
TRADITIONAL = [
    "繁體中文在臺灣和香港使用，這是一個測試句子。",
    "我們今天去公園散步，天氣很好，孩子們在草地上玩耍。",
    "經濟發展需要科學技術的支持，教育是國家的根本。",
]


def chinese_lines(sentences: list[str], n: int) -> list[str]:
    return [f"{sentences[i % len(sentences)]}第{i}行" for i in range(n)]


def test_gbk_source_reads_with_encoding_and_names_gbk_without(tmp_path: Path) -> None:
    docs = chinese_lines(SIMPLIFIED, 3000)  # ~200 KB: characters cross the decoder's reads
    path = tmp_path / "news.txt.gz"
    path.write_bytes(gzip.compress("\n".join(docs).encode("gbk") + b"\n"))
    stats, rows, rejects = run(tmp_path, source(path, encoding="gbk"), valid_fraction=0.0)
    assert texts(rows) == docs and rejects == [] and stats.encoding_hints == {}
    with pytest.raises(IngestError) as error:
        ingest([source(path)], IngestSettings(), tmp_path / "utf8")
    message = str(error.value)
    assert "every rejected record (3,000) is not valid text" in message
    assert "news.txt.gz: 3,000 records are not valid UTF-8 (the first at line 1)" in message
    assert "GB18030/GBK" in message and "set `encoding: gb18030` on this source" in message
    written = pq.read_table(tmp_path / "utf8" / "rejects.parquet").to_pylist()
    assert len(written) == 3000 and {r["reason"] for r in written} == {"invalid_utf8"}


def test_big5_is_detected_as_big5_and_reads_with_encoding(tmp_path: Path) -> None:
    docs = chinese_lines(TRADITIONAL, 40)
    path = tmp_path / "tw.txt"
    path.write_bytes("\n".join(docs).encode("big5"))
    with pytest.raises(IngestError, match=r"tw\.txt: 40 records .*Big5.*`encoding: big5`"):
        ingest([source(path)], IngestSettings(), tmp_path / "utf8")
    _, rows, _ = run(tmp_path, source(path, encoding="big5"), valid_fraction=0.0)
    assert texts(rows) == docs


@pytest.mark.parametrize("doc_per", ["line", "paragraph", "file"])
def test_a_declared_encoding_gives_the_corpus_utf8_gives(tmp_path: Path, doc_per: str) -> None:
    """Recoding is invisible downstream: the same text in GB18030 (CRLF, blank lines, a BOM-less
    file) makes the same documents, ids and splits as in UTF-8."""
    lines = chinese_lines(SIMPLIFIED, 34)
    text = "\r\n".join([*lines[:25], "", *lines[25:], lines[0]])  # a duplicate, too
    (tmp_path / "utf8").mkdir()
    (tmp_path / "gb").mkdir()
    (tmp_path / "utf8" / "a.txt").write_bytes(text.encode("utf-8"))
    (tmp_path / "gb" / "a.txt").write_bytes(text.encode("gb18030"))
    plain = run(tmp_path, source(tmp_path / "utf8" / "a.txt", doc_per=doc_per), out="o1")
    recoded = run(
        tmp_path, source(tmp_path / "gb" / "a.txt", doc_per=doc_per, encoding="GB18030"), out="o2"
    )
    keep = ("doc_id", "text", "n_chars", "split")
    assert [{k: r[k] for k in keep} for r in plain[1]] == [
        {k: r[k] for k in keep} for r in recoded[1]
    ]
    assert plain[0].rejected_by_reason == recoded[0].rejected_by_reason


def test_gbk_jsonl_csv_and_parquet_binary_with_encoding(tmp_path: Path) -> None:
    docs = chinese_lines(SIMPLIFIED, 6)
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_bytes(
        "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs).encode("gbk")
    )
    tsv = tmp_path / "b.tsv"
    tsv.write_bytes(
        ("text\tid\n" + "".join(f"{d}\t{i}\n" for i, d in enumerate(docs))).encode("gbk")
    )
    table = pa.table({"text": pa.array([d.encode("gbk") for d in docs], pa.binary())})
    pq.write_table(table, tmp_path / "c.parquet")
    for name in ("a.jsonl", "b.tsv", "c.parquet"):
        _, rows, _ = run(tmp_path, source(tmp_path / name, encoding="gbk"), out=f"out-{name}")
        assert sorted(texts(rows)) == sorted(docs), name


def test_bytes_bad_in_the_declared_encoding_are_rejected_and_counted(tmp_path: Path) -> None:
    lines = chinese_lines(SIMPLIFIED, 4)
    path = tmp_path / "a.txt"
    path.write_bytes("\n".join(lines).encode("gbk") + b"\nok \x81\xff!\n")
    stats, rows, rejects = run(tmp_path, source(path, encoding="gbk"), valid_fraction=0.0)
    assert texts(rows) == lines
    assert [(r["position"], r["reason"], r["sample"]) for r in rejects] == [
        (5, "invalid_encoding", "ok \ufffd\ufffd!")
    ]
    assert stats.rejected_by_reason == {"invalid_encoding": 1}
    assert stats.encoding_hints[str(path)].startswith(
        f"{path}: 1 record is not valid gbk (the first at line 5); too few bytes to tell"
    )


def test_one_gbk_file_among_utf8_ones_is_named_in_the_stats(tmp_path: Path) -> None:
    (tmp_path / "corpus").mkdir()
    write_lines(tmp_path / "corpus" / "a.txt", DOCS)
    gbk = tmp_path / "corpus" / "b.txt"
    gbk.write_bytes("\n".join(chinese_lines(SIMPLIFIED, 20)).encode("gbk"))
    stats, rows, _ = run(tmp_path, source(resolve_paths(str(tmp_path / "corpus"))))
    assert texts(rows) == DOCS and stats.rejected_by_reason == {"invalid_utf8": 20}
    assert list(stats.encoding_hints) == [str(gbk)]
    assert "`encoding: gb18030`" in stats.encoding_hints[str(gbk)]


def test_utf16_reads_with_encoding_and_xml_refuses_one(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes("hello\n世界\n".encode("utf-16"))
    _, rows, _ = run(tmp_path, source(path, encoding="utf-16"), valid_fraction=0.0)
    assert texts(rows) == ["hello", "世界"]
    with pytest.raises(IngestError, match=r"declares its own encoding; remove `encoding: gbk`"):
        ingest([source(WIKI, encoding="gbk")], IngestSettings(), tmp_path / "wiki")
