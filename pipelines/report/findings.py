"""Typed findings: the numbers and booleans that sections show and claims judge.

Each finding is computed once from the catalog's scores (`scores.Data`); a section renders it
and a claim reads its fields, never the report's sentences.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipelines.report.readings import ConvergenceSummary
from pipelines.report.scores import BaselineGap, Data, Diff, ScoreKey, Stat, family_of, mode_of


@dataclass(frozen=True)
class ModePair:
    """Two scores of one model on one task at one budget (e.g. finetune vs scratch)."""

    task: str
    model: str
    budget: str
    a: Stat
    b: Stat
    a_key: ScoreKey
    b_key: ScoreKey
    a_vs_baseline: BaselineGap | None = None

    @property
    def diff(self) -> Diff:
        return Diff.of(self.a, self.b)


def pairs(data: Data, mode_a: str, mode_b: str) -> list[ModePair]:
    """Every (task, model, budget) scored in both modes, in table order."""
    out = []
    for key in data.cells():
        if key.mode == mode_a and (other := data.scores.get(key.but(mode=mode_b))):
            a = data.scores[key]
            gap = data.against_baseline(key.task, key.budget, a)
            out.append(
                ModePair(key.task, key.model, key.budget, a, other, key, key.but(mode=mode_b), gap)
            )
    return out


def adapted_pairs(data: Data) -> list[ModePair]:
    """ULMFiT's middle stage: each `<family>+adapt` model fine-tuned vs its parent."""
    out = []
    for key in data.cells():
        if key.mode == "finetune" and key.model.endswith("+adapt"):
            parent_key = key.but(model=key.model.removesuffix("+adapt"))
            if parent := data.scores.get(parent_key):
                out.append(ModePair(key.task, key.model, key.budget, data.scores[key], parent,
                                    key, parent_key))  # fmt: skip
    return out


@dataclass(frozen=True)
class SingleLayer:
    """The frozen scalar mix vs the best frozen single layer (`frozen:layer=N`)."""

    task: str
    model: str
    budget: str
    mix: Stat
    layer: int
    best: Stat
    mix_key: ScoreKey
    best_key: ScoreKey

    @property
    def diff(self) -> Diff:
        return Diff.of(self.mix, self.best)


def single_layers(data: Data) -> list[SingleLayer]:
    out = []
    cells = data.cells()
    for key in cells:
        if key.mode != "frozen":
            continue
        singles = [
            (mode.layer, data.scores[k], k)
            for k in cells
            if (k.task, k.model, k.budget) == (key.task, key.model, key.budget)
            and (mode := mode_of(k.mode)) is not None
            and mode.name == "frozen"
            and mode.layer is not None
        ]
        if singles:
            layer, stat, best = max(singles, key=lambda ls: ls[1].mean)
            mix = data.scores[key]
            out.append(SingleLayer(key.task, key.model, key.budget, mix, layer, stat, key, best))
    return out


@dataclass
class PartialCurve:
    """Score vs number of pretrained layers loaded, k (scratch = 0), for one regime of the
    loaded layers: fine-tuned (`partial:k`) or frozen (`partial:k:frozen`)."""

    task: str
    model: str
    budget: str
    frozen: bool
    points: list[tuple[int, Stat]] = field(default_factory=list)
    keys: dict[int, ScoreKey] = field(default_factory=dict)  # k -> its cell

    @property
    def label(self) -> str:
        return f"{self.model}/{self.task}@{self.budget}" + (" frozen" if self.frozen else "")

    def sort_key(self) -> tuple[bool, str, str, str]:
        return (self.frozen, self.task, self.model, self.budget)


