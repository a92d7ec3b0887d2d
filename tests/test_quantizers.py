"""The quantizer interface: symbols and reconstruction agree with hard quantization."""

import math

import pytest
import torch

from lsq.codec import leech
from lsq.codec.quantizers import (
    LEECH_UNIT_STEP,
    SHELL_NORM,
    BSQQuantizer,
    LeechQuantizer,
    ScalarQuantizer,
    SphericalLeechQuantizer,
    leech_cell_noise,
)


@pytest.fixture
def blocks() -> torch.Tensor:
    return torch.randn(64, 24, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_scalar_symbols_reconstruct_to_rounding(blocks: torch.Tensor) -> None:
    q, means = ScalarQuantizer(), blocks.flip(0) * 0.3
    hard = q.quantize(blocks, means)
    assert torch.equal(q.reconstruct(q.symbols(blocks, means), means), hard)
    assert (hard - blocks).abs().max() <= 0.5


def test_bsq_points_are_unit_sign_vectors(blocks: torch.Tensor) -> None:
    q = BSQQuantizer()
    hard = q.quantize(blocks)
    assert torch.allclose(hard.norm(dim=-1), torch.ones(64, dtype=hard.dtype))
    assert torch.equal(torch.sign(hard), torch.sign(blocks))
    assert torch.equal(q.reconstruct(q.symbols(blocks)).to(hard.dtype), hard)


def test_leech_symbols_are_lattice_points(blocks: torch.Tensor) -> None:
    q, step = LeechQuantizer(), torch.tensor(LEECH_UNIT_STEP, dtype=torch.float64)
    points = q.symbols(blocks * 5, step)
    assert bool(leech.is_leech(points).all())
    assert torch.equal(q.reconstruct(points, step), q.quantize(blocks * 5, step))


@pytest.mark.parametrize("kind", ["ste", "noise", "mixed"])
def test_leech_proxy_rate_on_lattice_and_gradient_passes(blocks: torch.Tensor, kind: str) -> None:
    q, step = LeechQuantizer(), torch.tensor(0.5, dtype=torch.float64)
    y = blocks.clone().requires_grad_()
    proxy = q.proxy(y, step, kind)
    assert bool(leech.is_leech(proxy.rate_input.detach().round().long()).all())
    proxy.recon.sum().backward()
    assert torch.allclose(y.grad, torch.ones_like(y))


def test_cell_noise_stays_in_the_voronoi_cell() -> None:
    noise = leech_cell_noise(torch.Size([2000, 24]), torch.device("cpu"), torch.float64)
    assert not leech.nearest(noise).any()
    # second moment per dimension: G * V^(1/12) with G ~ 0.0658, V = 8^12
    assert abs((noise**2).mean().item() - 0.0658 * 8) < 0.03


def test_spherical_reconstruction_has_gain_and_shell_direction(blocks: torch.Tensor) -> None:
    q, gain_step = SphericalLeechQuantizer(), torch.tensor(0.25, dtype=torch.float64)
    points, gains = q.symbols(blocks, gain_step)
    assert torch.equal((points * points).sum(-1), torch.full((64,), 32, dtype=points.dtype))
    recon = q.reconstruct(points, gains, gain_step)
    assert torch.allclose(recon.norm(dim=-1), gains.squeeze(-1).double() * 0.25)
    cos = (recon * blocks).sum(-1) / (recon.norm(dim=-1) * blocks.norm(dim=-1))
    assert bool((cos > 0).all()) and math.isclose(SHELL_NORM, math.sqrt(32))
