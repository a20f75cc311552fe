"""Transfer a pretrained model to a labelled task: every mode, every family, as the papers did.

Modes (`TransferConfig.mode`):
- `scratch`: the same architecture (config from the model directory), randomly initialised;
  word2vec: random vectors of the same shape and scale. Everything trains at `lr`.
- `frozen`: the encoder never trains; the head reads a learned softmax-weighted scalar mix of
  ALL layers with a global scale gamma (ELMo, eq. 1). `frozen:layer=N` reads layer N only.
- `finetune`: everything trains; the pretrained encoder at `lr * encoder_lr_scale` (the spec's
  default 1.0 is BERT's one rate; below 1 keeps the loaded weights nearer what pretraining
  learned, as ULMFiT's lower rates do).
- `partial:k`: the embeddings and bottom k layers loaded, the rest re-initialised; loaded
  layers fine-tune at the encoder rate, re-initialised ones at `lr`. `partial:k:frozen`: the
  loaded layers stay fixed. word2vec has no layers: partial is an error.

Which layers a trained encoder's head reads: BERT and GPT the top layer, ELMo a scalar mix of
all three (it was never used otherwise), word2vec its one layer. See
`pipelines/transfer/heads.py` for
the inputs, pooling and the linear head.

Frozen mode runs the encoder ONCE per (model, task): the pooled per-layer features of every
train/dev/test example are written to `feature_cache` and every later run (any budget, seed,
rate, layer probe) trains only the mix and the head on them.

Training (`pipelines/transfer/protocol.py` states the rules): AdamW for a planned number of
optimizer steps over reshuffled passes of the examples, warmup + linear decay, a dev evaluation
every `eval_every` steps (reported via `on_eval`), early stopping after `patience` evaluations
without a better dev score (span F1 for BIO tag sets, else accuracy) once `min_steps` are done,
test metrics and per-item test predictions with the weights of the best dev evaluation.

Determinism contract: a run's result depends only on its inputs (model files, examples, config
with its seed and `threads`), not on where it runs (serial, threads, a Dask or Ray worker) or
what its process ran before: every entry point runs under `protocol.cell_scope` (see there).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.transfer.features import (
    SPLITS,
    device,
    frozen_features,
    pad_id,
)
from pipelines.transfer.heads import (
    Encoded,
    Encoder,
    TaskHead,
    TransferError,
    encode_examples,
    family_inputs,
    load_encoder,
    pooled_states,
)
from pipelines.transfer.metrics import headline, score_split
from pipelines.transfer.protocol import (
    TransferConfig,
    cell_scope,
    check_config,
    is_converged,
    lr_factor,
    plan,
)
from pretrainlab.config import Mode, parse_mode

if TYPE_CHECKING:
    from pipelines.data.task_data import Example, TaskData



@dataclass(frozen=True)
class Evaluation:
    index: int  # 1-based: the n-th dev evaluation of the run
    step: int  # optimizer steps taken by then
    split: str
    metrics: dict[str, float]


@dataclass(frozen=True)
class Predictions:
    """Per test item (a token for tag tasks): the example it belongs to, gold and predicted
    label indices into `task.labels + task.unseen` (a gold index past the labels is unseen)."""

    example: tuple[int, ...]
    gold: tuple[int, ...]
    pred: tuple[int, ...]


@dataclass(frozen=True)
class TransferResult:
    curve: list[Evaluation]  # every dev evaluation (convergence curves)
    best_eval: int  # 1-based index into curve
    steps: int  # optimizer steps taken
    converged: bool  # see protocol.is_converged
    dev: dict[str, float]  # at the best evaluation: accuracy, macro_f1 (+ span_f1 for BIO tags)
    test: dict[str, float]
    test_predictions: Predictions  # with the weights of the best evaluation
    mix_weights: list[float] | None  # the scalar mix's softmax weights, when there is a mix
    train_examples: int
    seconds: float


# ----------------------------------------------------------------------------- labels & splits


@dataclass(frozen=True)
class Split:
    """The examples of one split: item labels and which items each example owns."""

    examples: tuple[Example, ...]
    labels: np.ndarray  # (items,) label indices
    item_offsets: np.ndarray  # (examples + 1,)

    def items(self, examples: Sequence[int]) -> np.ndarray:
        o = self.item_offsets
        return np.concatenate([np.arange(o[e], o[e + 1]) for e in examples])


def _split(task: TaskData, examples: Sequence[Example], name: str) -> Split:
    """Label indices: the head predicts `task.labels`; a dev/test label train never has
    (`task.unseen`) gets an index past the head's outputs, so it is always scored wrong."""
    scored = task.labels + (task.unseen if name != "train" else ())
    index = {label: i for i, label in enumerate(scored)}
    labels, offsets = [], [0]
    for n, ex in enumerate(examples):
        values = ex.tags if task.kind == "tag" else (ex.label,)
        if task.kind == "tag" and len(ex.tags) != len(ex.words):
            raise TransferError(
                f"task {task.name}, {name} example {n}: {len(ex.words)} words but "
                f"{len(ex.tags)} tags; every word needs one tag"
            )
        for value in values:
            if value not in index:
                raise TransferError(
                    f"task {task.name}, {name} example {n}: label {value!r} is not in the "
                    f"task's label set {list(scored)}"
                )
            labels.append(index[value])
        offsets.append(len(labels))
    return Split(tuple(examples), np.asarray(labels, dtype=np.int64), np.asarray(offsets))


