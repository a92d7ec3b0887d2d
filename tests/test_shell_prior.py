"""The first-shell prior P_S: exact normalization, gradients, and exact range coding."""

import math

import numpy as np
import pytest
import torch

from lsq.codec import leech, tables
from lsq.codec.entropy_coding import Decoder, Encoder, scale_index
from lsq.codec.shell_coding import ShellCoder, point_masses
from lsq.codec.shell_prior import shell_log_partition, shell_log_prob

SHAPE_STARTS = [1104, 1104 + 97152]  # shell_index of the first octad point, first odd point


@pytest.fixture(scope="module")
def shell() -> torch.Tensor:
    return torch.from_numpy(leech.first_shell().astype(np.float64))


def _brute_log_partition(shell: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor
                         ) -> torch.Tensor:
    log_phi = -((shell[None] - mu[:, None]) ** 2 / (2 * sigma[:, None] ** 2)).sum(-1)
    return torch.logsumexp(log_phi, -1)


def _odd_parity_octad_means(n: int) -> torch.Tensor:
    """Means ±2 on an octad with an odd number of minus signs: the even-sign sum nearly
    cancels (1 - prod tanh), the case a naive formula gets wrong."""
    mu = torch.zeros(n, 24, dtype=torch.float64)
    octad = leech.octads()[17].tolist()
    mu[:, octad] = 2.0
    mu[:, octad[:3]] = -2.0
    return mu


def _parameters(regime: str, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    n = 6

    def rand(lo: float, hi: float) -> torch.Tensor:
        u = torch.rand(n, 24, generator=g, dtype=torch.float64)
        return torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))

    normal = torch.randn(n, 24, generator=g, dtype=torch.float64)
    if regime == "moderate":
        return normal, rand(0.3, 3.0)
    if regime == "small-sigma":
        return normal * 2, rand(0.05, 0.2)
    if regime == "large-sigma":
        return normal * 50, rand(100.0, 1000.0)
    if regime == "far-means":
        return normal * 1000, rand(0.05, 1000.0)
    if regime == "near-shell-points":
        points = torch.from_numpy(leech.first_shell()[torch.randint(0, 196560, (n,))])
        return points.double() + 0.2 * normal, rand(0.05, 0.5)
    sigma = torch.tensor([0.05, 0.07, 0.1, 0.2, 0.4, 0.6], dtype=torch.float64)[:, None]
    return _odd_parity_octad_means(n), sigma.expand(n, 24)


@pytest.mark.parametrize("regime", ["moderate", "small-sigma", "large-sigma", "far-means",
                                    "near-shell-points", "odd-parity-octad"])
def test_partition_matches_brute_force_over_the_shell(regime: str, shell: torch.Tensor) -> None:
    g = torch.Generator().manual_seed(len(regime))
    mu, sigma = _parameters(regime, g)
    got = shell_log_partition(mu, sigma)
    ref = _brute_log_partition(shell, mu, sigma)
    assert torch.all((got - ref).abs() <= 1e-9 * ref.abs().clamp(min=1.0))


@pytest.mark.parametrize("regime", ["moderate", "small-sigma", "far-means", "odd-parity-octad"])
def test_probabilities_over_the_shell_sum_to_one(regime: str, shell: torch.Tensor) -> None:
    g = torch.Generator().manual_seed(7)
    mu, sigma = _parameters(regime, g)
    for i in range(2):
        log_p = shell_log_prob(shell, mu[i : i + 1], sigma[i : i + 1])
        assert abs(torch.logsumexp(log_p, 0).exp().item() - 1) < 1e-9


