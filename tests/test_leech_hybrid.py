"""The leech-hybrid latent codec: Λ24 on wide blocks, rounding on narrow ones, one stream."""

from __future__ import annotations

import math

import pytest
import torch

from lsq.codec.entropy_coding import Encoder
from lsq.codec.quantizers import BLOCK, from_blocks
from lsq.models.latent_codecs import (
    LeechHybridLatentCodec,
    LeechLatentCodec,
    ScalarLatentCodec,
)

M, H, W = 48, 3, 4


def _latent() -> tuple[torch.Tensor, torch.Tensor]:
    """(y, params) in float64 on a 1/64 grid, as integer-exact hyper outputs are: the first
    block is wide (scales about 3.5) at the left half of the positions, all else narrow."""
    g = torch.Generator().manual_seed(0)
    scales = torch.rand(M, H, W, generator=g, dtype=torch.float64) * 0.5 + 0.2
    scales[:BLOCK, :, : W // 2] += 3.0
    means = torch.randn(M, H, W, generator=g, dtype=torch.float64) * 2
    params = torch.cat([scales, means]).mul(64).round().div(64)
    y = means + torch.randn(M, H, W, generator=g, dtype=torch.float64) * scales
    return y, params


def _coded(codec, y: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, bytes]:
    enc = Encoder()
    recon = codec.code(params, enc=enc, y=y)
    return recon, enc.finish()


def test_round_trip_is_exact_and_each_block_takes_the_chosen_codec() -> None:
    y, params = _latent()
    hybrid = LeechHybridLatentCodec(M)
    recon, data = _coded(hybrid, y, params)
    assert hybrid.compress(y, params) == data
    assert torch.equal(hybrid.decompress(data, params), recon)

    chosen = hybrid.lattice_blocks(params[None, :M])[0]
    assert chosen.any() and not chosen.all()
    chosen = from_blocks(chosen[None].expand(1, *chosen.shape[:-1], BLOCK))[0]
    lattice, _ = _coded(LeechLatentCodec(M), y, params)
    rounding, _ = _coded(ScalarLatentCodec(M), y, params)
    assert torch.equal(recon, torch.where(chosen, lattice, rounding))
    assert not torch.equal(recon, lattice) and not torch.equal(recon, rounding)


@pytest.mark.parametrize(("above", "alone"), [(-math.inf, LeechLatentCodec),
                                              (math.inf, ScalarLatentCodec)])
def test_all_blocks_on_one_side(above: float, alone) -> None:
    y, params = _latent()
    hybrid = LeechHybridLatentCodec(M, above=above)
    recon, data = _coded(hybrid, y, params)
    assert torch.equal(hybrid.decompress(data, params), recon)
    assert torch.equal(recon, _coded(alone(M), y, params)[0])


def test_training_forward_mixes_the_two_codecs_by_block() -> None:
    y, params = _latent()
    hybrid = LeechHybridLatentCodec(M).eval()
    y_hat, lik = hybrid(y[None].float(), params[None].float())
    lattice_hat, lattice_lik = hybrid.lattice(y[None].float(), params[None].float())
    round_hat, round_lik = hybrid.rounding(y[None].float(), params[None].float())
    left, right = (..., slice(None, W // 2)), (..., slice(W // 2, None))
    assert torch.equal(y_hat[0, :BLOCK][left], lattice_hat[0, :BLOCK][left])
    assert torch.equal(y_hat[0, :BLOCK][right], round_hat[0, :BLOCK][right])
    assert torch.equal(lik["y"][0, BLOCK:], round_lik["y"][0, BLOCK:])
    assert torch.equal(lik["y"][0, :BLOCK][left], lattice_lik["y"][0, :BLOCK][left])