def _splits(task: TaskData, train: Sequence[Example]) -> dict[str, Split]:
    if not train:
        raise TransferError(f"task {task.name}: no training examples given")
    for name in ("dev", "test"):
        if not getattr(task, name):
            raise TransferError(f"task {task.name}: the {name} split is empty")
    return {
        "train": _split(task, train, "train"),
        "dev": _split(task, task.dev, "dev"),
        "test": _split(task, task.test, "test"),
    }


# ----------------------------------------------------------------------------- feature sources


class EncoderSource:
    """Features computed by a (trainable) encoder on every batch."""

    def __init__(
        self, encoder: Encoder, encoded: dict[str, Encoded], layers: tuple[int, ...], pad_id: int
    ) -> None:
        self.encoder, self.encoded, self.layers, self.pad_id = encoder, encoded, layers, pad_id

    def features(self, split: str, examples: Sequence[int]) -> torch.Tensor:
        return pooled_states(self.encoder, self.encoded[split], examples, self.layers, self.pad_id)


class CachedSource:
    """Pooled per-layer features computed once: (items, G, L, D) per split."""

    def __init__(
        self,
        arrays: dict[str, np.ndarray],
        splits: dict[str, Split],
        rows: dict[str, np.ndarray],
        layers: tuple[int, ...],
    ) -> None:
        self.arrays, self.splits, self.rows, self.layers = arrays, splits, rows, layers

    def features(self, split: str, examples: Sequence[int]) -> torch.Tensor:
        rows = self.rows[split][self.splits[split].items(examples)]
        return torch.from_numpy(np.ascontiguousarray(self.arrays[split][rows][:, :, self.layers]))


def _cached_source(
    arrays: dict[str, np.ndarray],
    task: TaskData,
    splits: dict[str, Split],
    layers: tuple[int, ...],
) -> CachedSource:
    """Map the (budgeted) train examples to their rows in the full train split's features."""
    full = _split(task, task.train, "train")
    first_row: dict[Example, int] = {}
    for n, ex in enumerate(task.train):
        first_row.setdefault(ex, n)
    missing = [n for n, ex in enumerate(splits["train"].examples) if ex not in first_row]
    if missing:
        raise TransferError(
            f"task {task.name}: {len(missing)} training example(s) (e.g. number {missing[0]}) "
            "are not in the task's train split; draw budgets with task_data.take_budget"
        )
    starts = [full.item_offsets[first_row[ex]] for ex in splits["train"].examples]
    lengths = np.diff(splits["train"].item_offsets)
    train_rows = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lengths, strict=True)])
    rows = {"train": train_rows}
    rows |= {s: np.arange(len(splits[s].labels)) for s in ("dev", "test")}
    for split in SPLITS:
        if arrays[split].shape[0] != len(_split(task, getattr(task, split), split).labels):
            raise TransferError(f"feature cache for task {task.name} ({split}) does not match it")
    n_layers = arrays["train"].shape[2]
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise TransferError(
            f"frozen:layer={bad[0]}: the model has layers 0..{n_layers - 1} (0 = embeddings)"
        )
    return CachedSource(arrays, splits, rows, layers)


# ----------------------------------------------------------------------------- training


def _predict(head: TaskHead, source: Any, split: Split, name: str, batch_size: int) -> np.ndarray:
    """Predicted label index per item of `split`, in eval mode."""
    head.eval()
    if isinstance(source, EncoderSource):
        source.encoder.eval()
    preds = []
    with torch.no_grad():
        for start in range(0, len(split.examples), batch_size):
            batch = range(start, min(start + batch_size, len(split.examples)))
            features = source.features(name, batch).to(head.linear.weight.device)
            preds.append(head(features).argmax(-1).cpu().numpy())
    return np.concatenate(preds)


