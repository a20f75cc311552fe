"""The experiment spec: one YAML file, validated by pydantic, drives every stage.

Unknown keys and wrong types fail at load time with the YAML path of the field, what was
given and what was expected. Imports nothing of ours (every package may import it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SourceFormat = Literal["auto", "text", "jsonl", "csv", "parquet", "mediawiki"]
DocUnit = Literal["line", "paragraph", "file"]


class Strict(BaseModel):
    """Base for every spec section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceSpec(Strict):
    """One input of the corpus: a path (file, directory or glob) or a named demo dataset."""

    path: str | None = Field(None, description="File, directory or glob; .gz/.bz2/.xz/.zst ok.")
    dataset: str | None = Field(None, description="A demo dataset from `pretrainlab data fetch`.")
    format: SourceFormat = Field("auto", description="auto = from the file extension.")
    text_field: str = Field("text", description="Column/key holding text (CSV, JSONL, Parquet).")
    doc_per: DocUnit = Field("line", description="Plain text: one doc per line|paragraph|file.")
    limit: int | None = Field(None, ge=1, description="Keep at most this many documents.")

    @model_validator(mode="after")
    def _one_of_path_or_dataset(self) -> SourceSpec:
        if (self.path is None) == (self.dataset is None):
            raise ValueError("give exactly one of `path` or `dataset`")
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


TokenizerSpec = Annotated[WordPieceSpec | BPESpec | WordLevelSpec, Field(discriminator="kind")]


class TokenizersSpec(Strict):
    """One tokenizer per model family; word2vec and ELMo share the word-level one."""

    bert: WordPieceSpec = WordPieceSpec()
    gpt: BPESpec = BPESpec()
    word: WordLevelSpec = WordLevelSpec()
    max_sentence_tokens: int = Field(256, ge=8, description="Longer sentences are cut.")


Family = Literal["word2vec", "elmo", "gpt", "bert"]


