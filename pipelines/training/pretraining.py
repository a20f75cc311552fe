"""One interface over the four families: pretrain from token shards, save, load.

Each family keeps its own modules (word2vec*.py, elmo*.py, gpt.py, bert*.py); this file only
wires them to the spec and says, for every language model, whether it learned anything beyond
word frequencies: its valid loss next to the unigram entropy of the same tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pipelines.data.lm_data as lm_data
import pipelines.models.bert as bert
import pipelines.models.bert_data as bert_data
import pipelines.models.elmo as elmo
import pipelines.models.elmo_data as elmo_data
import pipelines.models.gpt as gpt
import pipelines.models.masking as masking
import pipelines.models.word2vec as word2vec
import pipelines.models.word2vec_eval as word2vec_eval
import pipelines.models.word2vec_vocab as word2vec_vocab
import pipelines.training.loop as training
import pipelines.training.points as points_lib
import pipelines.training.precision as precision
import pipelines.training.schedule as schedule
from pipelines.data.tokenizer_training import load_tokenizer, ship_tokenizer
from pretrainlab.config import FAMILY_NAMES, PretrainlabError, Spec, per_family

# The code that computes each family's weights: editing any of it invalidates cached models.
CODE: dict[str, list[ModuleType]] = per_family(
    {
        "word2vec": [word2vec, word2vec_vocab, word2vec_eval, schedule, points_lib],
        "elmo": [elmo, elmo_data, training, schedule, points_lib, precision, lm_data],
        "gpt": [gpt, training, schedule, points_lib, precision, lm_data],
        "bert": [bert, bert_data, masking, training, schedule, points_lib, precision, lm_data],
    },
    "pretraining.CODE",
)
LogFn = Callable[[dict[str, float], int], None]


class PretrainError(PretrainlabError, ValueError):
    """A pretraining request that cannot run as given."""


@dataclass(frozen=True)
class PretrainJob:
    family: str
    tokens_dir: Path
    tokenizer_dir: Path
    work_dir: Path  # checkpoints and memory-mapped data: survives a kill
    out_dir: Path  # the final model: weights + tokenizer/
    budget_tokens: int | None = None
    budget_minutes: float | None = None
    points: tuple[float, ...] = ()  # pretrain.points: shares of the steps (word2vec: epochs)
    points_dir: Path | None = None  # where their snapshots go (points.write_point)


SaveFn = Callable[[Any, Path], None]  # (model, directory) -> the family's saved model there


def _plan(job: PretrainJob, total: int, save: SaveFn) -> points_lib.PointPlan | None:
    """The snapshots `job` keeps at its points of `total` steps, each saved by `save`."""
    steps = schedule.point_steps(list(job.points), total)
    if not steps or job.points_dir is None:
        return None
    points_dir = job.points_dir

    def keep(model: Any, info: points_lib.PointInfo) -> None:
        points_lib.write_point(points_dir, info, lambda tmp: save(model, tmp))

    return points_lib.PointPlan(steps, keep)


def _lm_summary(result: training.TrainResult, entropy: float, n_params: int) -> dict[str, Any]:
    valid = result.last_valid_loss
    gap = entropy - valid if valid is not None else float("nan")
    return {
        "steps": result.step,
        "tokens_seen": result.tokens_seen,
        "wall_s": result.wall_s,
        "flops": result.flops,
        "valid_loss": valid,
        "best_valid_loss": result.best_valid_loss,
        "unigram_entropy": entropy,
        "entropy_gap": gap,
        "n_params": n_params,
        "stopped_reason": result.stopped_reason,
        "resumed_from": result.resumed_from,
        "headline_metric": "valid_loss",
        "headline_value": valid,
    }


def _n_params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


# Families `compute.cpu_autocast: auto` turns bf16 on for: their loss parity with fp32 is tested
# and bf16 pays on a bf16 CPU. ELMo's LSTMs with projections have no oneDNN bf16 kernel and ran
# ~0.6x fp32's tokens/s (measured), so ELMo only autocasts on `on`.
CPU_AUTOCAST_AUTO = ("gpt", "bert")


def cpu_autocast(spec: Spec, family: str) -> bool:
    """Whether `family` pretrains in bf16 autocast on the CPU here (`compute.cpu_autocast`);
    word2vec (gensim) and training on CUDA (always bf16) never do."""
    setting = spec.compute.cpu_autocast
    if family == "word2vec" or (setting == "auto" and family not in CPU_AUTOCAST_AUTO):
        return False
    device = training.pick_device(getattr(spec.pretrain, family).loop)
    return precision.cpu_autocast_active(setting, device)


def _train(
    model: Any,
    objective: Any,
    spec: Spec,
    job: PretrainJob,
    log: LogFn,
    stop_at_step: int | None,
    save: SaveFn,
) -> training.TrainResult:
    return training.train(
        model,
        objective,
        getattr(spec.pretrain, job.family).loop,
        job.work_dir / "checkpoints",
        log,
        budget_tokens=job.budget_tokens,
        budget_minutes=job.budget_minutes,
        stop_at_step=stop_at_step,
        points=_plan(job, getattr(spec.pretrain, job.family).loop.max_steps, save),
        cpu_autocast=cpu_autocast(spec, job.family),
    )


def _gpt(spec: Spec, job: PretrainJob, log: LogFn, stop_at_step: int | None) -> dict[str, Any]:
    tok = load_tokenizer(job.tokenizer_dir)
    loop = spec.pretrain.gpt.loop
    model = gpt.build_gpt(spec.pretrain.gpt, len(tok), tok.pad_token_id, tok.eos_token_id)
    objective = gpt.GPTObjective(
        job.tokens_dir,
        spec.pretrain.gpt.block_size,
        loop.seed,
        tok.eos_token_id,
        loop.batch_size,
        cache_dir=job.work_dir / "data",
        vocab_size=len(tok),
    )

    def save(m: Any, out: Path) -> None:
        gpt.save_gpt(m, job.tokenizer_dir, out)

    result = _train(model, objective, spec, job, log, stop_at_step, save)
    save(model, job.out_dir)
    entropy = lm_data.unigram_entropy(job.tokens_dir, "valid", len(tok), tok.eos_token_id)
    return _lm_summary(result, entropy, _n_params(model))


def _bert(spec: Spec, job: PretrainJob, log: LogFn, stop_at_step: int | None) -> dict[str, Any]:
    vocab = bert_data.BertVocab.from_tokenizer(load_tokenizer(job.tokenizer_dir))
    loop = spec.pretrain.bert.loop
    model = bert.build_bert(spec.pretrain.bert, vocab.size, vocab.pad_id)
    if spec.pretrain.bert.output_bias == "unigram":  # a resumed run's checkpoint overrides it
        bert.init_output_bias(model, lm_data.unigram_log_probs(job.tokens_dir, vocab.size))
    objective = bert_data.BERTObjective(
        job.tokens_dir, spec.pretrain.bert, vocab, loop.seed, cache_dir=job.work_dir / "data"
    )
    latest: dict[str, float] = {}

    def remember(metrics: dict[str, float], step: int) -> None:
        latest.update(metrics)
        log(metrics, step)

    def save(m: Any, out: Path) -> None:
        bert.save_bert(m, job.tokenizer_dir, out)

    result = _train(model, objective, spec, job, remember, stop_at_step, save)
    save(model, job.out_dir)
    summary = _lm_summary(
        result, lm_data.unigram_entropy(job.tokens_dir, "valid", vocab.size), _n_params(model)
    )
    # valid_loss adds NSP; MLM alone predicts single tokens, like the unigram model.
    mlm = latest.get("valid_mlm_loss")
    if mlm is not None:
        summary |= {
            "valid_mlm_loss": mlm,
            "entropy_gap": summary["unigram_entropy"] - mlm,
            "valid_mlm_acc": latest.get("valid_mlm_acc"),
            "valid_nsp_acc": latest.get("valid_nsp_acc"),
        }
    return summary


def _elmo(spec: Spec, job: PretrainJob, log: LogFn, stop_at_step: int | None) -> dict[str, Any]:
    tok = load_tokenizer(job.tokenizer_dir)
    loop = spec.pretrain.elmo.loop
    specials = {"pad": tok.pad_token_id, "bos": tok.bos_token_id, "eos": tok.eos_token_id}
    model = elmo.build_elmo(spec.pretrain.elmo, len(tok), tok.pad_token_id, specials)
    objective = elmo_data.ELMoObjective(
        job.tokens_dir,
        spec.pretrain.elmo,
        tok.pad_token_id,
        tok.bos_token_id,
        tok.eos_token_id,
        loop.seed,
        cache_dir=job.work_dir / "data",
    )

    def save(m: Any, out: Path) -> None:
        elmo.save_elmo(m, out)
        ship_tokenizer(job.tokenizer_dir, out)

    result = _train(model, objective, spec, job, log, stop_at_step, save)
    save(model, job.out_dir)
    # The loss is the mean of the two directions' NLL: per token, like the unigram entropy.
    summary = _lm_summary(result, objective.unigram_entropy(), _n_params(model))
    return summary


def _word2vec_flops(spec: Spec, trained_words: int) -> float:
    section = spec.pretrain.word2vec
    return 6 * section.vector_size * (section.negative + 1) * 2 * section.window * trained_words


def _word2vec_points(spec: Spec, job: PretrainJob) -> Callable[[Any, Any], None] | None:
    """Keep word2vec's points after their epochs: its rate decays linearly over all epochs,
    so a point is a mid-schedule snapshot (no cooldown: the report says so)."""
    points_dir = job.points_dir
    if not job.points or points_dir is None:
        return None

    def on_epoch(vectors: Any, result: Any) -> None:
        label = schedule.point_steps(list(job.points), result.epochs_planned).get(
            result.epochs_done
        )
        if label is None:
            return
        info = points_lib.PointInfo(
            label, result.epochs_done, result.raw_words,
            _word2vec_flops(spec, result.trained_words), 0, "word2vec-linear",
        )  # fmt: skip

        def save(out: Path) -> None:
            word2vec.save_vectors(vectors, out, meta={"point": label})
            ship_tokenizer(job.tokenizer_dir, out)

        points_lib.write_point(points_dir, info, save)

    return on_epoch


def _word2vec(spec: Spec, job: PretrainJob, log: LogFn, stop_at_step: int | None) -> dict[str, Any]:
    vectors, result = word2vec.train_word2vec_on_shards(
        job.tokens_dir,
        job.tokenizer_dir,
        spec.pretrain.word2vec,
        min_count=spec.tokenizers.word.min_count,
        checkpoint_dir=job.work_dir / "checkpoints",
        log=log,
        budget_words=job.budget_tokens,
        budget_minutes=job.budget_minutes,
        stop_after_epoch=stop_at_step,
        on_epoch=_word2vec_points(spec, job),
    )
    scores = word2vec_eval.intrinsic_eval(vectors)
    last_loss = result.loss_per_word[-1] if result.loss_per_word else None
    headline, value = word2vec_eval.headline(scores, result.valid_loss_per_word, last_loss)
    word2vec.save_vectors(vectors, job.out_dir, meta={"scores": scores})
    ship_tokenizer(job.tokenizer_dir, job.out_dir)
    return {
        "epochs": result.epochs_done,
        "tokens_seen": result.raw_words,
        "wall_s": result.wall_s,
        "flops": _word2vec_flops(spec, result.trained_words),
        "words_per_s": result.words_per_s,
        "vocab_size": result.vocab_size,
        "final_epoch_loss_per_word": last_loss,
        "valid_loss_per_word": result.valid_loss_per_word,
        "stopped_reason": result.stopped_reason,
        "resumed_from": result.resumed_from,
        "n_params": len(vectors) * vectors.vector_size * 2,
        "headline_metric": headline,
        "headline_value": value,
        **scores,
    }


RUNNERS = per_family(
    {"word2vec": _word2vec, "elmo": _elmo, "gpt": _gpt, "bert": _bert}, "pretraining.RUNNERS"
)


def pretrain(spec: Spec, job: PretrainJob, log: LogFn, stop_at_step: int | None = None) -> dict:
    """Train `job.family` (resuming from its checkpoint), save it to `job.out_dir`, summarise.

    `learned_little` flags a language model whose valid loss is within
    `spec.pretrain.unigram_gap_nats` of the unigram entropy: it learned word frequencies, not
    language, and the report must not compare it as if it had.
    """
    if job.family not in RUNNERS:
        raise PretrainError(f"unknown family {job.family!r}; choose from {', '.join(FAMILY_NAMES)}")
    job.out_dir.mkdir(parents=True, exist_ok=True)
    summary = {"family": job.family, **RUNNERS[job.family](spec, job, log, stop_at_step)}
    gap = summary.get("entropy_gap")
    summary["learned_little"] = (
        gap is not None
        and gap == gap
        and (gap < spec.pretrain.unigram_gap_nats * (2 if job.family == "elmo" else 1))
    )
    return summary