def _optimizer(
    head: TaskHead, source: Any, config: TransferConfig, loaded: set[str]
) -> torch.optim.AdamW:
    """AdamW with the head (and re-initialised encoder weights) at `lr` and loaded weights at
    `lr * encoder_lr_scale`; each group keeps its peak rate as `peak_lr` for the schedule."""
    groups = [{"params": list(head.parameters()), "peak_lr": config.lr}]
    if isinstance(source, EncoderSource):
        named = [(n, p) for n, p in source.encoder.named_parameters() if p.requires_grad]
        slow = [p for n, p in named if n in loaded]
        fast = [p for n, p in named if n not in loaded]
        groups += [
            {"params": slow, "peak_lr": config.lr * config.encoder_lr_scale},
            {"params": fast, "peak_lr": config.lr},
        ]
    return torch.optim.AdamW([{**g, "lr": g["peak_lr"]} for g in groups if g["params"]])


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[list[int]]:
    """Shuffled mini-batches of example indices, pass after pass, reshuffled every pass."""
    while True:
        order = torch.randperm(n, generator=generator).tolist()
        for start in range(0, n, batch_size):
            yield order[start : start + batch_size]


def _train_mode(trainable: list[torch.nn.Module], source: Any) -> None:
    for module in trainable:
        module.train()
    if isinstance(source, EncoderSource) and not any(
        p.requires_grad for p in source.encoder.parameters()
    ):
        source.encoder.eval()  # a fully frozen encoder keeps dropout off


