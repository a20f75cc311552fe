"""Family encoders, the inputs each paper fed them, and the small task head on top.

Inputs per family (issue 6, item 2):
- BERT: `[CLS] A [SEP] B [SEP]` with segment ids 0/1; a text is read at its [CLS] position
  (the hidden state, not the NSP pooler: the same reading works for every layer).
- GPT: `<|endoftext|> A <|delim|> B <|endoftext|>` (GPT-1); a text is read at its last token.
  Pairs are fed in one order only (GPT-1 summed both orders for similarity tasks).
- ELMo / word2vec: word-level tokens (ELMo wrapped as `<s> ... </s>`, like its training text);
  a text is the mean of its word tokens; a pair is [u; v; |u-v|; u*v] of two encoded texts.
- tagging: each word is read at its FIRST sub-token; word-in-context: the target word is the
  mean of the sub-tokens its character span covers, in each sentence, combined as a pair.

Every input becomes token sequences plus "items": an item (an example, or one word when
tagging) is G groups of token positions to average (G = 1, or 2 for a split pair / WiC).
Averaging is linear and so is the scalar mix, so mixing pooled per-layer features equals
pooling mixed token states: pooled per-layer features are all a frozen encoder must store.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import GPT2LMHeadModel

from pipelines.data.tokenizer_training import TOKENIZER_SUBDIR
from pipelines.models.bert import BertForMaskedPositionsPreTraining, bert_layer_states
from pipelines.models.elmo import ELMo, elmo_layer_states
from pipelines.models.gpt import gpt_layer_states
from pipelines.models.saved import load_pretrained
from pipelines.models.scalar_mix import ScalarMix
from pipelines.models.word2vec_vocab import aligned_vectors, word2vec_layer_states, word_vocab
from pretrainlab.config import PretrainlabError

if TYPE_CHECKING:
    from pipelines.data.task_data import Example

KINDS = ("classify", "pair", "tag", "wic")
Group = tuple[int, tuple[int, ...]]  # (sequence index, token positions to average)


class TransferError(PretrainlabError, ValueError):
    """A transfer request or task input that cannot be used; the message says what to change."""


# ----------------------------------------------------------------------------- encoders


class Encoder(nn.Module, ABC):
    """One family's model seen as `n_layers` per-token representations of width `dim`."""

    family: str
    n_blocks: int  # layers above the embeddings (what `partial:k` counts)

    @abstractmethod
    def layer_states(
        self, ids: torch.Tensor, types: torch.Tensor, mask: torch.Tensor
    ) -> list[torch.Tensor]:
        """n_blocks + 1 tensors (B, T, dim): [embeddings, layer 1, ...]."""

    @abstractmethod
    def block_prefixes(self, k: int) -> tuple[str, ...]:
        """This module's state-dict prefixes of the embeddings and the bottom k layers."""

    def reading_layers(self) -> tuple[int, ...]:
        """Layers a trained (non-frozen) model reads: the top one; ELMo mixes all (the paper)."""
        return (self.n_blocks,)


class GPTEncoder(Encoder):
    family = "gpt"

    def __init__(self, model: GPT2LMHeadModel) -> None:
        super().__init__()
        self.model = model
        self.n_blocks = model.config.n_layer
        self.dim = model.config.n_embd
        self.max_positions = model.config.n_positions

    def layer_states(
        self, ids: torch.Tensor, types: torch.Tensor, mask: torch.Tensor
    ) -> list[torch.Tensor]:
        return gpt_layer_states(self.model, ids, mask)

    def block_prefixes(self, k: int) -> tuple[str, ...]:
        blocks = (f"model.transformer.h.{i}." for i in range(k))
        return ("model.transformer.wte.", "model.transformer.wpe.", *blocks)


class BertEncoder(Encoder):
    family = "bert"

    def __init__(self, model: BertForMaskedPositionsPreTraining) -> None:
        super().__init__()
        self.model = model
        self.n_blocks = model.config.num_hidden_layers
        self.dim = model.config.hidden_size
        self.max_positions = model.config.max_position_embeddings

    def layer_states(
        self, ids: torch.Tensor, types: torch.Tensor, mask: torch.Tensor
    ) -> list[torch.Tensor]:
        return bert_layer_states(self.model, ids, types, mask)

    def block_prefixes(self, k: int) -> tuple[str, ...]:
        return ("model.bert.embeddings.", *(f"model.bert.encoder.layer.{i}." for i in range(k)))


