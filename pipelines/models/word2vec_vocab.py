"""word2vec's words are the word-level tokenizer's tokens: ids in, ids out.

word2vec (Mikolov et al. 2013) trains on words, the rest of the lab works in token ids. This
module maps between the two, top to bottom:

1. Sentences streamed from the word-level token shards (`ShardSentences`): ids are mapped back
   to the tokenizer's own token strings, so word2vec and ELMo share one vocabulary; special
   tokens and `<unk>` are dropped (a word the tokenizer did not keep is rare, and gensim drops
   rare words before windowing too). `min_count` is the tokenizer's: one knob, not two.
2. Per-token representations for transfer (`aligned_vectors`, `word2vec_layer_states`): one
   static layer, the vector of each token id (zeros for tokens word2vec has no vector for).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from gensim.models import KeyedVectors

from pipelines.data.encoding import token_parts
from pipelines.data.tokenizer_training import load_raw_tokenizer
from pretrainlab.config import PretrainlabError

READ_ROWS = 16_384  # Parquet rows per read while streaming sentences
# Words `ReplayedSentences` keeps in memory: references to the vocabulary's strings, ~10 bytes a
# word with the lists around them (~200 MB at the cap); a bigger corpus streams every pass.
REPLAY_WORDS = 20_000_000


class Word2VecError(PretrainlabError, ValueError):
    """Input word2vec cannot use (bad shards, foreign checkpoint, unsaveable vocabulary)."""


# ----------------------------------------------------------------------------- sentences


def word_vocab(tokenizer_dir: str | Path) -> tuple[list[str], frozenset[int]]:
    """The word-level tokenizer's tokens by id, and the ids of its special tokens."""
    tok, meta = load_raw_tokenizer(tokenizer_dir)
    if meta["kind"] != "wordlevel":
        raise Word2VecError(
            f"{tokenizer_dir}: a {meta['kind']} tokenizer; word2vec uses the word-level one"
        )
    by_id = {i: token for token, i in tok.get_vocab(with_added_tokens=True).items()}
    vocab = [by_id[i] for i in range(len(by_id))]
    return vocab, frozenset(int(i) for i in meta["special_ids"].values())


class ShardSentences:
    """The split's sentences as lists of token strings, re-read from the shards on every pass.

    Restartable (gensim iterates once for the vocabulary, then once per epoch) and bounded in
    memory: a pass holds one record batch at a time.
    """

    def __init__(
        self,
        tokens_dir: str | Path,
        vocab: list[str],
        drop_ids: Iterable[int] = (),
        split: str = "train",
    ) -> None:
        self.files = token_parts(tokens_dir)
        self.split = split
        self.words = np.asarray(vocab, dtype=object)
        self.keep = np.ones(len(vocab), dtype=bool)
        self.keep[list(drop_ids)] = False

    def __iter__(self) -> Iterator[list[str]]:
        for path in self.files:
            reader = pq.ParquetFile(path)
            for batch in reader.iter_batches(batch_size=READ_ROWS, columns=["ids", "split"]):
                batch = batch.filter(pc.equal(batch.column("split"), self.split))
                yield from self._sentences(batch.column("ids"), path)

    def _sentences(self, column: pa.Array, path: Path) -> Iterator[list[str]]:
        flat = column.flatten().to_numpy(zero_copy_only=False)
        if len(flat) and int(flat.max()) >= len(self.words):
            raise Word2VecError(
                f"{path}: token id {int(flat.max())} is outside the tokenizer's vocabulary of "
                f"{len(self.words)}: these shards were encoded with another tokenizer"
            )
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        owner = np.repeat(np.arange(len(lengths)), lengths)  # sentence of each token
        kept = self.keep[flat]
        words = self.words[flat[kept]].tolist()
        ends = np.cumsum(np.bincount(owner[kept], minlength=len(lengths))).tolist()
        start = 0
        for end in ends:
            if end > start:
                yield words[start:end]
            start = end


class ReplayedSentences:
    """`source`'s sentences, read once and replayed from memory on every later pass.

    gensim passes over the corpus once for the vocabulary and once per epoch; re-reading and
    re-decoding the shards each time takes CPU from the training threads on gensim's producer
    thread (the stage ran at 0.87-0.93x bare gensim on a list). Only up to `max_words`: past
    that the kept
    sentences are dropped and every pass streams from `source` (bounded memory, as before).
    The sentences and their order are the same either way.
    """

    def __init__(self, source: Iterable[list[str]], max_words: int = REPLAY_WORDS) -> None:
        self.source, self.max_words = source, max_words
        self.kept: list[list[str]] | None = None
        self.too_big = False

    def __iter__(self) -> Iterator[list[str]]:
        if self.kept is not None:
            yield from self.kept
            return
        if self.too_big:
            yield from self.source
            return
        kept: list[list[str]] | None = []
        words = 0
        for sentence in self.source:
            if kept is not None:
                words += len(sentence)
                if words > self.max_words:
                    kept, self.too_big = None, True
                else:
                    kept.append(sentence)
            yield sentence
        self.kept = kept  # a whole pass, under the cap: replay it from now on


# ----------------------------------------------------------------------------- representations


def aligned_vectors(kv: KeyedVectors, vocab: list[str]) -> torch.Tensor:
    """(len(vocab), vector_size): row i is the vector of tokenizer id i, zeros when word2vec
    has none (special tokens, `<unk>`, words under min_count). Ready for nn.Embedding."""
    table = torch.zeros(len(vocab), kv.vector_size)
    rows = [(i, kv.key_to_index[w]) for i, w in enumerate(vocab) if w in kv.key_to_index]
    if rows:
        ids, index = zip(*rows, strict=True)
        table[list(ids)] = torch.from_numpy(np.asarray(kv.vectors[list(index)], dtype=np.float32))
    return table


def word2vec_layer_states(
    table: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None = None
) -> list[torch.Tensor]:
    """One layer: the static vector of every token, (B, T, vector_size); zeros at padding."""
    states = torch.nn.functional.embedding(ids, table.to(ids.device))
    if mask is not None:
        states = states * mask.unsqueeze(-1).to(states.dtype)
    return [states]
