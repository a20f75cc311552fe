"""Where every output lives. One class builds every path; nothing else joins store paths.

<store>/
  corpus/<corpus_id>/part-*.parquet, rejects.parquet, _manifest.json
  tokenizers/<tokenizer_id>/tokenizer.json       tokenizer_id = hash of tokenizer.json
  tokenizers/index/<training_key>.json           training inputs -> tokenizer_id
  tokens/<tokenizer_id>/<encoding_id>/part-*.parquet  encoding_id = hash(corpus, settings, code)
  models/<family>/<model_key>/                   model/ (weights + tokenizer), work/ (checkpoints,
                                                 run.json), _manifest.json
  features/<family>/<task>-<family>-<key>/       frozen-feature caches of a model on a task
  results/<task>/<key>.parquet                   transfer result rows (Parquet)
  predictions/<task>/<key>.parquet               per-item test predictions of the same run
  audit/<task>/<key>.parquet                     contamination audit of a task vs the corpus
  reports/<experiment>/                          report.md, report.html, PNGs
  stamps/<stage>-<experiment>.json               last completed stage result + its input key
  catalog.duckdb                                 rebuildable DuckDB cache
  remote.json                                    where the store is mirrored (no credentials)
  mlflow.db, mlartifacts/                        embedded MLflow tracking
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pretrainlab.config import MLFLOW_DB, store_tracking_uri

MODEL_WEIGHTS = "model"  # models/<family>/<key>/model: what is logged to MLflow and loaded
MODEL_POINTS = "points"  # models/<family>/<key>/points/<label>/: snapshots (no alias)
MODEL_WORK = "work"  # models/<family>/<key>/work: checkpoints and the MLflow run id (a resume)


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

    def result_files(self) -> list[Path]:
        """Every complete result file (rows of one run): what the catalog, the report and the
        stage stamps read."""
        return self.visible_parquet(self.results)

    @staticmethod
    def visible_parquet(root: Path) -> list[Path]:
        """Every Parquet file under `root`, minus atomic-write temporaries (hidden names)."""
        found = root.rglob("*.parquet") if root.is_dir() else []
        return sorted(
            f for f in found if not any(p.startswith(".") for p in f.relative_to(root).parts)
        )

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

    # -- the areas housekeeping walks, and the parts of a model directory ------------------

    @property
    def tokenizers(self) -> Path:
        return self.store / "tokenizers"

    def tokenizer_meta(self, tokenizer_id: str) -> Path:
        return self.tokenizer(tokenizer_id) / "tokenizer_meta.json"

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

    @property
    def tokenizer_indexes(self) -> Path:
        return self.tokenizers / "index"

    def tokenizer_file(self, tokenizer_id: str) -> Path:
        return self.tokenizer(tokenizer_id) / "tokenizer.json"

    @property
    def token_shards(self) -> Path:
        """tokens/: one directory per tokenizer, one output per encoding inside it."""
        return self.store / "tokens"

    @property
    def models(self) -> Path:
        return self.store / "models"

    @staticmethod
    def weights_of(model_dir: Path) -> Path:
        """The model itself (weights + tokenizer/) inside its keyed directory."""
        return model_dir / MODEL_WEIGHTS

    @staticmethod
    def work_of(model_dir: Path) -> Path:
        """Checkpoints and the run record of a model being trained; kept for a resume."""
        return model_dir / MODEL_WORK

    @staticmethod
    def points_of(model_dir: Path) -> Path:
        """`points/<label>/model`: snapshots at pretraining points (`pretrain.points`)."""
        return model_dir / MODEL_POINTS

    @staticmethod
    def run_record_of(model_dir: Path) -> Path:
        """`work/run.json`: the MLflow run a resumed training continues."""
        return model_dir / MODEL_WORK / "run.json"

    @property
    def features(self) -> Path:
        return self.store / "features"

    def features_of(self, family: str) -> Path:
        return self.features / family

    def result(self, task: str, key: str) -> Path:
        return self.results / task / f"{key}.parquet"

    @property
    def predictions(self) -> Path:
        return self.store / "predictions"

    def prediction(self, task: str, key: str) -> Path:
        """Per-item test predictions of the run whose rows are `result(task, key)`."""
        return self.predictions / task / f"{key}.parquet"

    def predictions_of(self, result: Path) -> Path:
        """The per-item predictions beside the result file `result` (a `result(task, key)`)."""
        return self.prediction(result.parent.name, result.stem)

    @property
    def audits(self) -> Path:
        return self.store / "audit"

    def audit(self, task: str, key: str) -> Path:
        """The contamination audit of `task`'s test split against the pretraining corpus."""
        return self.audits / task / f"{key}.parquet"

    @property
    def mirror_record(self) -> Path:
        """`remote.json`: the mirror the last run used, for readers without a spec."""
        return self.store / "remote.json"