class LoopSpec(Strict):
    """The shared torch training loop (ELMo, GPT, BERT)."""

    max_steps: int = Field(200, ge=1, description="Optimizer steps (stops earlier on a budget).")
    batch_size: int = Field(16, ge=1, description="Sequences per optimizer step (global batch).")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per step; divides batch_size.")
    lr: float = Field(5e-4, gt=0)
    warmup_steps: int = Field(20, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Cosine decay floor, share of lr.")
    weight_decay: float = Field(0.01, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    seed: int = 0
    log_every: int = Field(10, ge=1)
    eval_every: int = Field(50, ge=1)
    eval_batches: int = Field(8, ge=1)
    checkpoint_every: int = Field(50, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: bool = False

    @model_validator(mode="after")
    def _accum_divides_batch(self) -> LoopSpec:
        if self.batch_size % self.grad_accum:
            raise ValueError(
                f"batch_size {self.batch_size} is not divisible by grad_accum {self.grad_accum}"
            )
        return self


class Word2VecSpec(Strict):
    sg: bool = Field(True, description="Skip-gram (true) or CBOW (false).")
    vector_size: int = Field(100, ge=2)
    window: int = Field(5, ge=1)
    negative: int = Field(5, ge=1)
    sample: float = Field(1e-3, ge=0)
    epochs: int = Field(5, ge=1)
    workers: int = Field(2, ge=1)
    seed: int = 0


class ELMoSpec(Strict):
    embedding_dim: int = Field(128, ge=2, description="Token embedding = LSTM projection size.")
    hidden_dim: int = Field(256, ge=2, description="LSTM cell size before projection.")
    seq_len: int = Field(32, ge=2)
    dropout: float = Field(0.1, ge=0, lt=1)
    softmax: Literal["adaptive", "full"] = "adaptive"
    adaptive_cutoffs: list[int] = Field([2000, 10000], description="Vocabulary cut-offs.")
    loop: LoopSpec = LoopSpec()


class GPTSpec(Strict):
    n_layer: int = Field(2, ge=1)
    n_head: int = Field(2, ge=1)
    n_embd: int = Field(128, ge=8)
    block_size: int = Field(64, ge=8, description="Tokens per packed training block.")
    dropout: float = Field(0.1, ge=0, lt=1)
    loop: LoopSpec = LoopSpec()


class BERTSpec(Strict):
    n_layer: int = Field(2, ge=1)
    n_head: int = Field(2, ge=1)
    hidden_size: int = Field(128, ge=8)
    intermediate_size: int = Field(512, ge=8)
    max_seq_len: int = Field(64, ge=8, description="[CLS] A [SEP] B [SEP] length.")
    dropout: float = Field(0.1, ge=0, lt=1)
    mlm_probability: float = Field(0.15, gt=0, lt=1, description="Share of tokens chosen.")
    mask_replace_prob: float = Field(0.8, ge=0, le=1, description="Chosen -> [MASK].")
    random_replace_prob: float = Field(0.1, ge=0, le=1, description="Chosen -> random token.")
    next_sentence_prob: float = Field(0.5, ge=0, le=1, description="Share of true next sentences.")
    loop: LoopSpec = LoopSpec()

    @model_validator(mode="after")
    def _replacement_shares(self) -> BERTSpec:
        if self.mask_replace_prob + self.random_replace_prob > 1:
            raise ValueError("mask_replace_prob + random_replace_prob must be <= 1")
        return self


class BudgetSpec(Strict):
    """One pretraining budget shared by every family, for a fair race."""

    tokens: int | None = Field(None, ge=1, description="Stop each family after this many tokens.")
    minutes: float | None = Field(None, gt=0, description="Wall clock per family (run one by one).")


class LaunchSpec(Strict):
    """torchrun for the torch families (ELMo, GPT, BERT); world size = nproc_per_node x nnodes.

    pretrainlab runs on node 0 (it logs, checkpoints and registers); every other node joins
    with the torchrun command node 0 logs. All nodes need the store at the same path.
    """

    nproc_per_node: int = Field(1, ge=1, description="Ranks per node: one per GPU (gloo: CPU).")
    nnodes: int = Field(1, ge=1, description="Machines; >1 needs the store on a shared filesystem.")
    master_addr: str = Field("127.0.0.1", description="Node 0's address, reachable by all nodes.")
    master_port: int = Field(29500, ge=1, le=65535, description="A free TCP port on node 0.")
    backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="auto = nccl when CUDA is visible, else gloo."
    )

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    @model_validator(mode="after")
    def _reachable_master(self) -> LaunchSpec:
        if self.nnodes > 1 and self.master_addr in ("127.0.0.1", "localhost"):
            raise ValueError(
                f"nnodes {self.nnodes} needs master_addr = node 0's address on the network "
                f"(the other nodes cannot reach {self.master_addr})"
            )
        return self


class PretrainSpec(Strict):
    families: list[Family] = Field(["word2vec", "elmo", "gpt", "bert"], min_length=1)
    budget: BudgetSpec = BudgetSpec()
    launch: LaunchSpec = LaunchSpec()
    unigram_gap_nats: float = Field(
        0.5, description="Tag an LM run `learned_little` when valid loss is within this of entropy."
    )
    word2vec: Word2VecSpec = Word2VecSpec()
    elmo: ELMoSpec = ELMoSpec()
    gpt: GPTSpec = GPTSpec()
    bert: BERTSpec = BERTSpec()


TaskKind = Literal["classify", "pair", "tag", "wic"]
TaskFormat = Literal["auto", "csv", "jsonl", "conll"]


class TaskSpec(Strict):
    """A labelled downstream task: files (or a demo dataset), its kind and its columns."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    kind: TaskKind = Field(..., description="classify | pair | tag | wic (word in context).")
    dataset: str | None = Field(None, description="A demo task from `pretrainlab data fetch`.")
    train: str | None = Field(None, description="Train file (CSV/JSONL/CoNLL).")
    dev: str | None = Field(None, description="Dev file; else carved from train by hash.")
    test: str | None = Field(None, description="Test file; else carved from train by hash.")
    format: TaskFormat = "auto"
    text_field: str = "text"
    text_b_field: str = Field("text_b", description="Pair/WiC: the second text.")
    label_field: str = "label"
    dev_fraction: float = Field(0.1, gt=0, lt=1)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    max_examples: int | None = Field(None, ge=1, description="Cap per split (demo speed).")

    @model_validator(mode="after")
    def _one_source(self) -> TaskSpec:
        if (self.dataset is None) == (self.train is None):
            raise ValueError("give exactly one of `dataset` or `train`")
        return self


MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
ADAPTABLE = ("elmo", "gpt", "bert")  # the families with a language model to continue


class CheckpointSpec(Strict):
    """A user's own pretrained model (a local Hugging Face directory) as one more family."""

    name: str = Field(
        ...,
        pattern=MODEL_NAME,
        description="Shown as `family` in rows; registered as <experiment>-<name>.",
    )
    path: str = Field(
        ..., description="save_pretrained directory: config.json, safetensors, tokenizer files."
    )


class AdaptSpec(Strict):
    """Domain adaptation (ULMFiT): continue a model's LM training on a task's unlabelled text."""

    families: list[str] = Field(
        ..., min_length=1, description="Models to adapt: elmo, gpt, bert or a checkpoint name."
    )
    tasks: list[str] | None = Field(None, description="Tasks to adapt on; default every task.")
    max_steps: int = Field(50, ge=1, description="Optimizer steps on the task's texts.")
    lr: float | None = Field(None, gt=0, description="Default: the family's pretraining lr.")


class TransferSpec(Strict):
    """The sweep: tasks x families x modes x label budgets x seeds, each mode with its own lr."""

    tasks: list[TaskSpec] = []
    families: list[Family] | None = Field(None, description="Default: the pretrained families.")
    checkpoints: list[CheckpointSpec] = Field(
        [],
        description="Your HF checkpoints (bert/gpt2) as extra families: [{name: mine, path: dir}].",
    )
    adapt: AdaptSpec | None = Field(
        None,
        description="Off; {families: [gpt, bert], tasks: [t], max_steps: 50, lr: null} adds "
        "<family>+adapt.",
    )
    modes: list[str] = Field(
        ["scratch", "frozen", "finetune", "partial:1"],
        description="scratch | frozen | frozen:layer=N | finetune | partial:k | partial:k:frozen.",
    )
    budgets: list[int | Literal["all"]] = Field([100, "all"], description="Labelled examples.")
    seeds: list[int] = Field([0, 1], min_length=1)
    lrs: dict[str, list[float]] = Field(
        {
            "scratch": [1e-3, 3e-4],
            "frozen": [1e-2, 1e-3],
            "finetune": [3e-4, 1e-4],
            "partial": [3e-4, 1e-4],
        },
        description="Grid per mode family; the best on dev is kept (a fair race).",
    )
    # The downstream protocol (pipelines/transfer/protocol.py): optimizer steps, not epochs.
    passes: int = Field(20, ge=1, description="Planned passes over the labelled examples.")
    min_steps: int = Field(
        200, ge=1, description="Step floor: small budgets repeat their examples until here."
    )
    max_steps: int = Field(2000, ge=1, description="Step ceiling.")
    evals: int = Field(
        20, ge=10, description="Dev evaluations within min_steps (eval_every = min_steps // evals)."
    )
    patience: int = Field(
        5, ge=1, description="Evaluations without a better dev score before stopping."
    )
    warmup: float = Field(0.1, ge=0, lt=1, description="Warmup fraction, then linear decay.")
    encoder_lr_scale: float = Field(
        1.0, gt=0, description="Loaded encoder weights train at lr * this; the head at lr."
    )
    batch_size: int = Field(16, ge=1)
    max_len: int = Field(64, ge=8, description="Subword tokens per input.")
    probe_tasks: list[str] = Field([], description="Tasks that get a linear probe per layer.")

    @model_validator(mode="after")
    def _steps_in_order(self) -> TransferSpec:
        if not self.evals <= self.min_steps <= self.max_steps:
            raise ValueError(
                f"need evals <= min_steps <= max_steps, got {self.evals}, {self.min_steps}, "
                f"{self.max_steps}: a run evaluates at least `evals` times within its steps"
            )
        return self

    @model_validator(mode="after")
    def _models_named_once(self) -> TransferSpec:
        names = [c.name for c in self.checkpoints]
        taken = {"word2vec", "elmo", "gpt", "bert", "baseline"}
        for name in names:
            if name in taken:
                raise ValueError(f"checkpoint name {name!r} is taken by a built-in family")
            if names.count(name) > 1:
                raise ValueError(f"checkpoint name {name!r} is used twice")
        if self.adapt is None:
            return self
        for name in self.adapt.families:
            if name not in (*ADAPTABLE, *names):
                raise ValueError(
                    f"adapt.families: {name!r} has no language model to continue; choose from "
                    f"{', '.join([*ADAPTABLE, *names])}"
                )
        tasks = [t.name for t in self.tasks]
        for name in self.adapt.tasks or []:
            if name not in tasks:
                raise ValueError(f"adapt.tasks: no task named {name!r}; tasks: {tasks}")
        return self


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


class ComputeSpec(Strict):
    """Where per-shard tasks (encoding) run: a thread pool here, or a Dask or Ray cluster."""

    runner: Literal["thread", "dask", "ray"] = Field(
        "thread", description="thread | dask (prefect-dask) | ray (needs: pip install prefect-ray)."
    )
    threads: int = Field(
        1, ge=1, description="thread: shards at once (one shard already uses every core)."
    )
    dask: DaskSpec = DaskSpec()
    ray: RaySpec = RaySpec()


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

    @model_validator(mode="after")
    def _adapted_models_exist(self) -> Spec:
        """Fail before pretraining, not after it, when adaptation names a model nobody makes."""
        adapt = self.transfer.adapt
        known = [*self.pretrain.families, *(c.name for c in self.transfer.checkpoints)]
        for name in adapt.families if adapt else []:
            if name not in known:
                raise ValueError(
                    f"transfer.adapt.families: {name!r} is neither in pretrain.families nor a "
                    "transfer.checkpoints name; add it to one of them"
                )
        return self

    def tracking_uri(self) -> str:
        """The spec's URI, else $MLFLOW_TRACKING_URI, else SQLite under the store."""
        if self.tracking.uri:
            return self.tracking.uri
        if os.environ.get("MLFLOW_TRACKING_URI"):
            return os.environ["MLFLOW_TRACKING_URI"]
        return f"sqlite:///{Path(self.store).expanduser().resolve() / 'mlflow.db'}"


class PretrainlabError(Exception):
    """Base of every error a user can fix; the CLI prints its message without a traceback."""


class SpecError(PretrainlabError, ValueError):
    """A spec that cannot be used; the message names the file, the field and the fix."""


def _field_path(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in ("wordpiece", "bpe", "wordlevel") and parts:
            continue  # discriminator tag pydantic inserts; not a YAML key
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(top level)"


def format_validation_error(error: ValidationError, origin: str) -> str:
    lines = [f"{origin}: {error.error_count()} problem(s) in the spec"]
    for item in error.errors():
        where = _field_path(item["loc"])
        given = item.get("input")
        shown = "" if isinstance(given, dict) else f" (got {given!r})"
        lines.append(f"  {where}: {item['msg']}{shown}")
    return "\n".join(lines)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (values parsed as YAML) to a nested dict."""
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise SpecError(f"override {override!r}: expected KEY=VALUE, e.g. corpus.min_chars=20")
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SpecError(f"override {override!r}: {part!r} is not a section")
        node[leaf] = yaml.safe_load(raw)
    return data


def spec_from_dict(data: Any, origin: str = "<spec>") -> Spec:
    if not isinstance(data, dict):
        raise SpecError(f"{origin}: the spec must be a YAML mapping, got {type(data).__name__}")
    try:
        return Spec.model_validate(data)
    except ValidationError as error:
        raise SpecError(format_validation_error(error, origin)) from None


def load_spec(path: str | Path, overrides: list[str] | None = None) -> Spec:
    """Read, override and validate a spec file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"{path}: spec file not found (try configs/demo.yaml)") from None
    except yaml.YAMLError as error:
        raise SpecError(f"{path}: not valid YAML: {error}") from None
    data = apply_overrides(data or {}, overrides or [])
    return spec_from_dict(data, str(path))


EXAMPLE_SOURCES = [
    {"path": "data/my_corpus/*.txt.gz", "doc_per": "paragraph"},
    {"path": "data/wiki.jsonl", "text_field": "text"},
    {"dataset": "lee-news"},
]


def _yaml_scalar(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=200).strip().removesuffix("\n...")


def _annotated_lines(model: type[BaseModel], values: dict[str, Any], indent: int) -> list[str]:
    lines: list[str] = []
    pad = " " * indent
    for name, field in model.model_fields.items():
        value = values[name]
        note = f"  # {field.description}" if field.description else ""
        sub = field.annotation if isinstance(field.annotation, type) else None
        if sub is not None and issubclass(sub, BaseModel):
            lines.append(f"{pad}{name}:{note}")
            lines += _annotated_lines(sub, value, indent + 2)
        elif name == "sources":
            lines.append(f"{pad}{name}:{note}")
            lines += [f"{pad}  - {_yaml_scalar(source)}" for source in EXAMPLE_SOURCES]
        else:
            lines.append(f"{pad}{name}: {_yaml_scalar(value)}{note}")
    return lines


def example_spec_yaml() -> str:
    """Every field of the spec with its default and description: configs/full.yaml."""
    spec = Spec.model_validate({"corpus": {"sources": EXAMPLE_SOURCES}})
    header = [
        "# Every field of the experiment spec, with its default and what it does.",
        "# Generated by `pretrainlab check --example` (a test keeps this file in sync).",
        "# Relative paths are taken from the directory you run pretrainlab in.",
    ]
    body = _annotated_lines(Spec, spec.model_dump(mode="json", exclude_none=False), 0)
    return "\n".join(header + body) + "\n"
