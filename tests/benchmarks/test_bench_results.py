"""The benchmark table: goals, ratios and n/a rows render as RESULTS.md says; per-contender peak
RSS really restarts; the scaling sweep's copies survive deduplication."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from benchmarks.common import (
    NA_NO_GPU,
    Repeats,
    Row,
    current_rss_mb,
    gap_lines,
    interleaved,
    machine,
    markdown,
    peak_rss_mb,
    read_rows,
    reset_peak_rss,
    write_rows,
)
from benchmarks.scaling import to_rows, write_copies


def test_ratio_goal_and_rendering(tmp_path: Path) -> None:
    rows = [
        Row("ingest", "MB/s", 100.0, 80.0, ">=", 0.7, 300.0, 150.0, "fine"),
        Row("tokenise", "MB/s", 10.0, 7.0, ">=", 0.8),
        Row("unchanged re-run", "s", None, 21.5, "<=", 15.0, None, 400.0, on_ratio=False),
        Row("pretrain gpt (GPU, bf16)", "tokens/s", None, None, ">=", 0.9, note=NA_NO_GPU),
        Row("ingest (vs pyarrow)", "MB/s", 200.0, 80.0, "", 0.0),
    ]
    assert rows[0].ratio == 0.8 and rows[0].met is True
    assert rows[1].met is False  # 0.7 < 0.8
    assert rows[2].ratio is None and rows[2].met is False  # goal on the figure itself
    assert rows[3].met is None and rows[4].met is None
    path = tmp_path / "rows.json"
    write_rows(rows, path)
    assert read_rows(path) == rows

    info = machine()
    text = markdown(rows, info, info, "python -m benchmarks.suite", 90.0)
    lines = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines()}
    assert "| 0.80 | >= 0.7 | yes | - | 300 / 150 | fine |" in lines["ingest"]
    assert "| 0.70 | >= 0.8 | **no** |" in lines["tokenise"]
    assert "| n/a | 21.5 | - | <= 15 s | **no** | - | - / 400 |" in lines["unchanged re-run"]
    assert f"| n/a | n/a | - | >= 0.9 | n/a | - | n/a | {NA_NO_GPU} |" in lines[rows[3].benchmark]
    assert "| - | - |" in lines["ingest (vs pyarrow)"]  # informative: no goal, no verdict
    assert str(info["cpu"]) in text and "1.5 min" in text


def test_interleaved_repeats_alternate_and_the_ratio_is_the_median_pair() -> None:
    calls: list[str] = []
    bare_rates, ours_rates = iter([10.0, 10.0, 5.0, 10.0, 10.0]), iter([9.0, 11.0, 5.0, 2.0, 9.5])

    def bare() -> float:
        calls.append("bare")
        return next(bare_rates)

    def ours() -> float:
        calls.append("ours")
        return next(ours_rates)

    got = interleaved(bare, ours, repeats=5, before=lambda: calls.append("reset"))
    assert calls == ["reset", "bare", "reset", "ours"] * 5
    assert got.ratios == [0.9, 1.1, 1.0, 0.2, 0.95]
    assert got.median_ratio == 0.95  # a pair slowed by another job (0.2) does not move it
    row = got.fill(Row("pretrain gpt", "tokens/s", None, None, ">=", 0.9, mfu=0.123))
    assert (row.bare, row.ours, row.ratio, row.met) == (10.0, 9.0, 0.95, True)
    assert (row.ratio_min, row.ratio_max, row.repeats) == (0.2, 1.1, 5)
    info = machine()
    line = markdown([row], info, info, "suite", 1.0).splitlines()[-1]
    assert "| 10.0 | 9 | 0.95 (0.20-1.10, n=5) | >= 0.9 | yes | 12.3% |" in line


def test_median_ratio_differs_from_the_ratio_of_medians() -> None:
    """Pairs are compared within themselves: a drift in load between pairs cancels."""
    got = Repeats(bare=[10.0, 20.0, 30.0], ours=[9.0, 18.0, 27.0])
    assert got.median_ratio == 0.9


def test_every_ratio_under_095_gets_a_line_saying_why() -> None:
    rows = [
        Repeats([10.0] * 5, [9.0] * 5).fill(
            Row("pretrain bert", "tokens/s", None, None, ">=", 0.9)
        ),
        Row("transfer gpt: fine-tuning", "examples/s", 10.0, 9.8, ">=", 0.9),  # 0.98: no line
        Row("a new stage", "MB/s", 10.0, 5.0, ">=", 0.9),
    ]
    text = gap_lines(rows)
    assert "**pretrain bert** (0.90 (0.90-0.90, n=5)): NSP pair sampling" in text
    assert "fine-tuning" not in text
    assert "**a new stage** (0.50): no explanation written yet" in text
    assert gap_lines(rows[1:2]) == ""


def test_peak_rss_restarts_per_contender() -> None:
    block = bytearray(150 * 1024 * 1024)  # touched: really resident
    block[::4096] = b"x" * len(block[::4096])
    high = peak_rss_mb()
    del block
    reset_peak_rss()
    after = peak_rss_mb()
    assert after < high - 100, (high, after)
    assert abs(after - current_rss_mb()) < 50


def test_scaling_copies_are_unique_and_rows_judge_growth(tmp_path: Path) -> None:
    from pipelines.data.ingest import IngestSettings, SourceInput, ingest

    docs = ["One document.", "Another document, a little longer.", "One document."]
    size = write_copies(docs, 3, tmp_path / "x3.jsonl")
    lines = (tmp_path / "x3.jsonl").read_text().splitlines()
    assert len(lines) == 9 and size == sum(len(json.loads(x)["text"].encode()) for x in lines)
    stats = ingest(
        [SourceInput([tmp_path / "x3.jsonl"], format="jsonl")], IngestSettings(), tmp_path / "c"
    )
    # Copies never collide; only the duplicate inside each copy is dropped.
    assert stats.docs_written == 6
    assert pq.read_table(tmp_path / "c" / "part-00000.parquet").num_rows == 6

    results = {
        "ingest": [
            {"size": 1, "mb": 10.0, "seconds": 1.0, "mb_per_s": 10.0, "peak_rss_mb": 200.0},
            {"size": 16, "mb": 160.0, "seconds": 15.0, "mb_per_s": 10.7, "peak_rss_mb": 420.0},
        ]
    }
    rows = {row.benchmark: row for row in to_rows(results)}
    assert rows["scaling ingest: peak RSS growth x1 to x16"].met is False  # 2.1x: not flat
    assert rows["scaling ingest: time per MB x1 to x16"].met is True  # 0.94: linear