class ELMoEncoder(Encoder):
    family = "elmo"

    def __init__(self, model: ELMo) -> None:
        super().__init__()
        self.model = model
        self.n_blocks = model.config.n_layers
        self.dim = 2 * model.config.embedding_dim
        self.max_positions = 1 << 30  # an LSTM reads any length

    def layer_states(
        self, ids: torch.Tensor, types: torch.Tensor, mask: torch.Tensor
    ) -> list[torch.Tensor]:
        return elmo_layer_states(self.model, ids, mask)

    def block_prefixes(self, k: int) -> tuple[str, ...]:
        layers = [f"model.{d}.layers.{i}." for i in range(k) for d in ("fwd", "bwd")]
        return ("model.embed.", *layers)

    def reading_layers(self) -> tuple[int, ...]:
        return tuple(range(self.n_blocks + 1))


class Word2VecEncoder(Encoder):
    family = "word2vec"
    n_blocks = 0

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table)  # (vocab, vector_size), row i = tokenizer id i
        self.dim = table.shape[1]
        self.max_positions = 1 << 30

    def layer_states(
        self, ids: torch.Tensor, types: torch.Tensor, mask: torch.Tensor
    ) -> list[torch.Tensor]:
        return word2vec_layer_states(self.table, ids, mask)

    def block_prefixes(self, k: int) -> tuple[str, ...]:
        raise TransferError(
            "word2vec has no layers to load partially: use mode frozen, finetune or scratch"
        )


def _fresh(family: str, model: Any) -> Any:
    """The same architecture as `model`, freshly initialised (seed torch first)."""
    if family == "gpt":
        return GPT2LMHeadModel(model.config)
    if family == "bert":
        return BertForMaskedPositionsPreTraining(model.config)
    if family == "elmo":
        return ELMo(model.config)
    table = model  # word2vec: random vectors on the pretrained table's scale, same shape
    scale = table[table.abs().sum(1) > 0].std() if bool((table != 0).any()) else 1.0
    return torch.randn_like(table) * scale


def _wrap(family: str, model: Any) -> Encoder:
    wrappers = {"gpt": GPTEncoder, "bert": BertEncoder, "elmo": ELMoEncoder}
    return wrappers[family](model) if family in wrappers else Word2VecEncoder(model)


def load_encoder(
    family: str, model_dir: Path, scratch: bool = False, load_blocks: int | None = None
) -> tuple[Encoder, Any, tuple[str, ...]]:
    """The encoder, its tokenizer, and the state-dict prefixes that came from `model_dir`.

    scratch: every weight freshly initialised (config from `model_dir`). load_blocks=k: fresh,
    then the embeddings and bottom k layers copied from the pretrained model (`partial:k`).
    Otherwise the pretrained model as saved. Seed torch before calling for a reproducible init.
    """
    model, tokenizer = load_pretrained(family, model_dir)
    if family == "word2vec":
        vocab, _ = word_vocab(Path(model_dir) / TOKENIZER_SUBDIR)
        model = aligned_vectors(model, vocab)
    if not scratch and load_blocks is None:
        return _wrap(family, model), tokenizer, ("",)
    pretrained = _wrap(family, model)
    encoder = _wrap(family, _fresh(family, model))
    if load_blocks is None:
        return encoder, tokenizer, ()
    prefixes = pretrained.block_prefixes(load_blocks)  # word2vec refuses here: no layers
    if not 0 <= load_blocks <= pretrained.n_blocks:
        raise TransferError(
            f"partial:{load_blocks}: the {family} model has {pretrained.n_blocks} layers; "
            f"choose k from 0 to {pretrained.n_blocks}"
        )
    loaded = {k: v for k, v in pretrained.state_dict().items() if k.startswith(prefixes)}
    encoder.load_state_dict(loaded, strict=False)
    return encoder, tokenizer, prefixes


# ----------------------------------------------------------------------------- inputs


@dataclass
class Encoded:
    """Token sequences of a list of examples and the items read from them."""

    sequences: list[tuple[list[int], list[int]]] = field(default_factory=list)  # (ids, segments)
    items: list[tuple[Group, ...]] = field(default_factory=list)
    seq_offsets: list[int] = field(default_factory=lambda: [0])  # example i: [o[i], o[i+1])
    item_offsets: list[int] = field(default_factory=lambda: [0])


