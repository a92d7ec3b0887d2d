"""The exact Gaussian prior restricted to the first shell of Λ24 (Λ24-SQ), in torch.

P_S(x) = prod_i phi_i(x_i) / Z_S over the 196,560 minimal vectors x (integer frame), with
phi_i(t) = exp(-(t - mu_i)^2 / (2 sigma_i^2)): the training rate term of the spherical
quantizer, and the model ``lsq.codec.shell_coding`` codes exactly. Z_S sums three shapes:
- (±4, ±4, 0^22): over the 276 pairs {i, j}, (phi_i(4) + phi_i(-4)) (phi_j(4) + phi_j(-4))
  times phi_k(0) elsewhere, summed as sum_i f_i (sum_{j > i} f_j) with suffix sums;
- (±2^8, 0^16) with an even number of minus signs: over the 759 octads O,
  1/2 [prod_O (phi_i(2) + phi_i(-2)) + prod_O (phi_i(2) - phi_i(-2))] times phi_k(0)
  elsewhere; sums over octads are products with the octads' 759 x 24 incidence matrix
  (products as sums of logs with the sign parity counted), not gathers;
- (∓3, ±1^23): over codewords c and positions j, prod_{i != j} phi_i(s_i) phi_j(-3 s_j) with
  s = (-1)^c, i.e. the first-order part of prod_i (phi_i(s_i) + eps phi_i(-3 s_i)) summed over
  the Golay code, through the code's trio of octads (``entropy_coding.trio``).
Everything is in the log domain relative to phi_i(0) (log-ratios t (2 mu - t) / (2 sigma^2)
do not cancel for far means), and sums of positive terms only: where the octad sign-parity
term 1 + prod tanh nearly cancels, it is evaluated as 1 - exp(-T) with T a sum of positives.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from lsq.codec.eager import eager
from lsq.codec.entropy_coding import trio
from lsq.codec.leech import octad_incidence, octads

_LOG2 = math.log(2.0)


@eager  # built from numpy tables: outside compiled graphs
@lru_cache(maxsize=8)
def _octad_matrix(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(octad_incidence(), dtype=dtype, device=device)


def _log_pair_sum(f: torch.Tensor) -> torch.Tensor:
    """log sum_{i < j} exp(f_i + f_j) over the last axis of 24, without forming the 276 pairs:
    sum_i exp(f_i) (sum_{j > i} exp(f_j)), all terms positive."""
    after = torch.logcumsumexp(f.flip(-1), -1).flip(-1)[..., 1:]  # log sum_{j > i}
    return torch.logsumexp(f[..., :-1] + after, -1)


@eager
@lru_cache(maxsize=8)
def _indices(device: torch.device) -> dict[str, torch.Tensor]:
    """Gather indices of the three shapes on a device."""
    t = trio()
    bits = (np.arange(16)[:, None] >> np.arange(4)) & 1  # (pattern, coordinate in nibble)
    coordinate = 4 * np.arange(6)[:, None, None] + np.arange(4)  # (nibble, 1, coordinate)
    patterns = t.rep[None, :] ^ (255 * np.arange(2)[:, None])  # (complement bit, class)
    chunk = np.arange(3)[:, None, None]
    arrays = {
        "octads": octads(),
        # rows of (coordinate, bit) flattened, for each (nibble, pattern, coordinate)
        "nibble": 2 * coordinate + bits[None],
        # rows of (nibble, pattern) flattened, for each (chunk, complement bit, class)
        "low": 32 * chunk + (patterns & 15)[None], "high": 32 * chunk + 16 + (patterns >> 4)[None],
        "second": t.second, "third": t.third,
    }
    return {k: torch.tensor(np.asarray(v, np.int64), device=device) for k, v in arrays.items()}


def _dual_mul(a1: torch.Tensor, e1: torch.Tensor, a2: torch.Tensor, e2: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(a1 + eps e1)(a2 + eps e2) with eps^2 = 0, all in logs."""
    return a1 + a2, torch.logaddexp(a1 + e2, e1 + a2)