def partial_curves(data: Data) -> list[PartialCurve]:
    """Every partial:k and partial:k:frozen curve, scratch as k = 0; fine-tuned ones first."""
    curves: dict[tuple[str, str, str, bool], PartialCurve] = {}
    for key in data.cells():
        mode = mode_of(key.mode)
        if mode is None or mode.name != "partial" or mode.k is None:
            continue
        slot = (key.task, key.model, key.budget, mode.freeze_loaded)
        curve = curves.setdefault(slot, PartialCurve(*slot))
        curve.points.append((mode.k, data.scores[key]))
        curve.keys[mode.k] = key
    for curve in curves.values():
        if scratch := data.score(curve.task, curve.model, "scratch", curve.budget):
            curve.points.append((0, scratch))
            curve.keys[0] = data.key(curve.task, curve.model, "scratch", curve.budget)
        curve.points.sort(key=lambda p: p[0])
    return sorted(curves.values(), key=PartialCurve.sort_key)


@dataclass(frozen=True)
class BestMode:
    """A family's best pretrained (non-scratch) mode on a task at its largest budget."""

    mode: str
    budget: str
    stat: Stat


def best_at_largest(data: Data, task: str, family: str) -> BestMode | None:
    budgets = data.budgets(task)
    b = budgets[-1] if budgets else None
    found = [
        (k.mode, s)
        for k, s in data.scores.items()
        if k.task == task
        and family_of(k.model) == family
        and k.budget == b
        and k.metric == data.metric(task)
        and k.mode != "scratch"
    ]
    if not found or b is None:
        return None
    mode, stat = max(found, key=lambda ms: (ms[1].mean, ms[0] == "finetune"))
    return BestMode(mode, b, stat)


# The probing contrast, by task name: part-of-speech (syntax) vs word-in-context (senses).
def is_pos(task: str) -> bool:
    return "pos" in task.lower()


def is_wic(task: str) -> bool:
    return "wic" in task.lower()


@dataclass(frozen=True)
class PolysemyRow:
    model: str
    layer: int
    same: float
    diff: float

    @property
    def separation(self) -> float:
        return self.same - self.diff


@dataclass(frozen=True)
class MaskingCell:
    """One BERT model's score (by its pretraining mask_replace_prob) in a task/mode/budget."""

    task: str
    mode: str
    budget: str
    mask_prob: float
    stat: Stat
    model: str = ""  # bert, a variant's name, or name@version
    seeds: dict[int, float] = field(default_factory=dict)  # seed -> score


@dataclass(frozen=True)
class Convergence:
    """Optimizer steps (or epochs) to 95% of the dev gain per cell (`readings.convergence`):
    per seed, summarised over seeds, and the cells with a run that did not converge."""

    steps: dict[ScoreKey, dict[int, float]]
    summary: dict[ScoreKey, ConvergenceSummary]
    unconverged: set[ScoreKey]
    unit: str


@dataclass(frozen=True)
class ProbeLayer:
    """One layer of a (task, model)'s probes: per metric, its value per probe seed."""

    task: str
    model: str
    layer: int
    depth: float  # layer / top layer: 0 = embeddings, 1 = top
    seeds: dict[str, dict[int, float]]

    @property
    def control(self) -> str | None:
        """What the probe is read against: `selectivity` (tag tasks, a per-type control),
        `above_floor` (majority / shuffled-label floor), None (rows before controls)."""
        return next((m for m in ("selectivity", "above_floor") if m in self.seeds), None)

    def mean(self, metric: str) -> float:
        values = self.seeds[metric].values()
        return sum(values) / len(values)


@dataclass(frozen=True)
class Findings:
    """Everything the claims judge, as the sections computed it."""

    few_labels: list[ModePair]  # finetune vs scratch
    budgets: dict[str, list[str]]  # task -> its label budgets, smallest first
    convergence: Convergence
    frozen_finetune: list[ModePair]  # finetune vs frozen
    partial: list[PartialCurve]
    best_layers: dict[tuple[str, str], int]  # (task, model) -> best probe layer
    word2vec_wic: list[tuple[str, BestMode, BaselineGap | None]]
    polysemy: list[PolysemyRow]
    singles: list[SingleLayer]
    masking: list[MaskingCell]
    adapted: list[ModePair]
    probes: list[ProbeLayer] = field(default_factory=list)  # per layer, with their controls
