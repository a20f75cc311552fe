"""Stage 1, ingest: raw text sources -> a deduplicated, split, Unicode-normalised Parquet corpus.

Plain Python (no Prefect, no MLflow): `ingest()` streams every source in ~1 MiB blocks, so memory
is bounded by the block size, one part file of `rows_per_shard` documents and the dedup index.
Read it in this order:

    records.py   schemas, settings, limits, and the records passed between the steps
    sources.py   files from a path, directory, glob or URL; opening and decompressing them
    charsets.py  a declared non-UTF-8 `encoding` recoded on the fly; the likely one on failure
    readers.py   one reader per format (text, JSONL, CSV, Parquet, MediaWiki XML) -> Batches
    cleaning.py  the same cleaning for every format: NFC, reject reasons, the dedup index
    writer.py    Parquet parts (doc_id, split) and rejects.parquet
    stage.py     `ingest()`: the loop over sources and files, and the statistics

A record that cannot become a document is written to `rejects.parquet` with a reason (see
REASONS); nothing is dropped silently. A problem with a whole file (missing, unreadable,
truncated, wrong column) raises IngestError naming the file.

Speed comes from doing the common case once per block instead of once per record: the UTF-8
decode and the control-character scan run over a whole block (NFC only for non-ASCII ones),
and only a block that fails a check is examined record by record. Ids, splits and dedup are
numpy operations over a block's digests, and Arrow arrays are built from buffers (see
benchmarks/ingest.py for the measurements).
"""

from __future__ import annotations

from pipelines.data.ingest import charsets, cleaning, readers, records, sources, stage, writer
from pipelines.data.ingest.readers import wiki_text
from pipelines.data.ingest.records import (
    CORPUS_SCHEMA,
    DOC_UNITS,
    FORMATS,
    REASONS,
    REJECTS_SCHEMA,
    IngestError,
    IngestSettings,
    IngestStats,
    Reject,
    SourceInput,
    SourceStats,
)
from pipelines.data.ingest.sources import detect_format, fingerprint_sources, resolve_paths
from pipelines.data.ingest.stage import ingest

# Every module whose source decides the corpus's bytes: the corpus id hashes them all.
CODE = (records, charsets, sources, readers, cleaning, writer, stage)

__all__ = [
    "CODE",
    "CORPUS_SCHEMA",
    "DOC_UNITS",
    "FORMATS",
    "REASONS",
    "REJECTS_SCHEMA",
    "IngestError",
    "IngestSettings",
    "IngestStats",
    "Reject",
    "SourceInput",
    "SourceStats",
    "detect_format",
    "fingerprint_sources",
    "ingest",
    "resolve_paths",
    "wiki_text",
]
