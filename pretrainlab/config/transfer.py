"""Transfer: the labelled tasks, the user's own checkpoints, domain adaptation, the sweep."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pretrainlab.config.base import Encoding, Strict
from pretrainlab.config.families import RESERVED_NAMES, Family
from pretrainlab.config.modes import MODES, Mode, parse_mode

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
    encoding: Encoding = Field("utf-8", description="Bytes of the task files: gb18030, big5...")
    dev_fraction: float = Field(0.1, gt=0, lt=1)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    max_examples: int | None = Field(None, ge=1, description="Cap per split (demo speed).")
    modes: list[Mode] | None = Field(
        None, description="This task's transfer modes; default transfer.modes (e.g. only frozen "
        "modes on a probing task)."
    )

    @model_validator(mode="after")
    def _one_source(self) -> TaskSpec:
        self._exactly_one("dataset", "train")
        return self


MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


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

    tasks: list[TaskSpec] = Field([])
    families: list[Family] | None = Field(
        None, description="Default: the pretrained families (a family's variants join it)."
    )
    checkpoints: list[CheckpointSpec] = Field(
        [],
        description="Your HF checkpoints (bert/gpt2) as extra families: [{name: mine, path: dir}].",
    )
    adapt: AdaptSpec | None = Field(
        None,
        description="Off; {families: [gpt, bert], tasks: [t], max_steps: 50, lr: null} adds "
        "<family>+adapt.",
    )
    modes: list[Mode] = Field(
        [Mode("scratch"), Mode("frozen"), Mode("finetune"), Mode("partial", k=1)],
        description=f"{MODES}.",
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
    probe_seeds: int = Field(
        3, ge=1, description="Probe seeds 0..n-1 per layer, each with its control (or floor)."
    )

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
        for name in names:
            if name in RESERVED_NAMES:
                raise ValueError(f"checkpoint name {name!r} is taken by a built-in family")
            if names.count(name) > 1:
                raise ValueError(f"checkpoint name {name!r} is used twice")
        tasks = [t.name for t in self.tasks]
        for name in (self.adapt.tasks or []) if self.adapt else []:
            if name not in tasks:
                raise ValueError(f"adapt.tasks: no task named {name!r}; tasks: {tasks}")
        return self

    def grid_sizes(self) -> dict[str, int]:
        """{grid (scratch, frozen, finetune, partial): rates in it} for the grids the sweep's
        and the tasks' modes draw from: a fair race gives every mode a grid of the same size."""
        modes = [*self.modes, *(m for t in self.tasks for m in t.modes or [])]
        return {name: len(self.lrs[name]) for name in sorted({parse_mode(m).name for m in modes})}

    @model_validator(mode="after")
    def _every_mode_has_a_grid(self) -> TransferSpec:
        """Every mode a run can meet (the sweep's and any task's own) has a rate grid."""
        for where, mode in [("modes", m) for m in self.modes] + [
            (f"tasks[{t.name}].modes", m) for t in self.tasks for m in t.modes or []
        ]:
            if mode.name not in self.lrs:
                raise ValueError(
                    f"{where}: {mode!s} draws its learning rates from lrs.{mode.name}, which is "
                    f"missing; add lrs.{mode.name}: [..] (grids: {', '.join(self.lrs)})"
                )
        return self
