"""The exact Leech prior: normalization, agreement with the theta series, gradients."""

import math

import pytest
import torch

from lsq.codec import leech
from lsq.codec.lattice_prior import leech_log_partition, leech_log_prob, log_theta8

# Theta series of the Leech lattice in the integer frame: (squared norm, number of points).
THETA = [(0, 1), (32, 196560), (48, 16773120), (64, 398034000), (80, 4629381120),
         (96, 34417656000), (112, 187489935360), (128, 814879774800),
         (144, 2975551488000), (160, 9486551299680)]


@pytest.mark.parametrize("sigma", [0.6, 1.0, 1.3])
def test_partition_matches_theta_series(sigma: float) -> None:
    ref = math.log(sum(n * math.exp(-k / (2 * sigma * sigma)) for k, n in THETA))
    mu = torch.zeros(1, 24, dtype=torch.float64)
    got = leech_log_partition(mu, torch.full((1, 24), sigma, dtype=torch.float64))
    assert abs(got.item() - ref) < 1e-9


@pytest.mark.parametrize("sigma", [5.0, 40.0, 900.0])
def test_partition_large_sigma_is_density_over_cell_volume(sigma: float) -> None:
    mu = torch.randn(3, 24, dtype=torch.float64) * 50
    got = leech_log_partition(mu, torch.full((3, 24), sigma, dtype=torch.float64))
    ref = 24 * math.log(sigma * math.sqrt(2 * math.pi)) - 12 * math.log(8)
    assert torch.allclose(got, torch.full_like(got, ref), atol=1e-9)


def test_probabilities_sum_to_one_over_enumerated_points() -> None:
    """Means near a lattice point, small scales: the origin and the first shell hold all mass."""
    g = torch.Generator().manual_seed(1)
    shell = torch.as_tensor(leech.first_shell(), dtype=torch.float64)
    points = torch.cat([torch.zeros(1, 24, dtype=torch.float64), shell])
    for _ in range(5):
        mu = (torch.rand(24, generator=g, dtype=torch.float64) - 0.5) * 1.2
        sigma = 0.35 + torch.rand(24, generator=g, dtype=torch.float64) * 0.25
        log_z = leech_log_partition(mu[None], sigma[None])
        log_phi = (-((points - mu) ** 2) / (2 * sigma**2)).sum(-1)
        assert abs(torch.logsumexp(log_phi - log_z, 0).exp().item() - 1) < 1e-9
        lp = leech_log_prob(points[:3], mu.expand(3, 24), sigma.expand(3, 24))
        assert torch.allclose(lp, (log_phi - log_z)[:3])


def test_theta_branches_agree_at_the_switch() -> None:
    mu = torch.linspace(-9, 9, 37, dtype=torch.float64)
    below = log_theta8(mu, torch.full_like(mu, 4.0 - 1e-9))
    above = log_theta8(mu, torch.full_like(mu, 4.0))
    assert torch.allclose(below, above, atol=1e-8)


def test_float32_gradients_are_finite_over_extreme_parameters() -> None:
    mu = (torch.randn(256, 24) * 30).requires_grad_()
    sigma = torch.exp(torch.rand(256, 24) * 9 - 2.5).requires_grad_()  # 0.08 .. 660
    x = leech.nearest(mu.detach()).float()
    lp = leech_log_prob(x, mu, sigma)
    assert torch.isfinite(lp).all() and (lp <= 1e-4).all()
    lp.sum().backward()
    assert torch.isfinite(mu.grad).all() and torch.isfinite(sigma.grad).all()


def test_centred_partition_equals_general_formula_at_zero_mean() -> None:
    from lsq.codec.lattice_prior import leech_log_partition_centred

    torch.manual_seed(5)
    for lo, hi in ((0.05, 0.5), (0.3, 3.0), (2.0, 8.0), (5.0, 300.0), (0.05, 300.0)):
        sigma = torch.exp(torch.empty(300, 24, dtype=torch.float64).uniform_(
            math.log(lo), math.log(hi)))
        general = leech_log_partition(torch.zeros_like(sigma), sigma)
        centred = leech_log_partition_centred(sigma)
        torch.testing.assert_close(centred, general, rtol=1e-12, atol=1e-12)


def test_centred_partition_gradient_and_float32() -> None:
    from lsq.codec.lattice_prior import leech_log_partition_centred

    torch.manual_seed(6)
    sigma = (torch.rand(4, 24, dtype=torch.float64) * 3 + 0.2).requires_grad_(True)
    assert torch.autograd.gradcheck(leech_log_partition_centred, (sigma,))
    wide = torch.exp(torch.empty(500, 24, dtype=torch.float64).uniform_(-2.0, 6.0))
    ref = leech_log_partition_centred(wide)
    f32 = leech_log_partition_centred(wide.float()).double()
    assert float(((f32 - ref) / ref.abs().clamp(min=1)).abs().max()) < 1e-5