def _fit(
    task: TaskData,
    splits: dict[str, Split],
    source: Any,
    head: TaskHead,
    config: TransferConfig,
    loaded: set[str],
    on_eval: Callable[[Evaluation], None] | None,
    start: float,
) -> TransferResult:
    """Train for the planned steps (protocol.py), evaluate on dev every `eval_every` steps,
    stop after `patience` evaluations without improvement once `min_steps` are done, then
    restore the best evaluation's weights and score the test split."""
    train, judged_by = splits["train"], headline(task)
    schedule = plan(config, len(train.examples))
    optimizer = _optimizer(head, source, config, loaded)
    target = head.linear.weight.device
    trainable = [head] + ([source.encoder] if isinstance(source, EncoderSource) else [])
    batches = _batches(
        len(train.examples), config.batch_size, torch.Generator().manual_seed(config.seed)
    )
    curve: list[Evaluation] = []
    best, best_score, best_state, plateaued, step = 0, -math.inf, None, False, 0
    _train_mode(trainable, source)
    for step in range(1, schedule.steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = group["peak_lr"] * lr_factor(step, schedule)
        batch = next(batches)
        labels = torch.from_numpy(train.labels[train.items(batch)]).to(target)
        loss = F.cross_entropy(head(source.features("train", batch).to(target)), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % schedule.eval_every and step < schedule.steps:
            continue
        pred = _predict(head, source, splits["dev"], "dev", config.batch_size)
        dev = score_split(task, splits["dev"].labels, pred, splits["dev"].item_offsets)
        curve.append(Evaluation(len(curve) + 1, step, "dev", dev))
        if on_eval is not None:
            on_eval(curve[-1])
        if dev[judged_by] > best_score:
            best, best_score = len(curve), dev[judged_by]
            best_state = [copy.deepcopy(m.state_dict()) for m in trainable]
        elif step >= config.min_steps and len(curve) - best >= config.patience:
            plateaued = True
            break
        _train_mode(trainable, source)
    for module, state in zip(trainable, best_state or [], strict=True):
        module.load_state_dict(state)
    test = splits["test"]
    pred = _predict(head, source, test, "test", config.batch_size)
    return TransferResult(
        curve=curve,
        best_eval=best,
        steps=step,
        converged=is_converged([e.metrics[judged_by] for e in curve], plateaued,
                               1 / max(1, len(splits["dev"].labels))),
        dev=curve[best - 1].metrics,
        test=score_split(task, test.labels, pred, test.item_offsets),
        test_predictions=Predictions(
            example=tuple(
                np.repeat(np.arange(len(test.examples)), np.diff(test.item_offsets)).tolist()
            ),
            gold=tuple(test.labels.tolist()),
            pred=tuple(pred.tolist()),
        ),
        mix_weights=head.mix.weights().tolist() if head.mix is not None else None,
        train_examples=len(train.examples),
        seconds=time.perf_counter() - start,
    )


def build_trainable(family: str, model_dir: Path, mode: Mode) -> tuple[Encoder, Any, set[str]]:
    """The encoder for a non-frozen mode, its tokenizer, and the names of its parameters that
    were loaded from the pretrained model (they train at the encoder rate)."""
    if mode.name == "scratch":
        encoder, tokenizer, prefixes = load_encoder(family, model_dir, scratch=True)
    elif mode.name == "partial":
        encoder, tokenizer, prefixes = load_encoder(family, model_dir, load_blocks=mode.k)
    else:
        encoder, tokenizer, prefixes = load_encoder(family, model_dir)
    loaded = {n for n, _ in encoder.named_parameters() if prefixes and n.startswith(prefixes)}
    if mode.freeze_loaded:
        for name, param in encoder.named_parameters():
            param.requires_grad_(name not in loaded)
    return encoder, tokenizer, loaded


def _train_head(
    task: TaskData,
    splits: dict[str, Split],
    source: Any,
    shape: tuple[int, int, int],
    config: TransferConfig,
    loaded: set[str],
    on_eval: Callable[[Evaluation], None] | None,
    start: float,
) -> TransferResult:
    """Build the head for `shape` = (layers read, groups, width), train it, return the result."""
    # inside the run's cell_scope: the head's init does not depend on how the encoder was built
    torch.manual_seed(config.seed)
    n_layers, groups, dim = shape
    head = TaskHead(n_layers, dim, groups, len(task.labels)).to(device())
    return _fit(task, splits, source, head, config, loaded, on_eval, start)


def _run_frozen(
    task: TaskData,
    train: Sequence[Example],
    config: TransferConfig,
    arrays: dict[str, np.ndarray],
    layers: tuple[int, ...],
    on_eval: Callable[[Evaluation], None] | None,
    start: float,
) -> TransferResult:
    splits = _splits(task, train)
    source = _cached_source(arrays, task, splits, layers)
    _, groups, _, dim = arrays["train"].shape
    shape = (len(layers), groups, dim)
    return _train_head(task, splits, source, shape, config, set(), on_eval, start)


def run_transfer(
    family: str,
    model_dir: Path,
    task: TaskData,
    train: Sequence[Example],
    config: TransferConfig,
    feature_cache: Path | None = None,
    on_eval: Callable[[Evaluation], None] | None = None,
) -> TransferResult:
    """Train a head (and, by mode, the encoder) of `family`'s model on `train`; see the module
    docstring for the modes. Deterministic for a given config (its seed and threads)."""
    start = time.perf_counter()
    check_config(config)
    with cell_scope(config.seed, config.threads):  # seeds a scratch / re-initialised encoder
        return _run(family, model_dir, task, train, config, feature_cache, on_eval, start)


def _run(family: str, model_dir: Path, task: TaskData, train: Sequence[Example],
         config: TransferConfig, feature_cache: Path | None,
         on_eval: Callable[[Evaluation], None] | None, start: float) -> TransferResult:
    mode = parse_mode(config.mode)
    splits = _splits(task, train)
    if mode.name == "frozen":
        arrays = frozen_features(family, model_dir, task, config.max_len, feature_cache)
        all_layers = tuple(range(arrays["train"].shape[2]))
        layers = all_layers if mode.layer is None else (mode.layer,)
        return _run_frozen(task, train, config, arrays, layers, on_eval, start)
    encoder, tokenizer, loaded = build_trainable(family, model_dir, mode)
    encoder.to(device())
    inputs = family_inputs(family, tokenizer, config.max_len, encoder.max_positions)
    encoded = {s: encode_examples(inputs, task.kind, splits[s].examples) for s in SPLITS}
    layers = encoder.reading_layers()
    source = EncoderSource(encoder, encoded, layers, pad_id(tokenizer))
    shape = (len(layers), len(encoded["train"].items[0]), encoder.dim)
    return _train_head(task, splits, source, shape, config, loaded, on_eval, start)


def polysemy_similarity(
    family: str,
    model_dir: Path,
    task: TaskData,
    max_len: int,
    feature_cache: Path | None = None,
    threads: int = 1,
) -> dict[int, dict[str, float]]:
    """Per layer, the cosine between a word's representations in two sentences, averaged over
    same-sense and different-sense pairs of a word-in-context task's test split.

    A static model (word2vec) gives the same vector in both sentences, so both numbers are 1 by
    construction; a contextual model separates them when it has learned word senses.
    """
    if task.kind != "wic":
        raise TransferError(f"polysemy needs a word-in-context task; {task.name} is {task.kind}")
    with cell_scope(0, threads):
        test = np.asarray(frozen_features(family, model_dir, task, max_len, feature_cache)["test"])
    same = np.array([example.label == "1" for example in task.test])
    u, v = test[:, 0], test[:, 1]  # (pairs, layers, dim): the target word in each sentence
    norms = np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1)
    cosine = (u * v).sum(-1) / np.maximum(norms, 1e-12)  # (pairs, layers)
    known = norms > 0  # a word without a vector (out of vocabulary) says nothing about senses

    def mean(rows: np.ndarray, layer: int) -> float:
        chosen = rows & known[:, layer]
        return float(cosine[chosen, layer].mean()) if chosen.any() else float("nan")

    return {
        layer: {
            "same_sense_sim": mean(same, layer),
            "diff_sense_sim": mean(~same, layer),
            "pairs": float((known[:, layer]).sum()),
        }
        for layer in range(cosine.shape[1])
    }
