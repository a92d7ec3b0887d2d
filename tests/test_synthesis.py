"""The float64 synthesis: torch's g_s to float64 rounding, and the same bits however the
rows are chunked."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lsq.models.hyperprior import build_model
from lsq.models.synthesis import Synthesis


@pytest.fixture(scope="module")
def net() -> nn.Module:
    torch.manual_seed(0)
    model = build_model("scalar", N=16, M=24)
    with torch.no_grad():  # GDN's identity-like initial gamma would hide its cross terms
        for layer in model.g_s:
            if hasattr(layer, "gamma"):
                layer.gamma.uniform_(0.05, 0.3)
    return model.eval()


def test_matches_torch_float64(net: nn.Module) -> None:
    y = torch.randn(24, 5, 7, dtype=torch.float64) * 4
    expected = net.g_s.double()(y[None])[0]
    net.g_s.float()
    got = Synthesis(net.g_s, torch.device("cpu"))(y)
    assert got.shape == (3, 80, 112) and got.dtype == torch.float64
    assert torch.allclose(got, expected, rtol=0, atol=1e-12 * float(expected.abs().max()))


@pytest.mark.parametrize("rows_per_chunk", [1, 2, 3])
def test_chunks_give_the_same_bits(net: nn.Module, rows_per_chunk: int) -> None:
    y = torch.randn(24, 6, 9, dtype=torch.float64)
    synthesis = Synthesis(net.g_s, torch.device("cpu"))
    assert torch.equal(synthesis(y, rows_per_chunk), synthesis(y, 6))


def test_a_tile_of_the_latent_gives_the_same_bits_inside(net: nn.Module) -> None:
    """What a position computes does not depend on the rest of the image beyond its reach
    (2 latents): the decoder may synthesize any part of a latent."""
    y = torch.randn(24, 8, 10, dtype=torch.float64)
    synthesis = Synthesis(net.g_s, torch.device("cpu"))
    whole = synthesis(y)
    part = synthesis(y[:, 1:7, 2:9])
    assert torch.equal(part[:, 32:64, 32:80], whole[:, 48:80, 64:112])


def test_refuses_other_layers() -> None:
    with pytest.raises(ValueError, match="no ReLU"):
        Synthesis(nn.Sequential(nn.ReLU()), torch.device("cpu"))
    with pytest.raises(ValueError, match="5x5"):
        Synthesis(nn.Sequential(nn.ConvTranspose2d(3, 3, 3)), torch.device("cpu"))


@pytest.mark.parametrize("bounds", [(0, 3), (2, 5), (3, 11), (9, 11), (0, 11)])
def test_a_band_of_columns_gives_the_same_bits(net: nn.Module, bounds: tuple[int, int]) -> None:
    """A band fed only its window of latent columns makes the whole synthesis's columns,
    chunked by rows as it likes."""
    y = torch.randn(24, 7, 11, dtype=torch.float64)
    synthesis = Synthesis(net.g_s, torch.device("cpu"))
    lo, hi = bounds
    band = synthesis.band(11, lo, hi)
    first, last = band.window
    assert first == max(lo - 1, 0) and last == min(hi + 2, 11)
    parts = [band.push(y[:, r : r + 2, first:last]) for r in range(0, 7, 2)]
    got = torch.cat([*parts, band.close()], dim=1)
    assert torch.equal(got, synthesis(y)[:, :, 16 * lo : 16 * hi])


def test_a_band_outside_the_latent_is_refused(net: nn.Module) -> None:
    synthesis = Synthesis(net.g_s, torch.device("cpu"))
    with pytest.raises(ValueError, match="not within"):
        synthesis.band(5, 3, 6)
