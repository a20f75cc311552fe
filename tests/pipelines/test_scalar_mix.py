"""ScalarMix: a convex, learned combination of layers, scaled by gamma, blind to padding."""

from __future__ import annotations

import pytest
import torch

from pipelines.models.scalar_mix import ScalarMix, ScalarMixError


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def layers(n: int = 3, shape: tuple[int, ...] = (2, 5, 4)) -> list[torch.Tensor]:
    return [torch.randn(*shape) for _ in range(n)]


def test_weights_start_equal_and_always_sum_to_one() -> None:
    mix = ScalarMix(3)
    torch.testing.assert_close(mix.weights(), torch.full((3,), 1 / 3))
    with torch.no_grad():
        mix.scalars.copy_(torch.tensor([2.0, -1.0, 0.5]))
    weights = mix.weights()
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0))
    assert bool((weights > 0).all())


def test_output_is_gamma_times_the_weighted_sum() -> None:
    mix = ScalarMix(3)
    with torch.no_grad():
        mix.scalars.copy_(torch.tensor([0.3, -0.2, 1.0]))
        mix.gamma.fill_(2.5)
    hs = layers()
    s = torch.softmax(torch.tensor([0.3, -0.2, 1.0]), 0)
    expected = 2.5 * (s[0] * hs[0] + s[1] * hs[1] + s[2] * hs[2])
    torch.testing.assert_close(mix(hs), expected)
    with torch.no_grad():
        mix.gamma.fill_(5.0)
    torch.testing.assert_close(mix(hs), 2 * expected)


def test_weights_learn_to_favour_the_informative_layer() -> None:
    """Target = 3 x layer 1: a few Adam steps move weight to layer 1 and gamma towards 3."""
    mix = ScalarMix(3)
    optimizer = torch.optim.Adam(mix.parameters(), lr=0.1)
    for _ in range(60):
        hs = layers()
        loss = ((mix(hs) - 3.0 * hs[1]) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    weights = mix.weights().detach()
    assert int(weights.argmax()) == 1 and float(weights[1]) > 0.8
    assert float(mix.gamma.detach()) > 2.0
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0))


@pytest.mark.parametrize("do_layer_norm", [False, True])
def test_padding_is_zeroed_and_never_changes_real_positions(do_layer_norm: bool) -> None:
    mix = ScalarMix(3, do_layer_norm=do_layer_norm)
    hs = layers()
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    noisy = [h.clone() for h in hs]
    for h in noisy:
        h[1, 3:] = 1000.0  # garbage at padded positions
    a, b = mix(hs, mask), mix(noisy, mask)
    torch.testing.assert_close(a, b)
    assert float(a[1, 3:].detach().abs().sum()) == 0.0


def test_layer_norm_uses_statistics_of_real_tokens_only() -> None:
    mix = ScalarMix(1, do_layer_norm=True)
    h = torch.randn(1, 6, 4) * 7 + 3
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    out = mix([h], mask)[:, :4]
    torch.testing.assert_close(out.mean(), torch.tensor(0.0), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var(unbiased=False), torch.tensor(1.0), atol=1e-4, rtol=0)


def test_wrong_layer_count_or_shapes_fail_clearly() -> None:
    with pytest.raises(ScalarMixError, match="n_layers=2"):
        ScalarMix(3)(layers(2))
    with pytest.raises(ScalarMixError, match="same shape"):
        ScalarMix(2)([torch.randn(2, 5, 4), torch.randn(2, 5, 3)])
    with pytest.raises(ScalarMixError, match="mask shape"):
        ScalarMix(2)(layers(2), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ScalarMixError, match="at least one"):
        ScalarMix(0)
