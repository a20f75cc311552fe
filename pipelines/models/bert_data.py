"""BERT's training data: next-sentence pairs from token shards, masked for MLM + NSP.

Reference: Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers for
Language Understanding", section 3.1 and appendix A; Google's create_pretraining_data.py.

Read top to bottom:
1. NSP pairs `[CLS] A [SEP] B [SEP]` from token shards: B is the real continuation of A in
   the same document (label 0, IsNext, the transformers convention) or a random stretch of
   another document (label 1, NotNext);
2. `BERTObjective`, the training loop's `Objective`: loss = MLM + NSP, per-example seeding so
   one process and N DDP ranks build the same global batch.

The model it trains is in `bert.py`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedTokenizerFast

from pipelines.data.batches import micro_examples
from pipelines.data.lm_data import TokenSplit, open_split
from pipelines.models.bert import BertError, check_vocab
from pipelines.models.masking import IGNORE_INDEX, mask_tokens
from pretrainlab.config import BERTSpec

TRAIN_STREAM, VALID_STREAM = 0, 1  # keep train and valid example seeds apart
IS_NEXT, NOT_NEXT = 0, 1  # BertForPreTraining's next_sentence_label convention


@dataclass(frozen=True)
class BertVocab:
    """The vocabulary facts BERT needs: its size and the ids of its special tokens."""

    size: int
    pad_id: int
    unk_id: int
    cls_id: int
    sep_id: int
    mask_id: int

    @classmethod
    def from_tokenizer(cls, tokenizer: PreTrainedTokenizerFast) -> BertVocab:
        ids = {
            name: getattr(tokenizer, f"{name}_token_id")
            for name in ("pad", "unk", "cls", "sep", "mask")
        }
        missing = [f"[{name.upper()}]" for name, value in ids.items() if value is None]
        if missing:
            raise BertError(
                f"the tokenizer has no {', '.join(missing)} token: BERT needs a WordPiece "
                "tokenizer with [PAD] [UNK] [CLS] [SEP] [MASK] (tokenizers.bert in the spec)"
            )
        return cls(size=len(tokenizer), **{f"{k}_id": v for k, v in ids.items()})

    @property
    def special_ids(self) -> tuple[int, ...]:
        return (self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id)


# ------------------------------------------------------------------------------------ 1. NSP pairs


@dataclass(frozen=True)
class Pair:
    """One NSP example before masking, with where its segments came from."""

    a: np.ndarray  # segment A ids, truncated at its front
    b: np.ndarray  # segment B ids, truncated at its back
    label: int  # IS_NEXT (0) or NOT_NEXT (1)
    a_sentences: tuple[int, int]  # [first, end) sentence indices in the split
    b_sentences: tuple[int, int]


class PairSampler:
    """Draws NSP pairs from one split, as BERT's create_pretraining_data.py does:

    a chunk of consecutive sentences is read from a random position of a document until it
    fills the token budget (max_seq_len - 3); a random split point makes A = the sentences
    before it. With probability `next_sentence_prob` B = the sentences after it (IsNext),
    otherwise B = a run starting at a random sentence of another document (NotNext); both fill
    the rest of the budget, so B's length does not give the label away. A long pair is cut at
    its outer ends (A loses its start, B its end): the seam between A and B, which NSP is
    about, stays intact.
    """

    def __init__(self, split: TokenSplit, max_seq_len: int, next_sentence_prob: float):
        self.split = split
        self.budget = max_seq_len - 3  # [CLS] A [SEP] B [SEP]
        self.next_sentence_prob = next_sentence_prob
        self.offsets = np.asarray(split.offsets)  # sentence -> token offsets
        self.doc_starts = np.asarray(split.doc_starts)  # document -> first sentence
        # A chunk starts at any sentence with a successor in its document: count them per doc.
        self._starts_cum = np.cumsum(np.maximum(np.diff(self.doc_starts) - 1, 0))
        transitions = int(self._starts_cum[-1]) if split.n_docs else 0
        if split.n_docs < 2 or transitions == 0:
            raise BertError(
                f"NSP needs at least 2 documents and one with 2 or more sentences; this split "
                f"has {split.n_docs} document(s) and {transitions} sentence-to-sentence "
                "transitions. Add text, keep documents whole (corpus doc_per: paragraph or "
                "file) or raise corpus.valid_fraction"
            )

    def sample(self, rng: np.random.Generator) -> Pair:
        first, doc = self._random_start(rng)
        end = self._fill(first, doc, self.budget, min_sentences=2)  # A + a true B
        cut = int(rng.integers(first + 1, end))  # A = sentences first .. cut - 1
        if rng.random() < self.next_sentence_prob:
            label, b_first, b_end = IS_NEXT, cut, end
        else:
            label = NOT_NEXT
            b_first = self._random_sentence_outside(doc, rng)
            b_doc = self.split.doc_of(b_first)
            b_end = self._fill(b_first, b_doc, self.budget - self._length(first, cut))
        a, b = self._truncate(self._tokens(first, cut), self._tokens(b_first, b_end))
        return Pair(a, b, label, (first, cut), (b_first, b_end))

    def _length(self, first: int, end: int) -> int:
        return int(self.offsets[end] - self.offsets[first])

    def _tokens(self, first: int, end: int) -> np.ndarray:
        """The ids of sentences first .. end - 1, back to back."""
        return np.asarray(self.split.ids[self.offsets[first] : self.offsets[end]])

    def _random_start(self, rng: np.random.Generator) -> tuple[int, int]:
        """Uniformly, a sentence with a successor in its document; and that document."""
        k = int(rng.integers(self._starts_cum[-1]))
        doc = int(np.searchsorted(self._starts_cum, k, side="right"))
        before = int(self._starts_cum[doc - 1]) if doc else 0
        return int(self.doc_starts[doc]) + k - before, doc

    def _random_sentence_outside(self, doc: int, rng: np.random.Generator) -> int:
        """Uniformly, a sentence of any document but `doc`."""
        lo, hi = int(self.doc_starts[doc]), int(self.doc_starts[doc + 1])
        k = int(rng.integers(self.split.n_sentences - (hi - lo)))
        return k if k < lo else k + (hi - lo)

    def _fill(self, first: int, doc: int, budget: int, min_sentences: int = 1) -> int:
        """End of the run of sentences of `doc` from `first` that fills `budget` tokens."""
        doc_end = int(self.doc_starts[doc + 1])
        end = first + min_sentences
        while end < doc_end and self._length(first, end) < budget:
            end += 1
        return end

    def _truncate(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Trim the longer segment one token at a time until the pair fits the budget."""
        la, lb = len(a), len(b)
        while la + lb > self.budget:
            if la > lb:
                la -= 1
            else:
                lb -= 1
        return a[len(a) - la :], b[:lb]


