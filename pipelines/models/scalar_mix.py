"""ELMo's learned weighted sum of layers (Peters et al. 2018, eq. 1).

    ELMo_k = gamma * sum_j s_j * h_kj,   s = softmax(w)

Downstream models do not pick one layer: they learn how much of each to use. The weights are
softmax-normalised so they stay a convex combination (each s_j in (0, 1), summing to 1) and the
learned `gamma` rescales the whole vector to suit the task model. With `do_layer_norm=True`
each layer is first normalised to zero mean and unit variance over its real (unmasked)
elements, as the paper suggests when layer activations have very different scales. Padded
positions never influence the statistics and come out as zeros.
"""

from __future__ import annotations

import torch
from torch import nn

from pretrainlab.config import PretrainlabError


class ScalarMixError(PretrainlabError, ValueError):
    """Layers handed to a ScalarMix that cannot be mixed (wrong count or shapes)."""


class ScalarMix(nn.Module):
    def __init__(self, n_layers: int, do_layer_norm: bool = False) -> None:
        super().__init__()
        if n_layers < 1:
            raise ScalarMixError(f"ScalarMix needs at least one layer, got n_layers={n_layers}")
        self.n_layers = n_layers
        self.do_layer_norm = do_layer_norm
        self.scalars = nn.Parameter(torch.zeros(n_layers))  # equal weights at the start
        self.gamma = nn.Parameter(torch.ones(()))

    def weights(self) -> torch.Tensor:
        """The normalised layer weights s_j (sum to 1)."""
        return torch.softmax(self.scalars, dim=0)

    def forward(self, layers: list[torch.Tensor], mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mix `n_layers` tensors of shape (B, T, D); `mask` (B, T) marks real tokens."""
        self._check(layers, mask)
        weights = self.weights()
        mixed = torch.zeros_like(layers[0])
        for weight, layer in zip(weights, layers, strict=True):
            if self.do_layer_norm:
                layer = _masked_layer_norm(layer, mask)
            mixed = mixed + weight * layer
        mixed = self.gamma * mixed
        if mask is not None:
            mixed = mixed * mask.unsqueeze(-1).to(mixed.dtype)
        return mixed

    def _check(self, layers: list[torch.Tensor], mask: torch.Tensor | None) -> None:
        if len(layers) != self.n_layers:
            raise ScalarMixError(
                f"ScalarMix was built for {self.n_layers} layers but got {len(layers)}: "
                f"build it with ScalarMix(n_layers={len(layers)})"
            )
        shapes = {tuple(layer.shape) for layer in layers}
        if len(shapes) != 1:
            raise ScalarMixError(f"all layers must have the same shape, got {sorted(shapes)}")
        if mask is not None and tuple(mask.shape) != tuple(layers[0].shape[:-1]):
            raise ScalarMixError(
                f"mask shape {tuple(mask.shape)} does not match the layers' leading dimensions "
                f"{tuple(layers[0].shape[:-1])}"
            )


def _masked_layer_norm(layer: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Normalise one layer with mean/variance over its real elements only (ELMo's layer norm)."""
    if mask is None:
        mask = torch.ones(layer.shape[:-1], dtype=torch.bool, device=layer.device)
    weight = mask.unsqueeze(-1).to(layer.dtype)  # (B, T, 1)
    count = weight.sum().clamp_min(1.0) * layer.shape[-1]
    mean = (layer * weight).sum() / count
    variance = (((layer - mean) * weight) ** 2).sum() / count
    return (layer - mean) / torch.sqrt(variance + 1e-12)