@dataclass(frozen=True)
class Inputs:
    """How one family wraps texts: special tokens, pair joining, where a text is read."""

    tokenizer: Any
    max_len: int
    prefix: tuple[int, ...] = ()
    middle: tuple[int, ...] = ()  # between the two texts of a joined pair
    suffix: tuple[int, ...] = ()
    joins_pairs: bool = False  # True: one sequence per pair; False: [u; v; |u-v|; u*v]
    read: str = "mean"  # "first" | "last" | "mean" (of the text's own tokens)
    segments: bool = False  # BERT's token type ids

    def wrap(self, parts: list[list[int]]) -> tuple[list[int], list[int], list[int], list[int]]:
        """ids, segment ids, where each part starts and its kept length; parts are cut
        longest-first to fit max_len."""
        specials = len(self.prefix) + len(self.suffix) + len(self.middle) * (len(parts) - 1)
        budget = max(self.max_len - specials, len(parts))
        parts = [list(p) for p in parts]
        while sum(len(p) for p in parts) > budget:
            longest = max(parts, key=len)
            longest.pop()
        ids, types, starts = list(self.prefix), [0] * len(self.prefix), []
        for i, part in enumerate(parts):
            if i:
                ids += self.middle
                types += [i if self.segments else 0] * len(self.middle)
            starts.append(len(ids))
            ids += part
            types += [i if self.segments else 0] * len(part)
        tail = len(parts) - 1 if self.segments else 0
        lengths = [len(p) for p in parts]
        return ids + list(self.suffix), types + [tail] * len(self.suffix), starts, lengths

    def whole(self, ids: list[int], starts: list[int], lengths: list[int]) -> tuple[int, ...]:
        if self.read == "first":
            return (0,)
        if self.read == "last":
            return (len(ids) - 1,)
        return tuple(range(starts[0], starts[0] + lengths[0]))


def family_inputs(family: str, tokenizer: Any, max_len: int, max_positions: int) -> Inputs:
    max_len = min(max_len, max_positions)
    if family == "bert":
        cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
        return Inputs(tokenizer, max_len, (cls,), (sep,), (sep,), True, "first", True)
    if family == "gpt":
        eos, delim = tokenizer.eos_token_id, tokenizer.sep_token_id
        if delim is None:
            raise TransferError("the GPT tokenizer has no <|delim|> token: retrain it (bpe kind)")
        return Inputs(tokenizer, max_len, (eos,), (delim,), (eos,), True, "last")
    if family == "elmo":
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        return Inputs(tokenizer, max_len, (bos,), (), (eos,))
    return Inputs(tokenizer, max_len)


def _texts(
    inputs: Inputs, texts: list[str], offsets: bool
) -> tuple[list[list[int]], list[list[tuple]]]:
    """Token ids, and character offsets only when asked (word-in-context targets need them)."""
    if not texts:
        return [], []
    enc = inputs.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=offsets)
    return enc["input_ids"], enc["offset_mapping"] if offsets else [[] for _ in texts]


def _target(offsets: list[tuple], span: tuple[int, int], text: str) -> list[int]:
    start, end = span
    if not 0 <= start < end <= len(text):
        raise TransferError(
            f"word-in-context span {span} is outside the sentence {text!r} "
            f"(length {len(text)}); fix the task's target offsets"
        )
    hits = [i for i, (s, e) in enumerate(offsets) if s < end and e > start and e > s]
    if not hits:
        raise TransferError(
            f"word-in-context target {text[start:end]!r} at {span} in {text!r} maps to no token"
        )
    return hits


def encode_examples(inputs: Inputs, kind: str, examples: Sequence[Example]) -> Encoded:
    """Sequences and items for `examples` of a task of `kind` (see the module docstring)."""
    if kind not in KINDS:
        raise TransferError(f"unknown task kind {kind!r}; choose from {', '.join(KINDS)}")
    out = Encoded()
    if kind == "tag":
        _encode_tags(inputs, examples, out)
        return out
    wic = kind == "wic"
    a_ids, a_offsets = _texts(inputs, [ex.text_a for ex in examples], wic)
    b_ids, b_offsets = (
        _texts(inputs, [ex.text_b for ex in examples], wic) if kind != "classify" else ([], [])
    )
    for i, ex in enumerate(examples):
        base = len(out.sequences)
        if kind == "classify" or (kind == "pair" and inputs.joins_pairs):
            parts = [a_ids[i]] + ([b_ids[i]] if kind == "pair" else [])
            ids, types, starts, lengths = inputs.wrap(parts)
            out.sequences.append((ids, types))
            out.items.append(((base, inputs.whole(ids, starts, lengths)),))
        else:
            groups = []
            for n, (tokens, offsets, text, span) in enumerate(
                (
                    (a_ids[i], a_offsets[i], ex.text_a, ex.span_a),
                    (b_ids[i], b_offsets[i], ex.text_b, ex.span_b),
                )
            ):
                ids, types, starts, (kept,) = inputs.wrap([tokens])
                whole = tuple(range(starts[0], starts[0] + kept))  # the text's own tokens
                if wic:
                    hits = [starts[0] + t for t in _target(offsets, span, text) if t < kept]
                    positions = tuple(hits) or whole  # target cut by max_len: the whole text
                else:
                    positions = whole
                out.sequences.append((ids, types))
                groups.append((base + n, positions))
            out.items.append(tuple(groups))
        out.seq_offsets.append(len(out.sequences))
        out.item_offsets.append(len(out.items))
    return out


