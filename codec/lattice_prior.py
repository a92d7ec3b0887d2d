"""The exact Gaussian prior on the Leech lattice, in torch (docs/design.md section 5).

P(x) = prod_i phi_i(x_i) / Z over x in the integer-frame Leech lattice, with
phi_i(t) = exp(-(t - mu_i)^2 / (2 sigma_i^2)). Z is a sum over the 8,192 cosets
(m, c) of 4*D24-with-parity:

    Z(m, c) = 1/2 [ prod_i A_i(r_i) + (-1)^m prod_i B_i(r_i) ],   r_i = (2 c_i + m) mod 4,

where A_i(rho) = C_i(rho) + C_i(rho + 4), B_i(rho) = C_i(rho) - C_i(rho + 4) and
C_i(k) = sum_h phi_i(k + 8 h) is a theta function (parity pi(m, c) = m for every codeword).
Everything here is differentiable: it is the training rate term of the ``leech`` quantizer,
and ``lsq.codec.entropy_coding.LeechCoder`` evaluates the same formulas from tables. The
spherical quantizer only ever emits first-shell points: its prior is this one restricted to
the shell (``lsq.codec.shell_prior``), coded by ``lsq.codec.shell_coding``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from lsq.codec.eager import eager
from lsq.codec.leech import golay_code

#: Below this sigma the direct theta sum converges in 11 terms, above it the Poisson dual in 4.
DIRECT_MAX_SIGMA = 4.0
_DIRECT_TERMS = 5
_DUAL_TERMS = 3


@eager  # built from numpy tables: outside compiled graphs
@lru_cache(maxsize=8)
def _codewords(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(golay_code(), dtype=dtype, device=device)


def _log_theta(d: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """log sum_h exp(-(8h - d)^2 / (2 sigma^2)) for offsets d (..., K) and scales sigma (...,).

    Direct sum for small sigma, Poisson dual for large sigma; both branches are evaluated on
    clamped inputs so that gradients stay finite.
    """
    s = sigma.unsqueeze(-1)
    s_direct = s.clamp(max=DIRECT_MAX_SIGMA)
    h = torch.arange(-_DIRECT_TERMS, _DIRECT_TERMS + 1, dtype=s.dtype, device=s.device)
    t = 8 * (torch.round(d / 8).detach().unsqueeze(-1) + h) - d.unsqueeze(-1)
    direct = torch.logsumexp(-(t * t) / (2 * s_direct.unsqueeze(-1) ** 2), dim=-1)

    s_dual = s.clamp(min=DIRECT_MAX_SIGMA)
    f = torch.arange(1, _DUAL_TERMS + 1, dtype=s.dtype, device=s.device)
    damp = torch.exp(-(2 * math.pi**2 / 64) * (s_dual.unsqueeze(-1) * f) ** 2)
    wave = torch.cos((2 * math.pi / 8) * f * d.unsqueeze(-1))
    dual = torch.log(s_dual * math.sqrt(2 * math.pi) / 8) + torch.log1p(2 * (damp * wave).sum(-1))
    return torch.where(s < DIRECT_MAX_SIGMA, direct, dual)


def log_theta8(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """log C(k) = log sum_h exp(-(k + 8h - mu)^2 / (2 sigma^2)) for k = 0..7: (...,) -> (..., 8)."""
    k = torch.arange(8, dtype=mu.dtype, device=mu.device)
    return _log_theta(mu.unsqueeze(-1) - k, sigma)


def leech_log_partition(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """log Z for blocks (..., 24) of means and scales (integer frame) -> (...,)."""
    log_c = log_theta8(mu, sigma)
    log_a = torch.logaddexp(log_c[..., :4], log_c[..., 4:])
    beta = torch.tanh((log_c[..., :4] - log_c[..., 4:]) / 2)  # B / A, in [-1, 1]
    log_abs_beta = torch.log(beta.abs().clamp(min=1e-30))
    negative = (beta < 0).to(mu.dtype)
    g = _codewords(mu.device, mu.dtype).T  # (24, 4096)

    def over_codewords(values: torch.Tensor, m: int) -> torch.Tensor:
        """sum_i values_i(r_i) for every codeword: linear in c, so one matrix product."""
        base = values[..., m]
        return base.sum(-1, keepdim=True) + (values[..., m + 2] - base) @ g

    terms = []
    for m in (0, 1):
        sum_log_a = over_codewords(log_a, m)
        sum_log_beta = over_codewords(log_abs_beta, m).clamp(max=-1e-30)
        sign_flips = torch.remainder(over_codewords(negative, m).detach().round() + m, 2)
        plus = torch.nn.functional.softplus(sum_log_beta)  # log(1 + prod beta)
        minus = torch.log(-torch.expm1(sum_log_beta))  # log(1 - prod beta)
        terms.append(sum_log_a - math.log(2) + torch.where(sign_flips == 0, plus, minus))
    return torch.logsumexp(torch.cat(terms, dim=-1), dim=-1)


def leech_log_prob(x: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Natural log of P(x) for points x (..., 24) (lattice points, or noisy proxies)."""
    log_phi = -((x - mu) ** 2) / (2 * sigma**2)
    return log_phi.sum(-1) - leech_log_partition(mu, sigma)


