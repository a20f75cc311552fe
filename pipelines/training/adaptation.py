"""Domain adaptation, ULMFiT's middle stage: continue a pretrained language model's own
objective (GPT next token, BERT MLM + NSP, ELMo both directions) on a task's unlabelled text,
starting from the pretrained weights, before transfer.

Only texts are used: every text of the task's train, dev and test splits (text_a, text_b, or
a tagged sentence's words), deduplicated, never a label. Test texts are included, as ULMFiT
does: the target domain's raw text is what the stage is for, and it carries no answer.

The texts become token shards in the encoding stage's format (one sentence per text,
consecutive texts grouped into documents so BERT's next-sentence pairs exist), and the
shared training loop (`pipelines/training/loop.py`) runs `max_steps` more steps with the model's
own tokenizer, a short warm-up and its checkpoints (a killed run resumes). The summary
records the valid loss on held-out task text before and after: the number that says whether
the model moved toward the task's domain.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa
import torch

import pipelines.models.bert as bert
import pipelines.models.bert_data as bert_data
import pipelines.models.elmo as elmo
import pipelines.models.elmo_data as elmo_data
import pipelines.models.gpt as gpt
import pipelines.training.loop as training
import pipelines.training.pretraining as pretraining
from pipelines.data.encoding import TOKENIZER_ID_KEY, TOKENS_SCHEMA
from pipelines.data.tokenizer_training import TOKENIZER_SUBDIR, load_raw_tokenizer, ship_tokenizer
from pipelines.models.saved import load_pretrained
from pretrainlab.config import ADAPTABLE, LoopSpec, PretrainlabError, Spec
from storage.atomic import atomic_dir, is_complete, read_manifest, write_manifest, write_parquet
from storage.hashing import stable_hash

if TYPE_CHECKING:
    from pipelines.data.task_data import TaskData

DOC_TEXTS = 8  # texts per pseudo-document: BERT's NSP needs sentence-to-sentence transitions
VALID_SHARE = 0.1  # documents held out to measure the loss before and after adaptation
MIN_DOCS = 2  # per split
LogFn = Callable[[dict[str, float], int], None]
M = TypeVar("M")


class AdaptationError(PretrainlabError, ValueError):
    """Adaptation that cannot run as asked; the message says what to change."""


@dataclass(frozen=True)
class AdaptJob:
    architecture: str  # elmo | gpt | bert: the code paths of the parent model
    parent_dir: Path  # the parent model (weights + tokenizer/)
    texts: tuple[str, ...]
    work_dir: Path  # token shards, their memory maps, checkpoints: survives a kill
    out_dir: Path  # the adapted model, in the parent's layout
    max_steps: int
    lr: float | None = None


def task_texts(task: TaskData) -> tuple[str, ...]:
    """Every distinct text of the task's three splits, in file order; labels never enter."""
    texts: list[str] = []
    for example in (*task.train, *task.dev, *task.test):
        if task.kind == "tag":
            texts.append(" ".join(example.words))
        else:
            texts += [example.text_a, example.text_b]
    return tuple(dict.fromkeys(t for t in texts if t.strip()))


def texts_fingerprint(texts: tuple[str, ...]) -> str:
    return stable_hash(list(texts))


def choose_parent(models: Mapping[str, M], name: str) -> M:
    """The model `transfer.adapt.families` names: pretrained here or imported, else a clear
    error listing what exists."""
    if name not in models:
        raise AdaptationError(
            f"transfer.adapt.families names {name!r}, but no such model was pretrained or "
            f"imported (available: {', '.join(sorted(models)) or 'none'}); add it to "
            "pretrain.families or transfer.checkpoints"
        )
    return models[name]


def key_inputs(
    spec: Spec, architecture: str, parent_key: str, texts: tuple[str, ...]
) -> dict[str, Any]:
    """What an adapted model is computed from: its parent, the task's texts, the adaptation
    settings and the family's own (the code it runs is `code(architecture)`)."""
    settings = spec.transfer.adapt.model_dump(mode="json", exclude={"families", "tasks"})
    return {
        "parent": parent_key,
        "texts": texts_fingerprint(texts),
        "adapt": settings,
        "family": getattr(spec.pretrain, architecture).model_dump(mode="json"),
        "max_sentence_tokens": spec.tokenizers.max_sentence_tokens,
    }