def test_gradients_match_finite_differences() -> None:
    g = torch.Generator().manual_seed(3)
    mu = torch.cat([torch.randn(2, 24, generator=g, dtype=torch.float64),
                    _odd_parity_octad_means(1) + 0.1])
    sigma = 0.4 + torch.rand(3, 24, generator=g, dtype=torch.float64)
    torch.autograd.gradcheck(shell_log_partition,
                             (mu.requires_grad_(), sigma.requires_grad_()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_are_finite_for_extreme_parameters(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(4)
    spread = torch.tensor([0.0, 0.1, 3.0, 1000.0], dtype=torch.float64).repeat(64)[:, None]
    mu64 = torch.randn(256, 24, generator=g, dtype=torch.float64) * spread
    mu64[:16] = _odd_parity_octad_means(16)
    sigma64 = torch.exp(math.log(0.05) + torch.rand(256, 24, generator=g, dtype=torch.float64)
                        * math.log(1e3 / 0.05))
    mu, sigma = mu64.to(dtype).requires_grad_(), sigma64.to(dtype).requires_grad_()
    points = torch.cat([leech.nearest_shell(mu64[:128])[1],
                        leech.shell_point(torch.randint(0, 196560, (128,), generator=g))])
    lp = shell_log_prob(points.to(dtype), mu, sigma)
    assert torch.isfinite(lp).all() and (lp <= 1e-3).all()
    lp.sum().backward()
    assert torch.isfinite(mu.grad).all() and torch.isfinite(sigma.grad).all()


def test_point_masses_are_the_gaussian_ratios_for_any_mean() -> None:
    rng = np.random.default_rng(0)
    n = 4000
    scale = rng.integers(0, len(tables.THETA_SCALES), (n, 24))
    mean_q = np.concatenate([rng.integers(-40, 41, (n // 2, 24)),
                             rng.integers(-(10**7), 10**7, (n // 2, 24))])
    got = point_masses(scale, mean_q)
    k = np.arange(-4, 5)
    grid = tables.MEAN_GRID
    exponent = (grid * k - mean_q[..., None]) ** 2  # exact integers
    exponent = exponent - exponent.min(-1, keepdims=True)
    ref = np.exp(-exponent / (2 * grid**2 * tables.THETA_SCALES[scale][..., None] ** 2))
    big = ref > 1e-280
    assert np.allclose(got[big], ref[big], rtol=1e-12, atol=0)
    assert np.all(got[ref < 1e-310] == 0) and np.all(got <= 1)


def _draw(shell: torch.Tensor, mu: np.ndarray, sigma: np.ndarray, per: int,
          g: torch.Generator) -> np.ndarray:
    """Exact draws from P_S, ``per`` for each parameter row: weights of all 196,560 points."""
    out = []
    for lo in range(0, len(mu), 16):
        w = torch.from_numpy(0.5 / sigma[lo : lo + 16] ** 2)
        m = torch.from_numpy(mu[lo : lo + 16])
        logits = shell @ (2 * m * w).T - (shell * shell) @ w.T  # (shell, rows)
        probs = torch.softmax(logits, 0).T.contiguous()
        out.append(shell[torch.multinomial(probs, per, replacement=True, generator=g)])
    return torch.cat(out).reshape(-1, 24).numpy().astype(np.int64)


def _quantized(sigma: np.ndarray, mean: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(scale index, mean index) as the codec quantizes them, and the values they stand for."""
    scale = scale_index(sigma, tables.theta_tables())
    mean_q = np.floor(mean * tables.MEAN_GRID + 0.5).astype(np.int64)
    return scale, mean_q, mean_q / tables.MEAN_GRID, tables.THETA_SCALES[scale]


def _shapes(points: np.ndarray) -> np.ndarray:
    index = leech.shell_index(torch.from_numpy(points)).numpy()
    return np.bincount(np.searchsorted(SHAPE_STARTS, index, side="right"), minlength=3)


def test_round_trip_is_exact_over_wide_parameter_ranges(shell: torch.Tensor) -> None:
    rng = np.random.default_rng(1)
    g = torch.Generator().manual_seed(1)
    sets, per = 120, 10
    sigma = np.exp(rng.uniform(math.log(0.01), math.log(1000), (sets, 1))) * np.ones((1, 24))
    sigma[: sets // 2] *= np.exp(rng.uniform(-1, 1, (sets // 2, 24)))
    mean = rng.normal(0, 200, (sets, 24)) * rng.integers(0, 2, (sets, 1))
    mean[:10] = rng.choice([-5000.0, 5000.0], (10, 24))
    mean[10:20] = rng.normal(0, 2, (10, 24))
    scale, mean_q, mu_q, sigma_q = _quantized(sigma, mean)
    drawn = _draw(shell, mu_q, sigma_q, per, g)
    scale, mean_q = np.repeat(scale, per, 0), np.repeat(mean_q, per, 0)
    # and points of every shape, however improbable under their model
    points = np.concatenate([drawn, leech.shell_point(torch.from_numpy(
        rng.integers(0, 196560, len(drawn)))).numpy()])
    scale, mean_q = np.concatenate([scale, scale]), np.concatenate([mean_q, mean_q])
    assert np.all(_shapes(drawn) > 0)
    enc = Encoder()
    ShellCoder().encode(enc, points, scale, mean_q)
    data = enc.finish()
    assert np.array_equal(ShellCoder().decode(Decoder(data), scale, mean_q), points)


def test_empty_input_round_trips_and_non_shell_points_raise() -> None:
    empty = np.zeros((0, 24), np.int64)
    enc = Encoder()
    ShellCoder().encode(enc, empty, empty, empty)
    decoded = ShellCoder().decode(Decoder(enc.finish()), empty, empty)
    assert decoded.shape == (0, 24)
    not_shell = np.zeros((1, 24), np.int64)
    not_shell[0, :2] = 4
    not_shell[0, 2] = 8  # a lattice point, but not a minimal vector
    with pytest.raises(ValueError):
        ShellCoder().encode(Encoder(), not_shell, np.zeros_like(not_shell), not_shell)


def test_coded_size_matches_the_exact_model_within_one_percent(shell: torch.Tensor) -> None:
    rng = np.random.default_rng(5)
    g = torch.Generator().manual_seed(5)
    sets, per = 200, 50
    sigma = np.exp(rng.uniform(math.log(0.3), math.log(30), (sets, 24)))
    direction = rng.normal(size=(sets, 24))
    direction *= math.sqrt(32) / np.linalg.norm(direction, axis=1, keepdims=True)
    mean = (direction * rng.uniform(0, 2, (sets, 1))
            + rng.normal(size=(sets, 24)) * rng.uniform(0, 2, (sets, 1)))
    scale, mean_q, mu_q, sigma_q = _quantized(sigma, mean)
    points = _draw(shell, mu_q, sigma_q, per, g)
    scale, mean_q, mu_q, sigma_q = (np.repeat(a, per, 0) for a in (scale, mean_q, mu_q, sigma_q))
    assert np.all(_shapes(points) > 500)
    enc = Encoder()
    ShellCoder().encode(enc, points, scale, mean_q)
    size = len(enc.finish())
    ideal = -shell_log_prob(torch.from_numpy(points).double(), torch.from_numpy(mu_q),
                            torch.from_numpy(sigma_q)).sum().item() / math.log(2) / 8
    assert abs(size - ideal) < 0.01 * ideal + 8
