"""BERT: a bidirectional transformer pretrained with masked LM + next-sentence prediction.

Reference: Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers for
Language Understanding", section 3.1 and appendix A.

Read top to bottom:
1. the model: `transformers.BertForPreTraining` built from a `BertConfig` (no hub), with a
   forward that applies the MLM head only at the masked positions: the same loss as the full
   head, ~3x cheaper on CPU because the vocabulary projection dominates (STACK.md);
2. per-layer representations for transfer; save / load with the tokenizer.

The training data (NSP pairs, masking, the loop's `BERTObjective`) is in `bert_data.py`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from transformers import BertConfig, BertForPreTraining, PreTrainedTokenizerFast
from transformers.utils import ModelOutput

from pipelines.data.tokenizer_training import TOKENIZER_SUBDIR, load_tokenizer, ship_tokenizer
from pipelines.models.masking import IGNORE_INDEX
from pretrainlab.config import BERTSpec, PretrainlabError


class BertError(PretrainlabError, ValueError):
    """A BERT model, tokenizer or corpus that cannot be used; the message says what to change."""


# ------------------------------------------------------------------------------------ 1. the model


@dataclass
class MaskedPretrainingOutput(ModelOutput):
    """Losses and counts of one batch; the logits cover only the masked slots."""

    loss: torch.Tensor | None = None  # mlm_loss + nsp_loss
    mlm_loss: torch.Tensor | None = None  # mean over the masked tokens of the batch
    nsp_loss: torch.Tensor | None = None  # mean over the pairs
    mlm_correct: torch.Tensor | None = None
    mlm_count: torch.Tensor | None = None
    nsp_correct: torch.Tensor | None = None
    mlm_logits: torch.Tensor | None = None  # (B, P, V)
    nsp_logits: torch.Tensor | None = None  # (B, 2)


class BertForMaskedPositionsPreTraining(BertForPreTraining):
    """`BertForPreTraining` whose loss computes vocabulary logits only where a token is masked.

    Called with `mlm_positions` (B, P) and `mlm_labels` (B, P): gathers those P slots per
    sequence from the encoder output, applies the MLM head to them and the NSP head to the
    pooled [CLS]; unused slots carry label -100. P is fixed (the most a sequence can have
    masked), so shapes are static for torch.compile and nothing syncs with the GPU. Called any
    other way it is the plain `BertForPreTraining`, and the weights are exactly its weights.
    """

    def forward(  # type: ignore[override]
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        mlm_positions: torch.Tensor | None = None,
        mlm_labels: torch.Tensor | None = None,
        next_sentence_label: torch.Tensor | None = None,
        **kwargs,
    ):
        if input_ids is not None:
            check_fits_positions(input_ids.shape[-1], self.config)
        if mlm_positions is None or mlm_labels is None or next_sentence_label is None:
            return super().forward(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
                next_sentence_label=next_sentence_label,
                **kwargs,
            )
        encoded = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        sequence, pooled = encoded.last_hidden_state, encoded.pooler_output  # (B, T, H), (B, H)
        index = mlm_positions.unsqueeze(-1).expand(-1, -1, sequence.size(-1))  # (B, P, H)
        mlm_logits = self.cls.predictions(sequence.gather(1, index))  # (B, P, V)
        nsp_logits = self.cls.seq_relationship(pooled)  # (B, 2)

        labelled = mlm_labels != IGNORE_INDEX  # (B, P)
        mlm_count = labelled.sum()
        token_losses = F.cross_entropy(
            mlm_logits.flatten(0, 1).float(),
            mlm_labels.flatten(),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        mlm_loss = token_losses / mlm_count.clamp(min=1)  # = the mean; 0, not NaN, if none
        nsp_loss = F.cross_entropy(nsp_logits.float(), next_sentence_label)
        return MaskedPretrainingOutput(
            loss=mlm_loss + nsp_loss,
            mlm_loss=mlm_loss,
            nsp_loss=nsp_loss,
            mlm_correct=((mlm_logits.argmax(-1) == mlm_labels) & labelled).sum(),
            mlm_count=mlm_count,
            nsp_correct=(nsp_logits.argmax(-1) == next_sentence_label).sum(),
            mlm_logits=mlm_logits,
            nsp_logits=nsp_logits,
        )


def build_bert(spec: BERTSpec, vocab_size: int, pad_id: int) -> BertForMaskedPositionsPreTraining:
    """A freshly initialised BERT for `spec`, seeded by `spec.loop.seed` (the global RNG is
    left as it was, so building a model never shifts anyone else's random stream)."""
    if spec.hidden_size % spec.n_head:
        raise BertError(
            f"bert.hidden_size {spec.hidden_size} is not divisible by bert.n_head "
            f"{spec.n_head}; choose a head count that divides it"
        )
    if not 0 <= pad_id < vocab_size:
        raise BertError(f"pad id {pad_id} is outside the vocabulary of {vocab_size} tokens")
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.n_layer,
        num_attention_heads=spec.n_head,
        intermediate_size=spec.intermediate_size,
        hidden_dropout_prob=spec.dropout,
        attention_probs_dropout_prob=spec.dropout,
        max_position_embeddings=spec.max_seq_len,
        type_vocab_size=2,  # segment A and segment B
        pad_token_id=pad_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.loop.seed)
        return BertForMaskedPositionsPreTraining(config)