def _encode_tags(inputs: Inputs, examples: Sequence[Example], out: Encoded) -> None:
    """One item per word, read at its first sub-token; a word cut by max_len reads nothing
    (zero features: it is still scored, never dropped)."""
    if not examples:
        return
    enc = inputs.tokenizer(
        [list(ex.words) for ex in examples], is_split_into_words=True, add_special_tokens=False
    )
    for i, ex in enumerate(examples):
        word_ids = enc.word_ids(i)
        ids, types, starts, (kept,) = inputs.wrap([enc["input_ids"][i]])
        first: dict[int, int] = {}
        for t, w in enumerate(word_ids[:kept]):
            if w is not None and w not in first:
                first[w] = starts[0] + t
        seq = len(out.sequences)
        out.sequences.append((ids, types))
        for w in range(len(ex.words)):
            out.items.append(((seq, (first[w],) if w in first else ()),))
        out.seq_offsets.append(len(out.sequences))
        out.item_offsets.append(len(out.items))


# ----------------------------------------------------------------------------- pooling


def pooled_states(
    encoder: Encoder,
    encoded: Encoded,
    examples: Sequence[int],
    layers: Sequence[int],
    pad_id: int,
) -> torch.Tensor:
    """(items, G, len(layers), D): each item's groups averaged over their token positions."""
    seqs = [s for e in examples for s in range(encoded.seq_offsets[e], encoded.seq_offsets[e + 1])]
    local = {s: n for n, s in enumerate(seqs)}
    length = max(len(encoded.sequences[s][0]) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    types = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    for n, s in enumerate(seqs):
        seq_ids, seq_types = encoded.sequences[s]
        ids[n, : len(seq_ids)] = torch.tensor(seq_ids)
        types[n, : len(seq_ids)] = torch.tensor(seq_types)
        mask[n, : len(seq_ids)] = 1
    items = [
        encoded.items[i]
        for e in examples
        for i in range(encoded.item_offsets[e], encoded.item_offsets[e + 1])
    ]
    groups = len(items[0])
    pool = torch.zeros(len(items) * groups, len(seqs) * length)  # (items*G, S*T)
    for i, item in enumerate(items):
        for g, (s, positions) in enumerate(item):
            for p in positions:
                pool[i * groups + g, local[s] * length + p] = 1.0 / len(positions)
    device = next(encoder.parameters()).device  # batches go where the encoder is (CUDA or CPU)
    states = encoder.layer_states(ids.to(device), types.to(device), mask.to(device))
    pool = pool.to(device)
    pooled = [pool @ states[layer].reshape(-1, states[layer].shape[-1]) for layer in layers]
    return torch.stack(pooled, dim=1).view(len(items), groups, len(layers), -1)


# ----------------------------------------------------------------------------- the head


class TaskHead(nn.Module):
    """Scalar mix over the layers read (when more than one), then one linear layer.

    Input (N, G, L, D); a split pair (G = 2) is combined as [u; v; |u-v|; u*v]. The head is
    linear on purpose: on frozen features it is logistic regression, the probe the papers use.
    """

    def __init__(self, n_layers: int, dim: int, groups: int, n_labels: int) -> None:
        super().__init__()
        self.mix = ScalarMix(n_layers) if n_layers > 1 else None
        self.linear = nn.Linear(dim if groups == 1 else 4 * dim, n_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mix is not None:
            x = self.mix([x[:, :, layer] for layer in range(x.shape[2])])  # (N, G, D)
        else:
            x = x[:, :, 0]
        if x.shape[1] == 2:
            u, v = x[:, 0], x[:, 1]
            x = torch.cat([u, v, (u - v).abs(), u * v], dim=-1)  # (N, 4D)
        else:
            x = x[:, 0]
        return self.linear(x)  # (N, n_labels)
