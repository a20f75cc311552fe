"""The experiment spec: one YAML file, validated by pydantic, drives every stage.

Unknown keys and wrong types fail at load time with the YAML path of the field, what was
given and what was expected. This module holds the top level and the sections about where
things run and are kept; the corpus, pretraining and transfer sections have modules of their
own. Imports nothing of ours outside this package (every package may import it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from pretrainlab.config.base import Strict
from pretrainlab.config.corpus import CorpusSpec, TokenizersSpec
from pretrainlab.config.families import ADAPTABLE
from pretrainlab.config.pretrain import PretrainSpec
from pretrainlab.config.transfer import TransferSpec

MLFLOW_DB = "mlflow.db"  # the store's own tracking database, when no URI is given


def store_tracking_uri(store: str | Path) -> str:
    """SQLite under the store: where runs go when no server is named."""
    return f"sqlite:///{Path(store).expanduser().resolve() / MLFLOW_DB}"


def tracking_uri(given: str | None, store: str | Path) -> str:
    """The given URI, else $MLFLOW_TRACKING_URI, else SQLite under the store."""
    return given or os.environ.get("MLFLOW_TRACKING_URI") or store_tracking_uri(store)


class TrackingSpec(Strict):
    uri: str | None = Field(
        None, description="MLflow tracking URI; default $MLFLOW_TRACKING_URI or <store>/mlflow.db."
    )


class StorageSpec(Strict):
    """Object storage: a remote mirror of the store, and how to reach s3:// URLs (sources too).
    Credentials never go here: the standard AWS variables or profile supply them."""

    remote: str | None = Field(
        None, description="Mirror of the store (s3://bucket/prefix, gs://, file:///); null = none."
    )
    endpoint: str | None = Field(
        None, description="S3-compatible endpoint URL; default $AWS_ENDPOINT_URL, else AWS."
    )
    region: str | None = Field(None, description="S3 region; default $AWS_REGION or us-east-1.")
    timeout_s: float = Field(10.0, gt=0, description="Connect and request timeout (seconds).")

    @model_validator(mode="after")
    def _remote_is_url(self) -> StorageSpec:
        if self.remote is not None and "://" not in self.remote:
            raise ValueError(
                f"remote must be a URL such as s3://bucket/prefix or file:///abs/path, got "
                f"{self.remote!r}"
            )
        return self


class DaskSpec(Strict):
    address: str | None = Field(
        None, description="Existing scheduler (tcp://host:8786); none = a local cluster."
    )
    n_workers: int = Field(2, ge=1, description="Local cluster: worker processes.")
    threads_per_worker: int = Field(1, ge=1, description="Local cluster: threads per worker.")


class RaySpec(Strict):
    address: str | None = Field(
        None, description="Existing cluster (ray://host:10001 or auto); none = a local Ray."
    )
    gpus_per_cell: float = Field(
        0, ge=0, description="GPUs each transfer cell asks Ray for (0.5: two cells share one); "
        "Ray shows a cell only its own GPUs. 0: cells run on the CPU.",
    )


class ComputeSpec(Strict):
    """Where per-shard tasks (encoding) and transfer cells run: a thread pool here, or a Dask or
    Ray cluster; and whether CPU pretraining uses bf16 autocast."""

    runner: Literal["thread", "dask", "ray"] = Field(
        "thread", description="thread | dask (prefect-dask) | ray (needs: pip install prefect-ray)."
    )
    threads: int = Field(
        1, ge=1, description="thread: shards at once (one shard already uses every core)."
    )
    cell_threads: int = Field(
        1, ge=1, description="Torch threads of one transfer cell, on every runner: a cell's "
        "numbers depend on it, never on where the cell runs.",
    )
    cell_retries: int = Field(
        2, ge=0, description="A transfer cell whose worker died is submitted again this often.",
    )
    dask: DaskSpec = DaskSpec()
    ray: RaySpec = RaySpec()
    cpu_autocast: Literal["auto", "on", "off"] = Field(
        "auto",
        description="bf16 autocast when pretraining on the CPU: auto = GPT and BERT where the CPU "
        "has native bf16 (AVX-512 BF16 / AMX); on (ELMo too); off. CUDA always uses bf16.",
    )


class PromoteSpec(Strict):
    """The pipeline's optional last step: move each family's `champion` alias by a rule on
    downstream test scores (`pretrainlab models promote` applies the same rule by hand)."""

    enabled: bool = Field(False, description="Off by default: aliases are for people to move.")
    mode: str = Field("finetune", description="Transfer mode whose test scores decide.")
    budget: int | Literal["all"] = Field("all", description="Label budget whose scores decide.")
    tasks: list[str] = Field([], description="Tasks that count; default every scored task.")
    metric: str | None = Field(
        None, description="Default: each task's headline (span_f1 for BIO tags, else accuracy)."
    )
    aggregate: Literal["mean", "min"] = Field("mean", description="Over tasks: mean or worst.")
    margin: float = Field(0.0, ge=0, description="Must beat the champion by more than this.")


class AuditSpec(Strict):
    """The contamination audit: how much of each task's test split the pretraining corpus holds.

    Word n-grams (13, as GPT-3's audit) for spaced text; for CJK text, which has no spaces, a
    span of characters. 50 characters is longer than the ~20-30 characters that 13 English
    words carry in Chinese, so a shared span is a copied passage, not a common phrase or idiom.
    """

    enabled: bool = Field(True, description="Audit every task against the pretraining corpus.")
    ngram_words: int = Field(13, ge=1, description="Word n-gram length (spaced text).")
    ngram_chars: int = Field(50, ge=1, description="Character span length (CJK text).")
    warn_share: float = Field(
        0.05, ge=0, le=1, description="The report warns above this share of test examples."
    )


class Spec(Strict):
    """A whole experiment. `experiment` names the MLflow experiments and registered models."""

    experiment: str = Field(
        "pretrainlab",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Names the MLflow experiment and registered models <experiment>-<family>.",
    )
    store: str = Field(".pretrainlab", description="Root of every output (relative to the cwd).")
    data_dir: str | None = Field(None, description="Demo data cache; default the user cache dir.")
    tracking: TrackingSpec = TrackingSpec()
    storage: StorageSpec = StorageSpec()
    compute: ComputeSpec = ComputeSpec()
    corpus: CorpusSpec
    tokenizers: TokenizersSpec = TokenizersSpec()
    pretrain: PretrainSpec = PretrainSpec()
    transfer: TransferSpec = TransferSpec()
    promote: PromoteSpec = PromoteSpec()
    audit: AuditSpec = AuditSpec()
    @model_validator(mode="after")
    def _adapted_models_exist(self) -> Spec:
        """Fail before pretraining, not after it, when adaptation names a model with no language
        model to continue, or one nobody pretrains or imports."""
        adapt = self.transfer.adapt
        checkpoints = [c.name for c in self.transfer.checkpoints]
        for name in adapt.families if adapt else []:
            if name not in (*ADAPTABLE, *checkpoints):
                raise ValueError(
                    f"transfer.adapt.families: {name!r} has no language model to continue; "
                    f"choose from {', '.join([*ADAPTABLE, *checkpoints])}"
                )
            if name not in (*self.pretrain.families, *checkpoints):
                raise ValueError(
                    f"transfer.adapt.families: {name!r} is neither in pretrain.families nor a "
                    "transfer.checkpoints name; add it to one of them"
                )
        return self

    @model_validator(mode="after")
    def _variants_apart_from_checkpoints(self) -> Spec:
        """Rows and registered models tell models apart by name only."""
        checkpoints = {c.name for c in self.transfer.checkpoints}
        for variant in self.pretrain.variants:
            if variant.name in checkpoints:
                raise ValueError(
                    f"pretrain.variants: {variant.name!r} is also a transfer.checkpoints name; "
                    "rename one of them"
                )
        return self

    def tracking_uri(self) -> str:
        """The spec's URI, else $MLFLOW_TRACKING_URI, else SQLite under the store."""
        return tracking_uri(self.tracking.uri, self.store)
