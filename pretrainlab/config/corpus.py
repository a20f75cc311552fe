"""The corpus and its tokenizers: what the lab reads, and how text becomes tokens."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from pretrainlab.config.base import Encoding, Strict

SourceFormat = Literal["auto", "text", "jsonl", "csv", "parquet", "mediawiki"]
DocUnit = Literal["line", "paragraph", "file"]


class SourceSpec(Strict):
    """One input of the corpus: a path (file, directory or glob) or a named demo dataset."""

    path: str | None = Field(None, description="File, directory or glob; .gz/.bz2/.xz/.zst ok.")
    dataset: str | None = Field(None, description="A demo dataset from `pretrainlab data fetch`.")
    format: SourceFormat = Field("auto", description="auto = from the file extension.")
    text_field: str = Field("text", description="Column/key holding text (CSV, JSONL, Parquet).")
    doc_per: DocUnit = Field("line", description="Plain text: one doc per line|paragraph|file.")
    limit: int | None = Field(None, ge=1, description="Keep at most this many documents.")
    encoding: Encoding = Field(
        "utf-8", description="Text/JSONL/CSV bytes: utf-8, gb18030 (GBK), big5, utf-16, ..."
    )

    @model_validator(mode="after")
    def _one_of_path_or_dataset(self) -> SourceSpec:
        self._exactly_one("path", "dataset")
        return self


class CorpusSpec(Strict):
    sources: list[SourceSpec] = Field(..., min_length=1)
    min_chars: int = Field(1, ge=1, description="Shorter documents are rejected as empty.")
    max_chars: int = Field(1_000_000, ge=1, description="Longer documents are rejected.")
    valid_fraction: float = Field(0.05, ge=0.0, lt=1.0, description="Share of docs in `valid`.")
    rows_per_shard: int = Field(50_000, ge=1, description="Documents per Parquet part file.")


class WordPieceSpec(Strict):
    kind: Literal["wordpiece"] = "wordpiece"
    vocab_size: int = Field(8000, ge=64)
    min_frequency: int = Field(2, ge=1)
    lowercase: bool = True


class BPESpec(Strict):
    kind: Literal["bpe"] = "bpe"
    vocab_size: int = Field(8000, ge=300, description="Byte-level: at least 256 + specials.")
    min_frequency: int = Field(2, ge=1)


class WordLevelSpec(Strict):
    kind: Literal["wordlevel"] = "wordlevel"
    vocab_size: int = Field(30000, ge=8)
    min_count: int = Field(5, ge=1, description="Also word2vec's min_count: one knob, not two.")
    lowercase: bool = True
    segment: Literal["none", "jieba"] = Field(
        "none", description="none: one token per CJK character; jieba: Chinese words (rjieba)."
    )


TokenizerSpec = Annotated[WordPieceSpec | BPESpec | WordLevelSpec, Field(discriminator="kind")]


class TokenizersSpec(Strict):
    """One tokenizer per model family; word2vec and ELMo share the word-level one."""

    bert: WordPieceSpec = WordPieceSpec()
    gpt: BPESpec = BPESpec()
    word: WordLevelSpec = WordLevelSpec()
    max_sentence_tokens: int = Field(256, ge=8, description="Longer sentences are cut.")