def _log_one_minus_exp_neg(log_t: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(-T)) from log T, accurate (and with finite gradients) for any T > 0."""
    big = torch.log(-torch.expm1(-torch.exp(log_t.clamp(min=-10.0))))
    t = torch.exp(log_t.clamp(max=-10.0))
    return torch.where(log_t > -10.0, big, log_t - t / 2 + t * t / 24)


def _log_relative_partition(mu: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    """log (Z_S / prod_i phi_i(0)) with inv = 1 / (2 sigma^2): (..., 24) -> (...)."""
    shape = mu.shape[:-1]
    mu, inv = mu.reshape(-1, 24), inv.reshape(-1, 24)
    ix = _indices(mu.device)
    octad_sum = _octad_matrix(mu.device, mu.dtype)  # x @ octad_sum: sums over each octad

    def log_ratio(t: float) -> torch.Tensor:  # log phi(t) / phi(0)
        return t * (2 * mu - t) * inv

    # (±4, ±4, 0^22)
    pairs = _log_pair_sum(torch.logaddexp(log_ratio(4.0), log_ratio(-4.0)))

    # (±2^8, 0^16), even number of minus signs: 1/2 prod (p + m) (1 + prod tanh(delta / 2))
    two = torch.logaddexp(log_ratio(2.0), log_ratio(-2.0))
    delta = 8 * mu * inv  # log phi(2) / phi(-2)
    tanh = torch.tanh(delta / 2)
    tiny = torch.finfo(mu.dtype).tiny
    negatives = (tanh < 0).to(mu.dtype) @ octad_sum
    log_magnitude = torch.log(tanh.abs().clamp(min=tiny)) @ octad_sum
    tanh_product = (1 - 2 * torch.remainder(negatives, 2)) * torch.exp(log_magnitude)
    # near cancellation (product <= -1/2, so every |delta| > 1): 1 - exp(-T) with
    # T = sum -log|tanh(delta / 2)| = sum 2 atanh(u), u = exp(-|delta|), summed as numbers
    # unless all of an octad's terms are too small for that; those octads sum in logs
    a = delta.abs().clamp(min=1.0)
    t_sum = (2 * torch.atanh(torch.exp(-a))) @ octad_sum
    cancelling = _log_one_minus_exp_neg(torch.log(t_sum.clamp(min=tiny)))
    cancel = tanh_product < -0.5
    rows, cols = torch.nonzero(cancel & (t_sum < tiny**0.8), as_tuple=True)
    if rows.numel():
        u = torch.exp(-a.clamp(max=30.0))  # atanh(u) / u = 1 to double precision beyond
        log_terms = _LOG2 - a + torch.log(torch.atanh(u) / u)
        far = log_terms[rows[:, None], ix["octads"][cols]].logsumexp(-1)
        cancelling = cancelling.index_put((rows, cols), _log_one_minus_exp_neg(far))
    parity = torch.where(cancel, cancelling, torch.log1p(tanh_product.clamp(min=-0.5)))
    octad_terms = two @ octad_sum + parity - _LOG2

    # (∓3, ±1^23): dual numbers a + eps e over the trio, a = phi(±1), e = phi(∓3), c_i = 0, 1
    ones = torch.stack([log_ratio(1.0), log_ratio(-1.0)], -1).flatten(-2)
    threes = torch.stack([log_ratio(-3.0), log_ratio(3.0)], -1).flatten(-2)
    nib_a = ones[..., ix["nibble"]].sum(-1)  # (..., 6 nibbles, 16 patterns)
    nib_e = nib_a + torch.logsumexp((threes - ones)[..., ix["nibble"]], -1)
    nib_a, nib_e = nib_a.flatten(-2), nib_e.flatten(-2)
    class_a, class_e = _dual_mul(nib_a[..., ix["low"]], nib_e[..., ix["low"]],
                                 nib_a[..., ix["high"]], nib_e[..., ix["high"]])
    beta_a, beta_e = torch.logsumexp(class_a, -2), torch.logsumexp(class_e, -2)  # (..., 3, 64)
    tail_a, tail_e = _dual_mul(beta_a[..., 1, ix["second"]], beta_e[..., 1, ix["second"]],
                               beta_a[..., 2, ix["third"]], beta_e[..., 2, ix["third"]])
    _, words = _dual_mul(beta_a[..., 0, :], beta_e[..., 0, :],
                         torch.logsumexp(tail_a, -1), torch.logsumexp(tail_e, -1))
    odd = torch.logsumexp(words, -1, keepdim=True)

    return torch.logsumexp(torch.cat([pairs[:, None], octad_terms, odd], -1), -1).reshape(shape)


def shell_log_partition(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """log Z_S for blocks (..., 24) of means and scales (integer frame) -> (...)."""
    mu, sigma = torch.broadcast_tensors(mu, sigma)
    inv = 0.5 / (sigma * sigma)
    return _log_relative_partition(mu, inv) - (mu * mu * inv).sum(-1)


def shell_log_prob(x: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Natural log of P_S(x) for shell points x (..., 24) (or straight-through proxies)."""
    mu, sigma = torch.broadcast_tensors(mu, sigma)
    inv = 0.5 / (sigma * sigma)
    return (x * (2 * mu - x) * inv).sum(-1) - _log_relative_partition(mu, inv)
