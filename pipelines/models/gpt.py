"""GPT: a causal (left-to-right) transformer language model on packed BPE blocks.

The model is `transformers.GPT2LMHeadModel` built from a `GPT2Config` (no hub access), so a
saved model loads anywhere with `from_pretrained`. Training data: the train split's documents
joined with <|endoftext|> and cut into blocks of `block_size` tokens (GPT-2's packing; see
`pipelines/data/lm_data.py`); the loss is next-token cross-entropy at every position.

References: Radford et al. 2018/2019 (GPT, GPT-2); karpathy/nanoGPT (model.py, the FLOPs count).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from pipelines.data.batches import micro_examples
from pipelines.data.lm_data import PackedBlocks, open_split, packed_stream, valid_blocks
from pipelines.data.tokenizer_training import TOKENIZER_SUBDIR, load_tokenizer, ship_tokenizer
from pretrainlab.config import GPTSpec, PretrainlabError


class GPTError(PretrainlabError, ValueError):
    """A GPT spec or saved model that cannot be used; the message says what to change."""


def gpt_config(spec: GPTSpec, vocab_size: int, pad_id: int, eos_id: int) -> GPT2Config:
    if spec.n_embd % spec.n_head:
        raise GPTError(
            f"pretrain.gpt.n_embd {spec.n_embd} is not divisible by n_head {spec.n_head}; "
            "pick n_embd = n_head x head size"
        )
    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=spec.block_size,  # the position table is exactly one training block
        n_embd=spec.n_embd,
        n_layer=spec.n_layer,
        n_head=spec.n_head,
        resid_pdrop=spec.dropout,
        embd_pdrop=spec.dropout,
        attn_pdrop=spec.dropout,
        bos_token_id=eos_id,  # GPT2Config defaults both to 50256: ours live in our vocabulary
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )


def build_gpt(spec: GPTSpec, vocab_size: int, pad_id: int, eos_id: int) -> GPT2LMHeadModel:
    """A freshly initialised GPT-2, the same for the same spec.loop.seed (global RNG untouched)."""
    for name, token_id in (("pad_id", pad_id), ("eos_id", eos_id)):
        if not 0 <= token_id < vocab_size:
            raise GPTError(f"{name} {token_id} is outside the vocabulary (size {vocab_size})")
    config = gpt_config(spec, vocab_size, pad_id, eos_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.loop.seed)
        return GPT2LMHeadModel(config)


def causal_lm_loss(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy: position t predicts token t + 1."""
    logits = model(input_ids=input_ids, use_cache=False).logits  # (B, T, V)
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(),  # (B*(T-1), V)
        input_ids[:, 1:].flatten(),  # (B*(T-1),)
    )


class GPTObjective:
    """Packed train blocks as a pure function of (seed, step, example); fixed valid blocks."""

    def __init__(
        self,
        tokens_dir: str | Path,
        block_size: int,
        seed: int,
        eos_id: int,
        batch_size: int,
        cache_dir: str | Path,
        vocab_size: int | None = None,
        valid_batch_size: int | None = None,
    ):
        self.block_size = block_size
        self.batch_size = batch_size
        self.valid_batch_size = valid_batch_size or batch_size
        train = open_split(tokens_dir, "train", cache_dir)
        valid = open_split(tokens_dir, "valid", cache_dir)
        if vocab_size is not None:
            train.check_vocab(vocab_size, "the GPT model")
            valid.check_vocab(vocab_size, "the GPT model")
        self.train_blocks = PackedBlocks(packed_stream(train, eos_id), block_size, seed)
        self.valid_stream = packed_stream(valid, eos_id)

    def train_batch(
        self, step: int, micro: int, n_micro: int, rank: int, world: int
    ) -> dict[str, torch.Tensor]:
        first = (step - 1) * self.batch_size  # examples are counted over the whole run
        examples = micro_examples(self.batch_size, micro, n_micro, rank, world)
        blocks = self.train_blocks.batch(first + i for i in examples)
        return {"input_ids": torch.from_numpy(blocks)}  # (B, T)

    def valid_batches(self, n: int) -> Iterator[dict[str, torch.Tensor]]:
        size = self.valid_batch_size
        blocks = torch.from_numpy(valid_blocks(self.valid_stream, self.block_size, n * size))
        for start in range(0, len(blocks), size):
            yield {"input_ids": blocks[start : start + size]}

    def loss(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        return causal_lm_loss(model, batch["input_ids"]), {}

    def tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["input_ids"].numel()

    def flops_per_token(self, model: torch.nn.Module) -> float:
        return gpt_flops_per_token(model, self.block_size)


def gpt_flops_per_token(model: GPT2LMHeadModel, seq_len: int) -> float:
    """6N for the weights (forward + backward) + 12 L d T for attention (PaLM appendix B).

    N excludes the position table (a lookup, no multiply); the tied token embedding counts
    once, as the output projection.
    """
    config = model.config
    n_params = sum(p.numel() for p in model.parameters()) - model.transformer.wpe.weight.numel()
    return 6.0 * n_params + 12.0 * config.n_layer * config.n_embd * seq_len


def check_length(model: GPT2LMHeadModel, length: int) -> None:
    """Sequences longer than the position table have no position embedding: say so clearly."""
    if length > model.config.n_positions:
        raise GPTError(
            f"sequence of {length} tokens is longer than this GPT's position table "
            f"({model.config.n_positions} = pretrain.gpt.block_size): truncate inputs to "
            f"{model.config.n_positions} tokens or pretrain with a larger block_size"
        )


def gpt_layer_states(
    model: GPT2LMHeadModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> list[torch.Tensor]:
    """Per-layer token representations, each (B, T, n_embd): [embeddings, block 1, ..., block L].

    The last entry is after the final LayerNorm (what the LM head reads), as transformers
    reports it.
    """
    check_length(model, input_ids.shape[-1])
    out = model.transformer(  # no KV cache: nothing generates here (it cost ~3% of a forward)
        input_ids=input_ids,
        attention_mask=attention_mask,
        output_hidden_states=True,
        use_cache=False,
    )
    return list(out.hidden_states)


def save_gpt(model: GPT2LMHeadModel, tokenizer_dir: str | Path, out_dir: str | Path) -> Path:
    """Weights as safetensors (`save_pretrained`) + the tokenizer directory under tokenizer/."""
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    ship_tokenizer(tokenizer_dir, out_dir)
    return out_dir


def load_gpt(directory: str | Path) -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast]:
    """A saved GPT and its tokenizer, ready to use (eval mode); never unpickles code."""
    directory = Path(directory)
    if not (directory / "config.json").is_file() or not (directory / TOKENIZER_SUBDIR).is_dir():
        raise GPTError(
            f"{directory}: not a saved GPT (needs config.json, model.safetensors and "
            f"{TOKENIZER_SUBDIR}/); point at a directory written by save_gpt"
        )
    try:
        model = GPT2LMHeadModel.from_pretrained(directory, use_safetensors=True)
    except (OSError, ValueError) as error:
        raise GPTError(f"{directory}: cannot load the GPT weights ({error})") from None
    tokenizer = load_tokenizer(directory / TOKENIZER_SUBDIR)
    if len(tokenizer) != model.config.vocab_size:
        raise GPTError(
            f"{directory}: tokenizer has {len(tokenizer)} tokens but the model's vocabulary is "
            f"{model.config.vocab_size}; the directory mixes two models, re-save it with save_gpt"
        )
    model.eval()
    return model, tokenizer