def encode_pair(pair: Pair, vocab: BertVocab, max_seq_len: int) -> dict[str, np.ndarray]:
    """`[CLS] A [SEP] B [SEP] [PAD]...` with segment ids 0 for `[CLS] A [SEP]`, 1 for `B [SEP]`."""
    la, lb = len(pair.a), len(pair.b)
    used = la + lb + 3
    input_ids = np.full(max_seq_len, vocab.pad_id, dtype=np.int64)
    input_ids[0] = vocab.cls_id
    input_ids[1 : la + 1] = pair.a
    input_ids[la + 1] = vocab.sep_id
    input_ids[la + 2 : used - 1] = pair.b
    input_ids[used - 1] = vocab.sep_id
    token_type_ids = np.zeros(max_seq_len, dtype=np.int64)
    token_type_ids[la + 2 : used] = 1
    attention_mask = np.zeros(max_seq_len, dtype=np.int64)
    attention_mask[:used] = 1
    special = np.zeros(max_seq_len, dtype=bool)
    special[[0, la + 1, used - 1]] = True
    special[used:] = True
    return {
        "input_ids": input_ids,
        "token_type_ids": token_type_ids,
        "attention_mask": attention_mask,
        "special_mask": special,
    }


# -------------------------------------------------------------------------------- 2. the objective


def max_predictions(spec: BERTSpec, seq_len: int | None = None) -> int:
    """The most tokens one sequence of `seq_len` (default max_seq_len) can have masked:
    mlm_probability of its non-special tokens, rounded up (masking rounds stochastically,
    never above the ceiling)."""
    return math.ceil(spec.mlm_probability * ((seq_len or spec.max_seq_len) - 3))


def short_steps(spec: BERTSpec) -> int:
    """Steps 1..this train on `short_seq_len` pairs (0 without a length schedule)."""
    if spec.short_seq_len is None:
        return 0
    return round(spec.short_seq_share * spec.loop.max_steps)


