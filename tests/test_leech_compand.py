"""Companded Λ24: a learned lattice step per scale bucket, exact coding, no bits spent on it."""

from __future__ import annotations

import pytest
import torch

from lsq.codec.entropy_coding import Decoder, Encoder
from lsq.codec.leech import nearest
from lsq.codec.quantizers import BLOCK, LEECH_UNIT_STEP
from lsq.models.latent_codecs import LeechLatentCodec
from lsq.models.latent_codecs.leech import COMPAND_BOUNDS, COMPAND_GRID, latent_blocks
from lsq.models.spec import ModelSpec, SpecError

M, H, W = 48, 4, 5


def _latent() -> tuple[torch.Tensor, torch.Tensor]:
    """(y, params) in float64, params on a 1/64 grid as integer-exact hyper outputs are,
    with scales spread over the buckets."""
    g = torch.Generator().manual_seed(0)
    scales = torch.exp(torch.randn(M, H, W, generator=g, dtype=torch.float64) * 1.2)
    means = torch.randn(M, H, W, generator=g, dtype=torch.float64)
    params = torch.cat([scales, means]).mul(64).round().div(64)
    y = means + torch.randn(M, H, W, generator=g, dtype=torch.float64) * scales
    return y, params


def _codec(compand: str, seed: int = 1) -> LeechLatentCodec:
    codec = LeechLatentCodec(M, compand=compand)
    if compand != "none":
        with torch.no_grad():
            g = torch.Generator().manual_seed(seed)
            codec.compand_offsets.copy_(torch.rand(len(COMPAND_BOUNDS) + 1, generator=g) - 0.5)
    return codec


@pytest.mark.parametrize("compand", ["block", "coordinate"])
def test_round_trip_is_exact_and_points_sit_on_the_rescaled_lattice(compand: str) -> None:
    y, params = _latent()
    codec = _codec(compand)
    enc = Encoder()
    encoded = codec.code(params, enc=enc, y=y)
    data = enc.finish()
    decoded = codec.code(params, dec=Decoder(data))
    assert torch.equal(encoded, decoded) and decoded.dtype == torch.float64
    _, _, step = codec.coding_parameters(params)
    assert step.shape == (M // BLOCK * H * W, 1 if compand == "block" else BLOCK)
    grid = step / LEECH_UNIT_STEP * COMPAND_GRID
    torch.testing.assert_close(grid, grid.round(), rtol=0, atol=1e-9)
    points = (latent_blocks(decoded) - latent_blocks(params[M:])) / step
    torch.testing.assert_close(points, nearest(points).double(), rtol=0, atol=1e-9)
    assert len(torch.unique(step)) > 3


def test_factors_follow_the_scale_buckets() -> None:
    codec = _codec("block")
    scales = torch.tensor([[0.11] * BLOCK, [1.0] * BLOCK, [20.0] * BLOCK], dtype=torch.float64)
    factors = (1 + codec.compand_offsets.detach().double()).clamp(1 / 16, 16)
    expected = torch.round(factors * COMPAND_GRID) / COMPAND_GRID
    buckets = [0, COMPAND_BOUNDS.index(1.0) + 1, len(COMPAND_BOUNDS)]
    assert torch.equal(codec.steps(scales, coding=True)[:, 0],
                       LEECH_UNIT_STEP * expected[buckets])


def test_zero_offsets_code_exactly_like_plain_leech() -> None:
    y, params = _latent()
    streams = []
    for compand in ("none", "block", "coordinate"):
        enc = Encoder()
        LeechLatentCodec(M, compand=compand).code(params, enc=enc, y=y)
        streams.append(enc.finish())
    assert streams[0] == streams[1] == streams[2]


def test_companding_changes_the_stream_and_trains_its_factors() -> None:
    y, params = _latent()
    plain, companded = Encoder(), Encoder()
    LeechLatentCodec(M).code(params, enc=plain, y=y)
    _codec("block").code(params, enc=companded, y=y)
    assert plain.finish() != companded.finish()
    codec = _codec("coordinate").train()
    y_hat, lik = codec(y[None].float(), params[None].float())
    (-torch.log2(lik["y"]).sum() + ((y_hat - y[None].float()) ** 2).sum()).backward()
    assert codec.compand_offsets.grad is not None and codec.compand_offsets.grad.abs().sum() > 0


def test_spec_takes_companding_and_refuses_unknown_kinds() -> None:
    model = ModelSpec("leech", N=16, M=48, codec_options={"compand": "block"}).build()
    assert model.latent_codec.compand == "block"
    with pytest.raises(SpecError, match="companding"):
        ModelSpec("leech", N=16, M=48, codec_options={"compand": "diagonal"}).build()
