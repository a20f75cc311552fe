"""ELMo: a bidirectional LSTM language model whose layers are the word representations.

Peters et al. 2018, "Deep contextualized word representations" (and the bilm-tf code), built
as the paper describes, top to bottom:

1. Static input embeddings: one context-free vector per token, shared by both directions.
   The paper builds it with a character CNN (n-gram filters + highway layers + projection) so
   any spelling gets a vector. We use a word embedding table over the word-level tokenizer's
   vocabulary instead: it plays the same role (a context-free vector per token), costs far less
   on a CPU, and lets word2vec and ELMo share one tokenizer, so their comparison differs only in
   the model. The price: every out-of-vocabulary word is `<unk>`.
2. A forward LSTM LM and a backward LSTM LM, 2 layers each, with SEPARATE parameters. Each
   layer is an LSTMP (`nn.LSTM(proj_size=embedding_dim)`): a `hidden_dim` cell whose output is
   projected down to the embedding size, with a residual connection from layer 1 to layer 2.
   As in the paper the recurrence runs through the projection (LSTMP), not a Linear after a
   plain LSTM. Cost: on CPU PyTorch runs projected LSTMs without oneDNN, measured 1.3-1.6x slower
   per layer than a plain LSTM of the same cell size (1 thread, 16x32 tokens, 128/256);
   cuDNN supports projections natively.
3. One softmax shared by both directions predicts the next token (forward LM) and the previous
   token (backward LM). Loss = mean of the two NLLs (see `ELMo.forward`).
4. Per token three representations (`elmo_layer_states`), each of width 2 * embedding_dim:
   layer 0 = [e; e] (the embedding duplicated to match the biLSTM width), layer 1 =
   [fwd1; bwd1], layer 2 = [fwd2; bwd2]. Downstream mixes them with `pipelines.models.scalar_mix`.

Softmax choice (`ELMoSpec.softmax`): "adaptive" (default) is `nn.AdaptiveLogSoftmaxWithLoss`
(Grave et al. 2017). The full softmax costs embedding_dim x vocab multiply-adds per token and
direction; the adaptive one costs the head (frequent words + one slot per tail cluster) for
every token, and a cluster's reduced-width projection only for the tokens that fall in it. With
Zipfian word frequencies most tokens stop in the head: measured at vocabulary 30k, width 128,
cut-offs 2000/10000, Zipf targets (27% in the tail), forward + backward took 114 ms vs 924 ms
for the full softmax (1 thread, 1024 tokens), ~8x cheaper. It still gives exact normalised
log-probabilities over the whole vocabulary (unlike the paper's sampled softmax, which only
approximates the loss). It needs ids sorted by frequency, which the word-level tokenizer gives.
Cut-offs at or beyond the vocabulary are dropped; if none remain the softmax is the full one.

The training data (packed `<s> ... </s>` blocks, `ELMoObjective`) is in `elmo_data.py`.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pretrainlab.config import ELMoSpec, PretrainlabError
from storage.atomic import atomic_path, write_json

CONFIG_FILE = "elmo_config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "pretrainlab-elmo"
FORMAT_VERSION = 1


class ELMoError(PretrainlabError, ValueError):
    """A model, input or directory ELMo cannot use; the message says what to change."""


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class ELMoConfig:
    vocab_size: int
    embedding_dim: int = 128
    hidden_dim: int = 256
    n_layers: int = 2
    dropout: float = 0.1
    softmax: Literal["adaptive", "full"] = "adaptive"
    cutoffs: tuple[int, ...] = (2000, 10000)
    div_value: float = 4.0  # each tail cluster's projection is div_value times narrower
    pad_id: int = 0
    special_ids: dict[str, int] = field(default_factory=dict)  # e.g. bos/eos, for downstream

    def __post_init__(self) -> None:
        if self.hidden_dim <= self.embedding_dim:
            raise ELMoError(
                f"hidden_dim {self.hidden_dim} must be larger than embedding_dim "
                f"{self.embedding_dim}: each LSTM cell is projected down to the embedding size "
                "(the paper: 4096 -> 512); raise elmo.hidden_dim"
            )
        narrowest = self.embedding_dim // self.div_value ** len(self.cutoffs)
        if self.softmax == "adaptive" and narrowest < 1:
            raise ELMoError(
                f"adaptive softmax: embedding_dim {self.embedding_dim} / div_value "
                f"{self.div_value} ** {len(self.cutoffs)} clusters leaves a 0-wide tail "
                "projection; lower div_value, use fewer cut-offs or a wider embedding"
            )
        if not 0 <= self.pad_id < self.vocab_size:
            raise ELMoError(f"pad_id {self.pad_id} is outside the vocabulary of {self.vocab_size}")


def config_from_spec(
    spec: ELMoSpec, vocab_size: int, pad_id: int, special_ids: dict[str, int] | None = None
) -> ELMoConfig:
    """The model config for a spec and a tokenizer; cut-offs are clipped to the vocabulary."""
    cutoffs = tuple(sorted({c for c in spec.adaptive_cutoffs if 0 < c < vocab_size}))
    softmax = spec.softmax if cutoffs else "full"
    div_value = 4.0
    # keep the narrowest tail projection at least 1 wide on tiny embeddings
    while div_value > 1.0 and spec.embedding_dim // div_value ** len(cutoffs) < 1:
        div_value /= 2
    return ELMoConfig(
        vocab_size=vocab_size,
        embedding_dim=spec.embedding_dim,
        hidden_dim=spec.hidden_dim,
        dropout=spec.dropout,
        softmax=softmax,
        cutoffs=cutoffs,
        div_value=div_value,
        pad_id=pad_id,
        special_ids=dict(special_ids or {}),
    )


# ----------------------------------------------------------------------------- the model


class LSTMStack(nn.Module):
    """One direction's LM: LSTMP layers (cell hidden_dim, output embedding_dim), residual
    connections from layer 2 up. Reads its input left to right; the backward LM is fed the
    reversed sentence."""

    def __init__(self, config: ELMoConfig) -> None:
        super().__init__()
        size, cell = config.embedding_dim, config.hidden_dim
        self.layers = nn.ModuleList(
            nn.LSTM(size, cell, proj_size=size, batch_first=True) for _ in range(config.n_layers)
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        h = x  # (B, T, E)
        for i, lstm in enumerate(self.layers):
            out, _ = lstm(self.dropout(h))  # (B, T, E)
            if i > 0:
                out = out + h  # residual from the layer below
            outputs.append(out)
            h = out
        return outputs


class ELMo(nn.Module):
    def __init__(self, config: ELMoConfig) -> None:
        super().__init__()
        self.config = config
        size = config.embedding_dim
        self.embed = nn.Embedding(config.vocab_size, size, padding_idx=config.pad_id)
        nn.init.normal_(self.embed.weight, std=0.1)  # on the scale of LSTM outputs (|h| < 1)
        with torch.no_grad():
            self.embed.weight[config.pad_id].zero_()
        self.fwd = LSTMStack(config)
        self.bwd = LSTMStack(config)
        self.dropout = nn.Dropout(config.dropout)
        self.softmax: nn.Module
        if config.softmax == "adaptive":
            self.softmax = nn.AdaptiveLogSoftmaxWithLoss(
                size, config.vocab_size, list(config.cutoffs), div_value=config.div_value
            )
        else:
            self.softmax = nn.Linear(size, config.vocab_size)

    # ---- encoding

    def directional_states(
        self, ids: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Embeddings (B, T, E) and each direction's layer outputs, all aligned to positions.

        fwd[l][:, t] has read tokens 0..t; bwd[l][:, t] has read tokens t..end of the sentence.
        `mask` (B, T) marks real tokens, padding on the right.
        """
        self._check_ids(ids, mask)
        emb = self.embed(ids)  # (B, T, E)
        fwd = self.fwd(emb)
        order = _reverse_order(ids, mask)  # each sentence reversed within its own length
        bwd = [_gather_time(h, order) for h in self.bwd(_gather_time(emb, order))]
        return emb, fwd, bwd

    def layer_states(
        self, ids: torch.Tensor, mask: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """n_layers + 1 tensors (B, T, 2E): [e; e], then [fwd_l; bwd_l]; zero at padding."""
        emb, fwd, bwd = self.directional_states(ids, mask)
        layers = [torch.cat([emb, emb], dim=-1)]
        layers += [torch.cat([f, b], dim=-1) for f, b in zip(fwd, bwd, strict=True)]
        if mask is not None:
            keep = mask.unsqueeze(-1).to(layers[0].dtype)
            layers = [layer * keep for layer in layers]
        return layers

    # ---- language-model loss

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, Any]:
        """Both LM losses for a batch (B, T) of token ids.

        The forward LM's state at t predicts token t+1, the backward LM's state at t predicts
        token t-1. `loss` is the MEAN of the two NLLs (nats per predicted token), not their sum
        as written in the paper: the same optimum and, under Adam, the same updates (Adam is
        invariant to a constant loss scale), but on the per-token scale that the loop's
        valid_ppl and the unigram-entropy comparison assume.
        """
        if ids.shape[1] < 2:
            raise ELMoError(
                f"need at least 2 tokens per sequence to predict, got {tuple(ids.shape)}"
            )
        _, fwd, bwd = self.directional_states(ids, mask)
        valid = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
        pair = valid[:, 1:] & valid[:, :-1]  # both the state's token and the target are real
        fwd_nll = self._nll(self.dropout(fwd[-1][:, :-1]), ids[:, 1:], pair)
        bwd_nll = self._nll(self.dropout(bwd[-1][:, 1:]), ids[:, :-1], pair)
        return {"loss": (fwd_nll + bwd_nll) / 2, "fwd_nll": fwd_nll, "bwd_nll": bwd_nll}

    def _nll(
        self, hidden: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        h, y = hidden[valid], targets[valid]  # (N, E), (N,)
        with _full_precision(h):
            if isinstance(self.softmax, nn.AdaptiveLogSoftmaxWithLoss):
                return self.softmax(h.float(), y).loss
            return F.cross_entropy(self.softmax(h.float()), y)

    def log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """Normalised log-probabilities over the whole vocabulary: (N, E) -> (N, V)."""
        with _full_precision(hidden):
            if isinstance(self.softmax, nn.AdaptiveLogSoftmaxWithLoss):
                return self.softmax.log_prob(hidden.float())
            return F.log_softmax(self.softmax(hidden.float()), dim=-1)

    # ---- facts about the model

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6 x (all LSTM weights + the softmax rows used, per direction).

        Adaptive softmax: only the head is counted (every token pays it; the tail clusters are
        paid by rare tokens only), so this slightly underestimates for tail-heavy text.
        """
        lstm = sum(p.numel() for p in [*self.fwd.parameters(), *self.bwd.parameters()])
        if isinstance(self.softmax, nn.AdaptiveLogSoftmaxWithLoss):
            softmax = self.softmax.head.weight.numel()
        else:
            softmax = sum(p.numel() for p in self.softmax.parameters())
        return 6.0 * (lstm + 2 * softmax)

    def _check_ids(self, ids: torch.Tensor, mask: torch.Tensor | None) -> None:
        if ids.dim() != 2:
            raise ELMoError(f"ids must be (batch, time), got shape {tuple(ids.shape)}")
        if mask is not None:
            if mask.shape != ids.shape:
                raise ELMoError(f"mask shape {tuple(mask.shape)} != ids shape {tuple(ids.shape)}")
            m = mask.bool()
            if bool((m[:, 1:] & ~m[:, :-1]).any()):
                raise ELMoError("mask must be right-padded (1...1 0...0 per row): pad at the end")


def build_elmo(
    spec: ELMoSpec, vocab_size: int, pad_id: int, special_ids: dict[str, int] | None = None
) -> ELMo:
    """A freshly initialised ELMo, the same for the same spec.loop.seed (global RNG untouched).

    torch seeds its default generator differently in every process, so an ELMo built without
    a seed gets new weights in every run: pretraining must build it here, as GPT and BERT do.
    """
    config = config_from_spec(spec, vocab_size, pad_id, special_ids)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.loop.seed)
        return ELMo(config)


def _full_precision(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """The softmax runs in float32 even under bf16 autocast: the adaptive softmax writes
    float32 log-probs into a tensor of its input's dtype, and a bf16 loss is too coarse to log."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def _reverse_order(ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Index (B, T) that reverses each row's real tokens and leaves its padding at the end.

    Reversing within the length (not the whole padded row) makes the backward LM start at a
    sentence's last real token; applying the same index twice restores the original order.
    """
    batch, time = ids.shape
    positions = torch.arange(time, device=ids.device).expand(batch, time)
    if mask is None:
        return positions.flip(1)
    lengths = mask.long().sum(dim=1, keepdim=True)  # (B, 1)
    return torch.where(positions < lengths, lengths - 1 - positions, positions)


def _gather_time(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """x[b, order[b, t]] for every b, t: (B, T, D) reordered along time."""
    return x.gather(1, order.unsqueeze(-1).expand_as(x))


def unwrap(model: nn.Module) -> ELMo:
    """The ELMo inside a DDP or torch.compile wrapper (or the model itself)."""
    inner = model.module if isinstance(model, DistributedDataParallel) else model
    inner = getattr(inner, "_orig_mod", inner)  # torch.compile's OptimizedModule
    if not isinstance(inner, ELMo):
        raise ELMoError(f"expected an ELMo model, got {type(inner).__name__}")
    return inner


def elmo_layer_states(
    model: nn.Module, ids: torch.Tensor, mask: torch.Tensor | None = None
) -> list[torch.Tensor]:
    """The three per-token representations, each (B, T, 2 * embedding_dim).

    Runs in the model's current mode: call `model.eval()` first for frozen features.
    """
    return unwrap(model).layer_states(ids, mask)


# ----------------------------------------------------------------------------- save & load


def save_elmo(model: nn.Module, directory: str | Path) -> Path:
    """Weights as safetensors + the config as JSON; loading them runs no pickle."""
    elmo = unwrap(model)
    directory = Path(directory)
    tensors = {k: v.detach().cpu().contiguous() for k, v in elmo.state_dict().items()}
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        safetensors.torch.save_file(tensors, str(tmp), metadata={"format": "pt"})
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, **asdict(elmo.config)}
    write_json(directory / CONFIG_FILE, config)  # written last: the directory is complete
    return directory


def load_elmo(directory: str | Path, device: str | torch.device = "cpu") -> ELMo:
    """Rebuild an ELMo from `save_elmo`'s directory (config JSON + safetensors weights)."""
    directory = Path(directory)
    config = _read_config(directory / CONFIG_FILE)
    model = ELMo(config)
    path = directory / WEIGHTS_FILE
    try:
        state = safetensors.torch.load_file(str(path))
    except FileNotFoundError:
        raise ELMoError(
            f"{path}: missing; the model directory is incomplete (save it again)"
        ) from None
    except Exception as error:  # safetensors raises its own error types for corrupt files
        raise ELMoError(f"{path}: unreadable safetensors ({error}); the file is corrupt") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise ELMoError(
            f"{path}: weights do not fit the config in {CONFIG_FILE} ({first}); the directory "
            "mixes files from different models"
        ) from None
    return model.to(device)


def _read_config(path: Path) -> ELMoConfig:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ELMoError(
            f"{path}: missing; not an ELMo model directory (save one with save_elmo)"
        ) from None
    except ValueError as error:
        raise ELMoError(f"{path}: not valid JSON ({error}); the file is corrupt") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ELMoError(f"{path}: not an ELMo config (no format {FORMAT!r}); wrong directory?")
    if data.get("format_version") != FORMAT_VERSION:
        raise ELMoError(
            f"{path}: format_version {data.get('format_version')!r}, this code reads "
            f"{FORMAT_VERSION}; retrain the model or use the matching pretrainlab version"
        )
    fields = {k: v for k, v in data.items() if k not in ("format", "format_version")}
    fields["cutoffs"] = tuple(fields.get("cutoffs", ()))
    try:
        return ELMoConfig(**fields)
    except TypeError as error:
        raise ELMoError(f"{path}: unexpected config fields ({error})") from None