class BERTObjective:
    """MLM + NSP for the shared training loop (pipelines/training/loop.py's `Objective`).

    Example i of step t is a pure function of (seed, t, i): its pair and its masking are drawn
    from generators seeded by those keys, so any split of the global batch over micro-batches
    and DDP ranks gives the same examples. Under a length schedule (`short_seq_len`) the first
    `short_steps` steps draw shorter pairs; valid pairs are always `max_seq_len` long.
    """

    def __init__(
        self,
        tokens_dir: str | Path,
        spec: BERTSpec,
        vocab: BertVocab,
        seed: int,
        cache_dir: str | Path,
    ):
        self.tokens_dir = Path(tokens_dir)
        self.cache_dir = Path(cache_dir)  # lm_data's memory-mapped copy of the shards
        self.spec = spec
        self.vocab = vocab
        self.seed = seed
        self.n_predictions = max_predictions(spec)
        self._samplers: dict[tuple[str, int], PairSampler] = {}
        self._valid: list[dict[str, torch.Tensor]] = []
        self._sampler("train")  # fail now, not at step 1, on shards that cannot serve NSP

    def _sampler(self, split: str, seq_len: int | None = None) -> PairSampler:
        key = (split, seq_len or self.spec.max_seq_len)
        if key not in self._samplers:
            tokens = open_split(self.tokens_dir, split, self.cache_dir)
            tokens.check_vocab(self.vocab.size, "the BERT tokenizer")
            try:
                sampler = PairSampler(tokens, key[1], self.spec.next_sentence_prob)
            except BertError as error:
                raise BertError(f"{self.tokens_dir} ({split} split): {error}") from None
            self._samplers[key] = sampler
        return self._samplers[key]

    def seq_len_at(self, step: int) -> int:
        """Pair length of training step `step` (1-based): short_seq_len, then max_seq_len."""
        if step <= short_steps(self.spec) and self.spec.short_seq_len is not None:
            return self.spec.short_seq_len
        return self.spec.max_seq_len

    def _replacement(self, split: str) -> tuple[float, float]:
        """Chosen tokens -> ([MASK], random) shares. Train: the spec's mix. Valid: every chosen
        token is [MASK]ed, so the valid MLM loss is prediction from context alone: with 10% left
        unchanged, copying them would pass for learning against the unigram entropy, and two
        masking mixes would be scored on different tasks."""
        if split == "valid":
            return 1.0, 0.0
        return self.spec.mask_replace_prob, self.spec.random_replace_prob

    def example(self, split: str, *keys: int, seq_len: int | None = None) -> dict[str, np.ndarray]:
        """One masked NSP example of `seq_len` (default max_seq_len) tokens, every draw from
        one generator seeded by (seed, *keys)."""
        seq_len = seq_len or self.spec.max_seq_len
        rng = np.random.default_rng([self.seed, *keys])
        pair = self._sampler(split, seq_len).sample(rng)
        encoded = encode_pair(pair, self.vocab, seq_len)
        masked, labels = mask_tokens(
            encoded["input_ids"],
            encoded["special_mask"],
            self.vocab.size,
            self.vocab.mask_id,
            rng,
            self.spec.mlm_probability,
            *self._replacement(split),
            special_ids=self.vocab.special_ids,
        )
        positions = np.flatnonzero(labels != IGNORE_INDEX)
        slots = max_predictions(self.spec, seq_len)
        mlm_positions = np.zeros(slots, dtype=np.int64)  # spare slots: [CLS] ...
        mlm_labels = np.full(slots, IGNORE_INDEX, dtype=np.int64)  # ... unlabelled
        mlm_positions[: len(positions)] = positions
        mlm_labels[: len(positions)] = labels[positions]
        return {
            "input_ids": masked,
            "token_type_ids": encoded["token_type_ids"],
            "attention_mask": encoded["attention_mask"],
            "mlm_positions": mlm_positions,
            "mlm_labels": mlm_labels,
            "next_sentence_label": np.int64(pair.label),
        }

    def train_batch(
        self, step: int, micro: int, n_micro: int, rank: int, world: int
    ) -> dict[str, torch.Tensor]:
        indices = micro_examples(self.spec.loop.batch_size, micro, n_micro, rank, world)
        seq_len = self.seq_len_at(step)
        return _stack(
            [self.example("train", TRAIN_STREAM, step, i, seq_len=seq_len) for i in indices]
        )

    def valid_batches(self, n: int) -> Iterable[dict[str, torch.Tensor]]:
        size = self.spec.loop.batch_size // self.spec.loop.grad_accum  # one micro-batch's memory
        while len(self._valid) < n:
            b = len(self._valid)
            examples = [self.example("valid", VALID_STREAM, b, i) for i in range(size)]
            self._valid.append(_stack(examples))
        return self._valid[:n]

    def loss(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        check_vocab(model.config.vocab_size, self.vocab.size, "the BERT objective")
        out = model(**batch)
        n_pairs = batch["next_sentence_label"].numel()
        stats = torch.stack(
            [
                out.mlm_loss.detach(),
                out.nsp_loss.detach(),
                out.mlm_correct / out.mlm_count.clamp(min=1),
                out.nsp_correct / n_pairs,
            ]
        ).tolist()  # one device sync for all four
        names = ("mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc")
        return out.loss, dict(zip(names, stats, strict=True))

    def tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["attention_mask"].sum())

    def flops_per_token(self, model: torch.nn.Module) -> float:
        """6 x encoder parameters + attention (12 x layers x width x length), plus the MLM
        head where it runs: at n_predictions of max_seq_len positions, not at every token."""
        config = model.config
        d, n_layer, seq = config.hidden_size, config.num_hidden_layers, self.spec.max_seq_len
        encoder = sum(p.numel() for p in model.bert.encoder.parameters())
        head = d * d + config.vocab_size * d  # transform + decoder
        nsp = d * d + 2 * d  # pooler + classifier, once per sequence
        return float(
            6 * encoder
            + 12 * n_layer * d * seq
            + 6 * head * self.n_predictions / seq
            + 6 * nsp / seq
        )


def _stack(examples: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    return {key: torch.from_numpy(np.stack([e[key] for e in examples])) for key in examples[0]}


def full_mlm_labels(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, T) labels as `BertForPreTraining(labels=...)` takes them, from the masked slots."""
    labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)
    slot = batch["mlm_labels"] != IGNORE_INDEX
    rows = torch.arange(len(labels)).unsqueeze(1).expand_as(slot)
    labels[rows[slot], batch["mlm_positions"][slot]] = batch["mlm_labels"][slot]
    return labels
