"""Pretraining: one section per family, the shared training loop, the budget and torchrun."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from pretrainlab.config.base import Strict
from pretrainlab.config.families import FAMILY_NAMES, RESERVED_NAMES, Family
from pretrainlab.config.transfer import MODEL_NAME


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
    schedule: Literal["cosine", "wsd"] = Field(
        "cosine",
        description="Learning-rate schedule: warmup + cosine, or warmup-stable-decay (constant "
        "after warmup, a linear decay over the last `cooldown` share of max_steps): with WSD "
        "each pretraining point is annealed by its own short cooldown branch.",
    )
    cooldown: float = Field(
        0.1, gt=0, lt=1, description="WSD only: the decay's share of the steps it anneals."
    )

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
    output_bias: Literal["unigram", "zero"] = Field(
        "unigram",
        description="MLM output bias at step 0: the train split's unigram log probabilities "
        "(start at word frequencies) or zero (transformers' init; the tied word embeddings "
        "then learn the frequencies, as one shared direction of every input vector).",
    )
    short_seq_len: int | None = Field(
        None,
        ge=8,
        description="Devlin et al.'s length schedule: pairs of this length for the first "
        "short_seq_share of the steps, then max_seq_len (valid: always max_seq_len). Attention "
        "starts uniform, so short pairs learn to look at neighbours sooner. null: one length.",
    )
    short_seq_share: float = Field(
        0.9, gt=0, lt=1, description="Share of loop.max_steps trained at short_seq_len."
    )
    loop: LoopSpec = LoopSpec()

    @model_validator(mode="after")
    def _replacement_shares(self) -> BERTSpec:
        if self.mask_replace_prob + self.random_replace_prob > 1:
            raise ValueError("mask_replace_prob + random_replace_prob must be <= 1")
        if self.short_seq_len is not None and self.short_seq_len >= self.max_seq_len:
            raise ValueError(
                f"short_seq_len {self.short_seq_len} must be below max_seq_len "
                f"{self.max_seq_len} (or null for one length throughout)"
            )
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


class VariantSpec(Strict):
    """One more model of a family in the same experiment (an ablation): the family's section
    with a few fields changed, trained on the family's tokenizer and token shards, registered
    and transferred under its own name."""

    name: str = Field(
        ..., pattern=MODEL_NAME, description="Shown as `family` in rows; registered as "
        "<experiment>-<name>."
    )
    family: Family = Field(..., description="The family it varies: one of pretrain.families.")
    set: dict[str, Any] = Field(
        {}, description="Fields of that family's section that differ, e.g. {mask_replace_prob: "
        "1.0}; nested sections as mappings: {loop: {max_steps: 400}}."
    )


def _merged(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `changes` on top, section by section (a nested mapping changes only the
    fields it names)."""
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            value = _merged(merged[key], value)
        merged[key] = value
    return merged


def _override_errors(error: ValidationError) -> str:
    """A section's validation errors as `set.<field>: what is wrong`."""
    return "; ".join(
        f"{'.'.join(['set', *(str(p) for p in item['loc'])])}: {item['msg']}"
        for item in error.errors()
    )


class PretrainSpec(Strict):
    families: list[Family] = Field(list(FAMILY_NAMES), min_length=1)
    variants: list[VariantSpec] = Field(
        [], description="Extra models of a family, e.g. [{name: bert-mask100, family: bert, "
        "set: {mask_replace_prob: 1.0, random_replace_prob: 0.0}}]: ablations in one spec."
    )
    budget: BudgetSpec = BudgetSpec()
    launch: LaunchSpec = LaunchSpec()
    points: list[float] = Field(
        [], description="Pretraining points kept as tagged snapshots for break-even curves, as "
        "shares of each family's steps (word2vec: of its epochs), e.g. [0.1, 0.3, 1.0]; 1.0 is "
        "the final model. Default none: only the final model.",
    )
    unigram_gap_nats: float = Field(
        0.5, description="Tag an LM run `learned_little` when valid loss is within this of entropy."
    )
    word2vec: Word2VecSpec = Word2VecSpec()
    elmo: ELMoSpec = ELMoSpec()
    gpt: GPTSpec = GPTSpec()
    bert: BERTSpec = BERTSpec()


    @model_validator(mode="after")
    def _points_are_shares(self) -> PretrainSpec:
        bad = [p for p in self.points if not 0 < p <= 1]
        if bad:
            raise ValueError(
                f"points {bad}: each point is a share of a family's steps in (0, 1], e.g. "
                "[0.1, 0.3, 1.0]"
            )
        if self.points != sorted(set(self.points)):
            raise ValueError(f"points {self.points}: list each point once, in ascending order")
        return self

    @model_validator(mode="after")
    def _variants_resolve(self) -> PretrainSpec:
        """Each variant has a name of its own, varies a family this spec pretrains, and its
        overrides make a valid section (a misspelt field fails here, not after pretraining)."""
        names = [v.name for v in self.variants]
        for i, variant in enumerate(self.variants):
            where = f"variants[{i}] ({variant.name})"
            if variant.name in RESERVED_NAMES:
                raise ValueError(
                    f"{where}: the name is taken by a built-in family; name it after what it "
                    f"changes, e.g. {variant.family}-mask100"
                )
            if names.count(variant.name) > 1:
                raise ValueError(f"{where}: the name is used twice; give each variant its own")
            if variant.family not in self.families:
                raise ValueError(
                    f"{where}: family {variant.family!r} is not in pretrain.families "
                    f"{self.families}; add it (a variant trains on its family's tokenizer and is "
                    "compared with it)"
                )
            try:
                self.section_of(variant.name)
            except ValidationError as error:
                raise ValueError(
                    f"{where}: {_override_errors(error)} (fields of pretrain.{variant.family}: "
                    f"{', '.join(type(getattr(self, variant.family)).model_fields)})"
                ) from None
        return self

    def models(self) -> list[tuple[str, str]]:
        """(name, family) of every model this spec pretrains: the families, then the variants."""
        return [(f, f) for f in self.families] + [(v.name, v.family) for v in self.variants]

    def section_of(self, name: str) -> Strict:
        """The settings model `name` trains with: a family's section, or a variant's (its
        family's section with the variant's overrides applied)."""
        if name in FAMILY_NAMES:
            return getattr(self, name)
        variant = next(v for v in self.variants if v.name == name)
        base = getattr(self, variant.family)
        return type(base).model_validate(_merged(base.model_dump(), variant.set))

    def resolved(self, name: str) -> PretrainSpec:
        """This section as model `name` sees it: its family's section replaced by its own."""
        family = dict(self.models())[name]
        return self.model_copy(update={family: self.section_of(name)})
