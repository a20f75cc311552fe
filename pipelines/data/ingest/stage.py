"""The stage: every file of every source read, cleaned and written, and the counts kept."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.data.ingest.charsets import Undecodable
from pipelines.data.ingest.cleaning import clean
from pipelines.data.ingest.readers import read_batches
from pipelines.data.ingest.records import (
    IngestError,
    IngestSettings,
    IngestStats,
    SourceInput,
    SourceStats,
)
from pipelines.data.ingest.sources import detect_format, file_size
from pipelines.data.ingest.writer import CorpusWriter, RejectsWriter, rejects_file
from storage.remote_sources import RemoteFile

PROGRESS_EVERY = 1000
HINTS_SHOWN = 5  # files named in the error of a corpus that is empty for want of decoding

Progress = Callable[[int, int], None]  # (bytes read, records read)


@dataclass
class _Run:
    """One ingest: the writers, the running counts and the progress callback."""

    settings: IngestSettings
    writer: CorpusWriter
    rejects: RejectsWriter
    progress: Progress | None
    docs_in: int = 0
    duplicates: int = 0
    skipped: int = 0
    bytes_done: int = 0
    reported: int = 0
    by_reason: Counter = field(default_factory=Counter)
    encoding_hints: dict[str, str] = field(default_factory=dict)

    def file(self, path: Path | RemoteFile, source: SourceInput, room: int | None) -> int:
        """Stream one file into the corpus, writing at most `room` new documents."""
        fmt = detect_format(path) if source.format == "auto" else source.format
        undecodable = Undecodable(source.encoding)
        try:
            return self._stream(path, fmt, source, room, undecodable)
        finally:
            if undecodable.count:
                unit = {"parquet": "row", "mediawiki": "page"}.get(fmt, "line")
                self.encoding_hints[str(path)] = undecodable.hint(path, unit)

    def _stream(
        self,
        path: Path | RemoteFile,
        fmt: str,
        source: SourceInput,
        room: int | None,
        undecodable: Undecodable,
    ) -> int:
        label, written = str(path), 0
        with closing(read_batches(path, fmt, source, self.settings)) as batches:
            for read in batches:
                candidates = clean(read.batch, self.settings)
                left = None if room is None else room - written
                added = self.writer.add(label, candidates, left)
                rejects = candidates.rejects
                if added.cut is not None:  # the limit was reached inside this batch
                    rejects = [r for r in rejects if r.position <= added.cut]
                rejects = undecodable.take(rejects)
                self.rejects.add(label, rejects)
                self.by_reason.update(r.reason for r in rejects)
                self.docs_in += added.written + added.duplicates + len(rejects)
                self.duplicates += added.duplicates
                self.skipped += read.batch.skipped
                written += added.written
                self._report(read.offset)
                if room is not None and written >= room:
                    self.bytes_done += read.offset
                    return written
        self.bytes_done += file_size(path)
        return written

    def _report(self, offset: int) -> None:
        if self.progress and self.docs_in - self.reported >= PROGRESS_EVERY:
            self.progress(self.bytes_done + offset, self.docs_in)
            self.reported = self.docs_in

    def source(self, source: SourceInput) -> SourceStats:
        rows, duplicates, rejected = self.writer.rows, self.duplicates, self.by_reason.total()
        room = source.limit
        for path in source.paths:
            written = self.file(path if isinstance(path, RemoteFile) else Path(path), source, room)
            if room is not None:
                room -= written
                if room == 0:
                    break
        return SourceStats(
            label=source.label,
            files=len(source.paths),
            docs_written=self.writer.rows - rows,
            duplicates=self.duplicates - duplicates,
            rejected=self.by_reason.total() - rejected,
        )


def ingest(
    sources: list[SourceInput],
    settings: IngestSettings,
    out_dir: Path,
    progress: Progress | None = None,
) -> IngestStats:
    """Write out_dir/part-00000.parquet... and out_dir/rejects.parquet; return statistics.

    out_dir is written directly: the caller makes it atomic (storage.atomic.atomic_dir) and
    writes the manifest. Output is a function of the inputs only: same sources, settings and
    code -> byte-identical files; documents keep source order (files of a directory or glob
    sorted). Memory: a ~1 MiB block, one part file of documents and the dedup index
    (8 bytes per unique document, see cleaning.SeenKeys).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = CorpusWriter(out_dir, settings)
    with rejects_file(out_dir / "rejects.parquet") as rejects:
        run = _Run(settings, writer, rejects, progress)
        per_source = [run.source(source) for source in sources]
        writer.close()
    if progress:
        progress(run.bytes_done, run.docs_in)
    if writer.rows == 0:
        raise IngestError(_empty_message(run, sources))
    return IngestStats(
        docs_in=run.docs_in,
        docs_written=writer.rows,
        duplicates=run.duplicates,
        rejected=run.by_reason.total(),
        rejected_by_reason=dict(sorted(run.by_reason.items())),
        skipped=run.skipped,
        train_docs=writer.rows - writer.valid,
        valid_docs=writer.valid,
        chars=writer.chars,
        bytes_read=run.bytes_done,
        parts=writer.parts,
        sources=per_source,
        encoding_hints=run.encoding_hints,
    )


def _empty_message(run: _Run, sources: list[SourceInput]) -> str:
    """Why nothing was written; when records failed to decode, which files and what fixes them."""
    message = (
        f"the corpus is empty after filtering: {run.docs_in} records read from "
        f"{[s.label or [str(p) for p in s.paths] for s in sources]}, {run.duplicates} "
        f"duplicates, rejected {dict(run.by_reason)}; see rejects.parquet, or check "
        f"text_field, doc_per, min_chars and max_chars"
    )
    if not run.encoding_hints:
        return message
    undecoded = run.by_reason["invalid_utf8"] + run.by_reason["invalid_encoding"]
    if undecoded == run.by_reason.total():
        message = (
            f"the corpus is empty: every rejected record ({undecoded:,}) is not valid text in "
            f"its source's encoding; the wrong `encoding`? ({run.docs_in} records read, "
            f"{run.duplicates} duplicates; see rejects.parquet)"
        )
    hints = list(run.encoding_hints.values())
    more = f"\n  ... and {len(hints) - HINTS_SHOWN} more files" if len(hints) > HINTS_SHOWN else ""
    return message + "".join(f"\n  {hint}" for hint in hints[:HINTS_SHOWN]) + more