def init_output_bias(model: BertForPreTraining, log_probs: np.ndarray) -> None:
    """Start the MLM head at the unigram model: its output bias = `log_probs` (vocab_size,).

    Why: from transformers' zero bias, AdamW moves each bias entry by about lr a step, so the
    ~10 nats between rare and frequent tokens would take thousands of steps; the tied word
    embeddings learn the frequencies first instead (measured: after 600 showcase steps one
    direction held 79% of the embedding matrix, 0.86 correlated with log frequency), and the
    same vectors are the encoder's input. Starting at the frequencies leaves them to context.
    """
    bias = model.cls.predictions.bias
    if log_probs.shape != bias.shape:
        raise BertError(
            f"unigram log probabilities of shape {tuple(log_probs.shape)} do not fit the MLM "
            f"output bias {tuple(bias.shape)}; compute them with the model's tokenizer"
        )
    with torch.no_grad():
        bias.copy_(torch.as_tensor(log_probs, dtype=bias.dtype))


def check_fits_positions(seq_len: int, config: BertConfig) -> None:
    if seq_len > config.max_position_embeddings:
        raise BertError(
            f"an input of {seq_len} tokens is longer than the model's position table "
            f"(max_position_embeddings={config.max_position_embeddings}); lower "
            f"bert.max_seq_len (or truncate inputs) to <= {config.max_position_embeddings}, "
            "or pretrain a model with a larger bert.max_seq_len"
        )


def check_vocab(model_vocab: int, tokenizer_vocab: int, what: str) -> None:
    if model_vocab != tokenizer_vocab:
        raise BertError(
            f"vocabulary mismatch in {what}: the model has {model_vocab} token embeddings but the "
            f"tokenizer has {tokenizer_vocab} tokens; build the model with "
            f"vocab_size={tokenizer_vocab} from this tokenizer (or use the tokenizer the model "
            "was trained with)"
        )


# --------------------------------------------------------------------------- 2. transfer & storage


def bert_layer_states(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    token_type_ids: torch.Tensor,
    attention_mask: torch.Tensor,
) -> list[torch.Tensor]:
    """Per-layer token representations, each (B, T, H): [0] = embeddings (token + position +
    segment), [k] = the output of transformer layer k. Accepts the pretraining model or a
    bare `BertModel`."""
    encoder = model.bert if isinstance(model, BertForPreTraining) else model
    check_fits_positions(input_ids.shape[-1], encoder.config)
    out = encoder(
        input_ids,
        attention_mask=attention_mask,
        token_type_ids=token_type_ids,
        output_hidden_states=True,
    )
    return list(out.hidden_states)


def save_bert(model: BertForPreTraining, tokenizer_dir: str | Path, out_dir: str | Path) -> Path:
    """`save_pretrained` (config.json + model.safetensors) plus a copy of the tokenizer in
    `<out_dir>/tokenizer`. Write into a temporary directory (storage.atomic.atomic_dir): this
    function does not make the whole output atomic on its own."""
    out_dir, tokenizer_dir = Path(out_dir), Path(tokenizer_dir)
    tokenizer = load_tokenizer(tokenizer_dir)  # verified: a corrupt tokenizer is never shipped
    check_vocab(model.config.vocab_size, len(tokenizer), f"saving to {out_dir}")
    model.save_pretrained(out_dir)
    ship_tokenizer(tokenizer_dir, out_dir)
    return out_dir


def load_bert(
    directory: str | Path,
) -> tuple[BertForMaskedPositionsPreTraining, PreTrainedTokenizerFast]:
    """A saved BERT (eval mode) and the tokenizer it was trained with, checked to fit."""
    directory = Path(directory)
    config_path = directory / "config.json"
    try:
        model_type = json.loads(config_path.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError) as error:
        raise BertError(
            f"{config_path}: cannot read it ({error}); {directory} is not a saved BERT model "
            "(save one with save_bert, or point at the model's directory)"
        ) from None
    if model_type != "bert":
        raise BertError(
            f"{config_path}: model_type is {model_type!r}, not 'bert'; point at a BERT model"
        )
    try:
        model = BertForMaskedPositionsPreTraining.from_pretrained(directory)
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise BertError(
            f"{directory}: cannot load the BERT weights ({first}); the directory is incomplete "
            "or corrupt: delete it and re-run pretraining"
        ) from None
    tokenizer = load_tokenizer(directory / TOKENIZER_SUBDIR)
    check_vocab(model.config.vocab_size, len(tokenizer), str(directory))
    return model, tokenizer
