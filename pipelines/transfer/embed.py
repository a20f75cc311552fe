"""Texts to embeddings with any saved model: what a registered model serves.

A text is wrapped and read exactly as transfer reads it (heads.py): BERT at its [CLS], GPT at its
last token, ELMo and word2vec as the mean of its word tokens (`pooling="family"`), so an
embedding served here is the feature a frozen probe saw. `pooling="mean"` averages the text's own
tokens for every family; `output="tokens"` returns one vector per token of the text (special
tokens left out). `layer` counts from the embeddings (0) to the top (n_layers); negative counts
from the top, so the default -1 is the top layer (word2vec has only layer 0).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pipelines.data.task_data import Example
from pipelines.transfer.heads import (
    Encoded,
    Encoder,
    Inputs,
    TransferError,
    encode_examples,
    family_inputs,
    load_encoder,
    pooled_states,
)

OUTPUTS = ("pooled", "tokens")
POOLINGS = ("family", "mean")
DEFAULTS = {"output": "pooled", "layer": -1, "pooling": "family"}  # what `embed` does unasked
MAX_LEN = 512  # tokens per text before the longest part is cut (and never past the model's own)


def _token_items(inputs: Inputs, texts: Sequence[str]) -> Encoded:
    """One sequence per text and one item per token of the text (its special tokens skipped)."""
    out = Encoded()
    if texts:
        token_ids = inputs.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        for n, tokens in enumerate(token_ids):
            ids, types, starts, (kept,) = inputs.wrap([tokens])
            out.sequences.append((ids, types))
            out.items += [((n, (starts[0] + t,)),) for t in range(kept)]
            out.seq_offsets.append(len(out.sequences))
            out.item_offsets.append(len(out.items))
    return out


@dataclasses.dataclass
class TextEmbedder:
    """A saved model read as a text encoder (loaded once, used for many requests)."""

    family: str
    encoder: Encoder
    inputs: Inputs

    @classmethod
    def load(cls, family: str, model_dir: str | Path) -> TextEmbedder:
        encoder, tokenizer, _ = load_encoder(family, Path(model_dir))
        encoder.eval()
        inputs = family_inputs(family, tokenizer, MAX_LEN, encoder.max_positions)
        return cls(family, encoder, inputs)

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def layer_index(self, layer: int) -> int:
        """`layer` as an index into the encoder's layer states, or a clear error."""
        top = self.encoder.n_blocks
        if not -(top + 1) <= layer <= top:
            raise TransferError(
                f"layer {layer}: the {self.family} model has layers 0 (embeddings) to {top}; "
                f"choose one of them, or -1 for the top"
            )
        return layer % (top + 1)

    def embed(
        self,
        texts: Sequence[str],
        output: str = "pooled",
        layer: int = -1,
        pooling: str = "family",
        batch_size: int = 32,
    ) -> np.ndarray | list[np.ndarray]:
        """pooled: an array (texts, dim); tokens: per text an array (its tokens, dim)."""
        if output not in OUTPUTS:
            raise TransferError(f"output {output!r}: choose from {', '.join(OUTPUTS)}")
        if pooling not in POOLINGS:
            raise TransferError(f"pooling {pooling!r}: choose from {', '.join(POOLINGS)}")
        index = self.layer_index(int(layer))
        texts = [str(t) for t in texts]
        if output == "tokens":
            encoded = _token_items(self.inputs, texts)
        else:
            inputs = self.inputs if pooling == "family" else dataclasses.replace(
                self.inputs, read="mean"
            )
            encoded = encode_examples(inputs, "classify", [Example(text_a=t) for t in texts])
        rows = self._rows(encoded, len(texts), index, batch_size)  # (items, dim)
        if output == "pooled":
            return rows
        offsets = encoded.item_offsets
        return [rows[offsets[n] : offsets[n + 1]] for n in range(len(texts))]

    def _rows(self, encoded: Encoded, n_texts: int, index: int, batch_size: int) -> np.ndarray:
        pad = self.inputs.tokenizer.pad_token_id or 0  # masked out: any id will do
        chunks = [np.zeros((0, self.dim), dtype=np.float32)]
        with torch.no_grad():
            for start in range(0, n_texts, batch_size):
                batch = range(start, min(start + batch_size, n_texts))
                if encoded.item_offsets[batch.stop] == encoded.item_offsets[batch.start]:
                    continue  # texts with no tokens at all (tokens output): nothing to read
                pooled = pooled_states(self.encoder, encoded, batch, [index], pad)
                chunks.append(pooled[:, 0, 0].float().cpu().numpy())
        return np.concatenate(chunks)

