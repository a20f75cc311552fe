"""Tiny real Hugging Face checkpoints, written the way a user's would be: a transformers
model and a fast tokenizer, each `save_pretrained` into one directory (no hub access).

Shared by the checkpoint, adaptation and transfer-flow tests.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.pipelines.tiny_lm import lee_documents


def sentences(limit_docs: int = 60) -> list[str]:
    docs = lee_documents(limit_docs)
    return [s for d in docs for s in re.split(r"(?<=[.!?])\s+", d) if s]


def save_bert_checkpoint(directory: Path, seed: int = 1234, vocab_size: int = 300) -> Path:
    """A bare 2-layer `BertModel` (no pretraining heads) + a WordPiece tokenizer."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(
        sentences(), trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials)
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(fast),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        pad_token_id=fast.pad_token_id,
    )
    BertModel(config).save_pretrained(directory)
    fast.save_pretrained(directory)
    return directory


def save_gpt2_checkpoint(directory: Path, seed: int = 1234, vocab_size: int = 400) -> Path:
    """A 2-layer `GPT2LMHeadModel` + a byte-level BPE tokenizer with only <|endoftext|>,
    like GPT-2's own (no pad, no pair delimiter)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        sentences(),
        trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=["<|endoftext|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
    eos = fast.eos_token_id
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(fast),
        n_positions=64,
        n_embd=16,
        n_layer=2,
        n_head=2,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    GPT2LMHeadModel(config).save_pretrained(directory)
    fast.save_pretrained(directory)
    return directory