def code(architecture: str) -> list[ModuleType]:
    """The modules an adapted model depends on: its family's pretraining code, and this one."""
    return [*pretraining.CODE[architecture], sys.modules[__name__]]


def _documents(ids: list[list[int]]) -> list[list[list[int]]]:
    kept = [seq for seq in ids if seq]
    return [kept[i : i + DOC_TEXTS] for i in range(0, len(kept), DOC_TEXTS)]


def write_task_shards(
    texts: tuple[str, ...], tokenizer_dir: Path, out_dir: Path, max_tokens: int
) -> dict[str, int]:
    """The texts as token shards (TOKENS_SCHEMA) in `out_dir`, a held-out share as `valid`."""
    tok, meta = load_raw_tokenizer(tokenizer_dir)
    encoded = [e.ids[:max_tokens] for e in tok.encode_batch(list(texts), add_special_tokens=False)]
    docs = _documents(encoded)
    n_valid = max(MIN_DOCS, round(len(docs) * VALID_SHARE))
    if len(docs) < n_valid + MIN_DOCS:
        raise AdaptationError(
            f"{len(texts)} task texts make {len(docs)} documents of {DOC_TEXTS}; adaptation "
            f"needs at least {n_valid + MIN_DOCS} (train + held-out); add text to the task or "
            "leave it out of transfer.adapt.tasks"
        )
    doc_ids = [stable_hash(doc) for doc in docs]
    held_out = set(sorted(doc_ids)[:n_valid])  # by hash: the same documents every time
    rows = [
        {
            "doc_id": doc_id,
            "sent_idx": i,
            "split": "valid" if doc_id in held_out else "train",
            "ids": seq,
        }
        for doc_id, doc in zip(doc_ids, docs, strict=True)
        for i, seq in enumerate(doc)
    ]
    schema = TOKENS_SCHEMA.with_metadata({TOKENIZER_ID_KEY: meta["tokenizer_id"].encode()})
    write_parquet(out_dir / "part-00000.parquet", pa.Table.from_pylist(rows, schema=schema))
    valid_tokens = sum(len(r["ids"]) for r in rows if r["split"] == "valid")
    return {
        "texts": len(texts),
        "documents": len(docs),
        "sentences": len(rows),
        "tokens_train": sum(len(r["ids"]) for r in rows) - valid_tokens,
        "tokens_valid": valid_tokens,
    }


