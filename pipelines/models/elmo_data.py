"""ELMo's training data: packed `<s> ... </s>` blocks for the shared training loop.

Peters et al. 2018, "Deep contextualized word representations" (and the bilm-tf code).

`ELMoObjective` cuts packed blocks of `seq_len` tokens from the stream of train sentences,
each wrapped as `<s> ... </s>`. Packing wastes nothing on padding, a block is a pure function
of its index (exact resume, DDP = single process), and it is the closest match to the paper's
training, which ran over a continuous stream of sentences rather than one padded sentence at a
time. The `<s>`/`</s>` markers are kept so that a sentence encoded downstream as
`<s> ... </s>` looks like training text. The model it trains is in `elmo.py`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipelines.data.batches import Batch, micro_examples
from pipelines.data.lm_data import PackedBlocks, TokenSplit, open_split, valid_blocks
from pipelines.models.elmo import unwrap
from pretrainlab.config import ELMoSpec
from storage.atomic import atomic_path

PACK_SENTENCES = 1 << 20  # sentences wrapped at a time when building the stream


def sentence_stream(split: TokenSplit, bos_id: int, eos_id: int) -> np.ndarray:
    """Every sentence of the split wrapped as `<s> w1 ... wn </s>`, back to back.

    Cached next to the split's arrays as packed-sent<bos>-<eos>.npy and memory-mapped.
    """
    path = split.directory / f"packed-sent{bos_id}-{eos_id}.npy"
    if not path.exists():
        with atomic_path(path) as tmp:
            n = split.n_tokens + 2 * split.n_sentences
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.int32, shape=(n,))
            for s0 in range(0, split.n_sentences, PACK_SENTENCES):
                s1 = min(s0 + PACK_SENTENCES, split.n_sentences)
                offsets = np.asarray(split.offsets[s0 : s1 + 1])
                rank = np.arange(s0, s1)  # sentence i moves right by the 2i markers before it
                out[offsets[:-1] + 2 * rank] = bos_id
                out[offsets[1:] + 2 * rank + 1] = eos_id
                owner = np.repeat(rank, np.diff(offsets))  # sentence of each token
                tokens = np.asarray(split.ids[offsets[0] : offsets[-1]])
                out[np.arange(offsets[0], offsets[-1]) + 2 * owner + 1] = tokens
            out.flush()
            del out
    return np.load(path, mmap_mode="r")


class ELMoObjective:
    """Packed `<s> ... </s>` blocks of `seq_len` tokens for the shared training loop.

    Example g of the run (g = (step - 1) * batch_size + index in the global batch) is block g
    of lm_data's seeded epoch order: a batch is a pure function of (seed, step, example), the
    same in one process or N, and a resumed run fetches step s directly.
    """

    def __init__(
        self,
        tokens_dir: str | Path,
        spec: ELMoSpec,
        pad_id: int,
        bos_id: int,
        eos_id: int,
        seed: int,
        cache_dir: str | Path,
    ) -> None:
        self.spec = spec
        self.pad_id = pad_id
        self.train_split = open_split(tokens_dir, "train", cache_dir)
        self.valid_split = open_split(tokens_dir, "valid", cache_dir)
        self.blocks = PackedBlocks(
            sentence_stream(self.train_split, bos_id, eos_id), spec.seq_len, seed
        )
        self.valid_stream = sentence_stream(self.valid_split, bos_id, eos_id)
        self.specials = {"pad": pad_id, "bos": bos_id, "eos": eos_id}
        self._checked_vocab: int | None = None

    def train_batch(self, step: int, micro: int, n_micro: int, rank: int, world: int) -> Batch:
        size = self.spec.loop.batch_size
        examples = micro_examples(size, micro, n_micro, rank, world)
        first = (step - 1) * size
        return {"ids": torch.from_numpy(self.blocks.batch(first + i for i in examples))}

    def valid_batches(self, n: int) -> Iterator[Batch]:
        size = self.spec.loop.batch_size // self.spec.loop.grad_accum  # one micro-batch
        blocks = valid_blocks(self.valid_stream, self.spec.seq_len, n * size)
        for start in range(0, len(blocks), size):
            yield {"ids": torch.from_numpy(blocks[start : start + size])}

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        self._check_vocab(model)
        out = model(batch["ids"], batch.get("mask"))
        fwd, bwd = float(out["fwd_nll"].detach()), float(out["bwd_nll"].detach())
        metrics = {
            "fwd_loss": fwd,
            "bwd_loss": bwd,
            "fwd_ppl": math.exp(min(fwd, 50.0)),
            "bwd_ppl": math.exp(min(bwd, 50.0)),
        }
        return out["loss"], metrics

    def tokens(self, batch: Batch) -> int:
        return int(batch["ids"].numel())

    def flops_per_token(self, model: nn.Module) -> float:
        return unwrap(model).flops_per_token()

    def unigram_entropy(self) -> float:
        """Valid cross-entropy (nats/token) of a unigram model fit on the train stream.

        Counted over the exact streams the LM predicts (with the `<s>`/`</s>` markers), add-one
        smoothed: the bar the LM's valid loss must clear to have learned beyond frequencies.
        """
        size = max(self.train_split.max_id, self.valid_split.max_id, *self.specials.values()) + 1
        train = _bincount(self.blocks.stream, size)
        valid = _bincount(self.valid_stream, size)
        log_p = np.log(train + 1.0) - math.log(train.sum() + size)
        return float(-(valid * log_p).sum() / max(valid.sum(), 1))

    def _check_vocab(self, model: nn.Module) -> None:
        vocab_size = unwrap(model).config.vocab_size
        if self._checked_vocab != vocab_size:
            for split in (self.train_split, self.valid_split):
                split.check_vocab(vocab_size, "the ELMo model")
            self._checked_vocab = vocab_size


def _bincount(stream: np.ndarray, size: int, chunk: int = 1 << 24) -> np.ndarray:
    """Token counts of a memory-mapped stream, a chunk at a time (bounded memory)."""
    counts = np.zeros(size, dtype=np.int64)
    for start in range(0, len(stream), chunk):
        counts += np.bincount(np.asarray(stream[start : start + chunk]), minlength=size)
    return counts