def _log_theta_centred(sigma: torch.Tensor) -> torch.Tensor:
    """log C(k) for k = 0..4 at mu = 0 (C(8 - k) = C(k) by symmetry): (...,) -> (..., 5)."""
    k = torch.arange(5, dtype=sigma.dtype, device=sigma.device)
    return _log_theta(-k.expand(*sigma.shape, 5), sigma)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate at both ends."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _log_tanh(u: torch.Tensor) -> torch.Tensor:
    """log tanh(u) for u > 0 (u is clamped to 1e-6 so that the gradient stays finite)."""
    v = -2 * u.clamp(min=1e-6)
    return _log1mexp(v) - torch.nn.functional.softplus(v)


def leech_log_partition_centred(sigma: torch.Tensor) -> torch.Tensor:
    """log Z of the prior centred on the origin (mu = 0), for blocks (..., 24) of scales.

    The mean-shifted quantizers code (y - mu) / step, so their prior is centred on a lattice
    point and Z collapses (with C(k) = C(8 - k), all Golay weights even):

        Z = 1/2 sum_c prod_i A_i(2 c_i) + 1/2 prod_i B_i(0) + 2048 [prod A_i(1) - prod B_i(1)].

    Only the first sum runs over the 4,096 codewords. Every ratio to A_i(0) lies in [0, 1]
    (theta functions peak at the centre), so the sum is one matrix product of logs, one exp
    and one sum, with no cancellation: a fraction of the work of the general formula.
    """
    lc = _log_theta_centred(sigma)
    c0, c1, c2, c3, c4 = lc.unbind(-1)
    log_a0 = torch.logaddexp(c0, c4)
    log_a1 = torch.logaddexp(c1, c3)
    w = math.log(2) + c2 - log_a0  # log A(2) / A(0), at most 0
    g = _codewords(sigma.device, sigma.dtype).T  # (24, 4096)
    even = torch.logsumexp(w @ g, dim=-1) - math.log(2)
    zero = _log_tanh((c0 - c4) / 2).sum(-1) - math.log(2)  # B(0) / A(0) = tanh((c0 - c4) / 2)
    odd_ratio = _log_tanh((c1 - c3) / 2).sum(-1).clamp(max=-1e-7)  # prod B(1) / A(1)
    odd = math.log(2048) + (log_a1 - log_a0).sum(-1) + _log1mexp(odd_ratio)
    return log_a0.sum(-1) + torch.logsumexp(torch.stack([even, zero, odd], -1), dim=-1)


def leech_log_prob_centred(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Natural log of P(x) under the prior centred on the origin (see above)."""
    return -((x / sigma) ** 2).sum(-1) / 2 - leech_log_partition_centred(sigma)