def adapt_loop(base: LoopSpec, max_steps: int, lr: float | None) -> LoopSpec:
    """The family's loop, cut to `max_steps`, evaluated at the end, warm-up at most a tenth."""
    return base.model_copy(
        update={
            "max_steps": max_steps,
            "lr": lr if lr is not None else base.lr,
            "warmup_steps": min(base.warmup_steps, max_steps // 10),
            "log_every": min(base.log_every, max_steps),
            "eval_every": max_steps,
            "checkpoint_every": min(base.checkpoint_every, max_steps),
        }
    )


def _objective(spec: Spec, job: AdaptJob, model: Any, tokenizer: Any, loop: LoopSpec) -> Any:
    """The parent family's own pretraining objective, over the task's shards."""
    tokens, cache = job.work_dir / "tokens", job.work_dir / "data"
    if job.architecture == "gpt":
        block = min(spec.pretrain.gpt.block_size, model.config.n_positions)
        return gpt.GPTObjective(
            tokens,
            block,
            loop.seed,
            tokenizer.eos_token_id,
            loop.batch_size,
            cache,
            vocab_size=len(tokenizer),
        )
    if job.architecture == "bert":
        settings = spec.pretrain.bert.model_copy(
            update={
                "loop": loop,
                "max_seq_len": min(
                    spec.pretrain.bert.max_seq_len, model.config.max_position_embeddings
                ),
            }
        )
        vocab = bert_data.BertVocab.from_tokenizer(tokenizer)
        return bert_data.BERTObjective(tokens, settings, vocab, loop.seed, cache_dir=cache)
    settings = spec.pretrain.elmo.model_copy(update={"loop": loop})
    return elmo_data.ELMoObjective(
        tokens,
        settings,
        tokenizer.pad_token_id,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        loop.seed,
        cache,
    )


def valid_loss(model: torch.nn.Module, objective: Any, batches: int) -> float:
    """Mean loss over the objective's held-out batches (eval mode, no gradients)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        losses = [float(objective.loss(model, b)[0]) for b in objective.valid_batches(batches)]
    model.train(was_training)
    return sum(losses) / max(len(losses), 1)


def _save(job: AdaptJob, model: Any) -> None:
    tokenizer_dir = job.parent_dir / TOKENIZER_SUBDIR
    if job.architecture == "gpt":
        gpt.save_gpt(model, tokenizer_dir, job.out_dir)
    elif job.architecture == "bert":
        bert.save_bert(model, tokenizer_dir, job.out_dir)
    else:
        elmo.save_elmo(model, job.out_dir)
        ship_tokenizer(tokenizer_dir, job.out_dir)


def adapt(spec: Spec, job: AdaptJob, log: LogFn, stop_at_step: int | None = None) -> dict:
    """Continue the parent's LM training on the task texts; save to `job.out_dir`; summarise."""
    if job.architecture not in ADAPTABLE:
        raise AdaptationError(
            f"{job.architecture} has no language model to continue; adapt one of "
            f"{', '.join(ADAPTABLE)}"
        )
    shards = job.work_dir / "tokens"
    if not is_complete(shards):
        with atomic_dir(shards) as tmp:
            stats = write_task_shards(
                job.texts,
                job.parent_dir / TOKENIZER_SUBDIR,
                tmp,
                spec.tokenizers.max_sentence_tokens,
            )
            write_manifest(tmp, stats)
    model, tokenizer = load_pretrained(job.architecture, job.parent_dir)
    base = getattr(spec.pretrain, job.architecture).loop
    loop = adapt_loop(base, job.max_steps, job.lr)
    objective = _objective(spec, job, model, tokenizer, loop)
    before = valid_loss(model, objective, loop.eval_batches)
    result = training.train(
        model, objective, loop, job.work_dir / "checkpoints", log, stop_at_step=stop_at_step
    )
    model.to("cpu")
    after = valid_loss(model, objective, loop.eval_batches)
    job.out_dir.mkdir(parents=True, exist_ok=True)
    _save(job, model)
    return {
        "family": job.architecture,
        "steps": result.step,
        "tokens_seen": result.tokens_seen,
        "wall_s": result.wall_s,
        "parent_valid_loss": before,
        "valid_loss": after,
        "valid_loss_drop": before - after,
        "stopped_reason": result.stopped_reason,
        "resumed_from": result.resumed_from,
        "lr": loop.lr,
        **{f"data_{k}": v for k, v in (read_manifest(shards) or {}).items() if k != "format"},
    }


def overfit_warning(summary: dict[str, Any]) -> str | None:
    """What to change when adaptation raised the held-out task-text loss: it memorised the
    task's text (ULMFiT adapts for a few passes over it, not dozens). None when the loss fell."""
    before, after = summary["parent_valid_loss"], summary["valid_loss"]
    if after <= before:
        return None
    passes = summary["tokens_seen"] / max(1, summary.get("data_tokens_train", 0))
    return (
        f"adaptation raised the held-out task-text loss ({before:.3f} -> {after:.3f}) after "
        f"{summary['steps']} steps, ~{passes:.0f} passes over the task's "
        f"{summary.get('data_tokens_train', 0):,.0f} training tokens: it overfit the text; "
        "lower transfer.adapt.max_steps (a few passes) or transfer.adapt.lr"
    )

