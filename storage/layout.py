"""Where every output lives. One class builds every path; nothing else joins store paths.

<store>/
  corpus/<corpus_id>/part-*.parquet, rejects.parquet, _manifest.json
  tokenizers/<tokenizer_id>/tokenizer.json       tokenizer_id = hash of tokenizer.json
  tokenizers/index/<training_key>.json           training inputs -> tokenizer_id
  tokens/<tokenizer_id>/<encoding_id>/part-*.parquet  encoding_id = hash(corpus, settings, code)
  models/<family>/<model_key>/                   pretrained weights + checkpoints
  results/<task>/<key>.parquet                   transfer result rows (Parquet)
  reports/<experiment>/                          report.md, report.html, PNGs
  stamps/<stage>-<experiment>.json               last completed stage result + its input key
  catalog.duckdb                                 rebuildable DuckDB cache
  mlflow.db, mlartifacts/                        embedded MLflow tracking
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pretrainlab.config import MLFLOW_DB, store_tracking_uri


@dataclass(frozen=True)
class Layout:
    store: Path

    @classmethod
    def at(cls, store: str | Path) -> Layout:
        return cls(Path(store).expanduser().resolve())

    def corpus(self, corpus_id: str) -> Path:
        return self.store / "corpus" / corpus_id

    @property
    def corpora(self) -> Path:
        return self.store / "corpus"

    def tokenizer(self, tokenizer_id: str) -> Path:
        return self.store / "tokenizers" / tokenizer_id

    def tokenizer_index(self, training_key: str) -> Path:
        return self.store / "tokenizers" / "index" / f"{training_key}.json"

    def tokens(self, tokenizer_id: str, encoding_id: str) -> Path:
        return self.store / "tokens" / tokenizer_id / encoding_id

    def model(self, family: str, model_key: str) -> Path:
        return self.store / "models" / family / model_key

    @property
    def results(self) -> Path:
        return self.store / "results"

    def report(self, experiment: str) -> Path:
        return self.store / "reports" / experiment

    def stamp(self, stage: str, experiment: str) -> Path:
        return self.store / "stamps" / f"{stage}-{experiment}.json"

    @property
    def catalog(self) -> Path:
        return self.store / "catalog.duckdb"

    @property
    def mlflow_db(self) -> Path:
        return self.store / MLFLOW_DB

    @property
    def mlflow_artifacts(self) -> Path:
        return self.store / "mlartifacts"

    @property
    def default_tracking_uri(self) -> str:
        """The spec's default (pretrainlab.config), for this store."""
        return store_tracking_uri(self.store)

    # ------------------------------------------------------------- read by the catalog

    @property
    def tokenizers(self) -> Path:
        return self.store / "tokenizers"

    def tokenizer_meta(self, tokenizer_id: str) -> Path:
        return self.tokenizer(tokenizer_id) / "tokenizer_meta.json"

    @property
    def token_outputs(self) -> Path:
        """tokens/: one directory per tokenizer, one output per encoding inside it."""
        return self.store / "tokens"

    def rejects(self, corpus_id: str) -> Path:
        return self.corpus(corpus_id) / "rejects.parquet"

    @staticmethod
    def parts(output: Path) -> list[Path]:
        """The Parquet shards of a corpus or token output directory, in order."""
        return sorted(output.glob("part-*.parquet"))

    def catalog_build(self, tag: str) -> Path:
        """A catalog being built, hidden, renamed onto `catalog` when complete."""
        return self.store / f".{self.catalog.name}.tmp-{tag}"

    @staticmethod
    def duckdb_wal(database: Path) -> Path:
        """DuckDB's write-ahead log beside a database file."""
        return database.with_name(f"{database.name}.wal")
