"""One interface for the four quantizers of the latent (docs/design.md section 4).

Every quantizer works on blocks: tensors of shape (..., 24) (scalar rounding works
elementwise but keeps the same shape). Each gives
- ``quantize``: the hard quantization, as the reconstruction the synthesis sees;
- ``proxy``: the training stand-in (``"ste"`` straight-through, ``"noise"`` additive noise
  uniform over the Voronoi cell, ``"mixed"`` noise for the rate, straight-through for the
  reconstruction; on the lattices, Z and Λ24, also ``"dither"``, subtractive dither for
  both, and ``"dither-rate"``, the dithered rate with the straight-through reconstruction);
- ``symbols`` / ``reconstruct``: the integers the entropy coder writes and their inverse.
Steps are in latent units; the Leech quantizers work in the integer frame (coordinates
multiplied by sqrt(8), minimal squared norm 32), so a step of 2**-1.5 gives the lattice
the same point density as unit scalar rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from lsq.codec import leech

BLOCK = 24
#: The proxies of the quantizers that are not lattices (subtractive dither needs one).
UNDITHERED_PROXIES = ("ste", "noise", "mixed")
DITHERS = ("dither", "dither-rate")
PROXIES = UNDITHERED_PROXIES + DITHERS
#: Step that gives the integer-frame Leech lattice (volume 8**12) unit density per dimension.
LEECH_UNIT_STEP = 0.3535533905932738  # 2 ** -1.5 (0x1.6a09e667f3bcdp-2), the same float everywhere
SHELL_NORM = math.sqrt(32.0)


def to_blocks(y: torch.Tensor) -> torch.Tensor:
    """(B, M, H, W) -> (B, M/24, H, W, 24): blocks of 24 consecutive channels."""
    b, m, h, w = y.shape
    return y.reshape(b, m // BLOCK, BLOCK, h, w).permute(0, 1, 3, 4, 2)


def from_blocks(blocks: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_blocks`."""
    b, k, h, w, _ = blocks.shape
    return blocks.permute(0, 1, 4, 2, 3).reshape(b, k * BLOCK, h, w)


class Proxy(NamedTuple):
    """What training uses: ``rate_input`` feeds the entropy model, ``recon`` the synthesis."""

    rate_input: torch.Tensor
    recon: torch.Tensor


def straight_through(x: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:
    """``hard`` in the forward pass, identity gradient to ``x`` in the backward pass."""
    return x + (hard - x).detach()


def leech_cell_noise(shape: torch.Size, device: torch.device, dtype: torch.dtype,
                     nearest: Callable[[torch.Tensor], torch.Tensor] = leech.nearest
                     ) -> torch.Tensor:
    """Noise uniform over the Voronoi cell of the integer-frame Leech lattice.

    8Z^24 is a sublattice, so u - Q(u) for u uniform over [0, 8)^24 is uniform over the cell.
    ``nearest`` is Q (a compiled search in training).
    """
    u = torch.rand(shape, device=device, dtype=torch.float64) * 8
    return (u - nearest(u).to(torch.float64)).to(dtype)


def _check_proxy(kind: str, accepted: tuple[str, ...] = PROXIES) -> None:
    if kind not in PROXIES:
        raise ValueError(f"unknown training proxy {kind!r}; expected one of {accepted}")
    if kind not in accepted:
        raise ValueError(f"training proxy {kind!r} needs a lattice; this quantizer takes "
                         f"{accepted}")


def dithered(v: torch.Tensor, u: torch.Tensor, point: torch.Tensor) -> Proxy:
    """The subtractive-dither proxy on a lattice L with quantizer Q, for v in lattice units.

    ``u`` is uniform over the Voronoi cell V and ``point`` = Q(v + u). The rate input is
    ``point``, straight-through to v + u: a lattice point, so the prior is evaluated as the
    pmf it is (never above 1, which a density taken at v + u can be), and the rate term is
    the code length of a subtractive-dither coder.
    Q(v + u) = p exactly when u lies in (p - v) + V, so its expectation over u,
    E_u[-log P(Q(v + u))] = sum over p in L of -log P(p) vol(V ∩ (V + p - v)) / vol(V),
    is an average of true code lengths whose weights (summing to 1) vary continuously with
    v, where -log P(Q(v)) jumps at every cell boundary. The reconstruction (``"dither"``) is
    point - u, straight-through to v: by the crypto lemma (v + u is uniform modulo L for
    every v), its error Q(v + u) - (v + u) is uniform over V and independent of v, the
    additive-noise model of ``"noise"``. ``"dither-rate"`` replaces it with the hard point
    Q(v), straight-through to v, so the rate term's effect is measured alone.
    """
    return Proxy(straight_through(v + u, point), straight_through(v, point - u))


class ScalarQuantizer:
    """Rounding around the predicted mean (the CompressAI baseline)."""

    def quantize(self, y: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
        return torch.round(y - means) + means

    def proxy(self, y: torch.Tensor, means: torch.Tensor, kind: str) -> Proxy:
        """The dithers quantize y - means on Z (:func:`dithered`): the unit-bin likelihood
        is then taken on an integer offset from the mean, a value of the pmf."""
        _check_proxy(kind)
        hard = straight_through(y, self.quantize(y, means))
        u = torch.empty_like(y).uniform_(-0.5, 0.5)
        if kind == "ste":
            return Proxy(hard, hard)
        if kind == "noise":
            return Proxy(y + u, y + u)
        if kind == "mixed":
            return Proxy(y + u, hard)
        p = dithered(y, u, self.quantize((y + u).detach(), means))
        return p if kind == "dither" else p._replace(recon=hard)

    def symbols(self, y: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
        return torch.round(y - means).to(torch.int64)

    def reconstruct(self, symbols: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
        return symbols.to(means.dtype) + means


class BSQQuantizer:
    """Binary spherical quantization: L2-normalize each block, take signs, scale 1/sqrt(L)."""

    def quantize(self, y: torch.Tensor) -> torch.Tensor:
        return self.reconstruct(self.symbols(y)).to(y.dtype)

    def proxy(self, y: torch.Tensor, kind: str = "ste") -> Proxy:
        """BSQ trains straight-through on the normalized block (Zhao et al. 2024)."""
        _check_proxy(kind, UNDITHERED_PROXIES)
        u = y / y.norm(dim=-1, keepdim=True).clamp(min=1e-6)
        hard = straight_through(u, self.quantize(y))
        return Proxy(hard, hard)

    def symbols(self, y: torch.Tensor) -> torch.Tensor:
        """Bits: 1 where the coordinate is non-negative."""
        return (y >= 0).to(torch.int64)

    def reconstruct(self, bits: torch.Tensor) -> torch.Tensor:
        return (2 * bits.to(torch.float32) - 1) / math.sqrt(BLOCK)


class LeechQuantizer:
    """Full Leech lattice on y / step (integer frame); the caller subtracts its anchor (the
    predicted mean, for the mean-shifted codec) first and adds it back after. ``nearest``
    serves the training proxy only (``leech.compiled_nearest`` when training compiles);
    symbols for coding always come from the eager ``leech.nearest``."""

    def __init__(self, nearest: Callable[[torch.Tensor], torch.Tensor] = leech.nearest) -> None:
        self.nearest = nearest

    def quantize(self, y: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        return self.reconstruct(self.symbols(y, step), step).to(y.dtype)

    def proxy(self, y: torch.Tensor, step: torch.Tensor | float, kind: str) -> Proxy:
        """``rate_input`` is always a lattice point, straight-through (in lattice units).

        The exact prior is a pmf on the lattice: evaluated off the lattice it is unbounded
        (a point near the mean, between lattice points, gets P > 1 as sigma shrinks), and
        training exploits that. For ``ste``, ``noise`` and ``mixed`` the point is the one
        y / step snaps to, and ``kind`` only chooses the reconstruction: that point (``ste``,
        ``mixed``) or y plus noise uniform over the Voronoi cell (``noise``). The dithers
        (:func:`dithered`) take the point that y / step plus that noise snaps to.
        """
        _check_proxy(kind)
        v = y / step
        if kind in DITHERS:
            u = leech_cell_noise(v.shape, v.device, v.dtype, self.nearest)
            p = dithered(v, u, self.nearest((v + u).detach()).to(v.dtype))
            if kind == "dither-rate":
                p = p._replace(recon=self._hard(v))
            return Proxy(p.rate_input, p.recon * step)
        hard = self._hard(v)
        if kind == "noise":
            u = leech_cell_noise(v.shape, v.device, v.dtype, self.nearest)
            return Proxy(hard, (v + u) * step)
        return Proxy(hard, hard * step)

    def _hard(self, v: torch.Tensor) -> torch.Tensor:
        """Q(v), straight-through to v."""
        return straight_through(v, self.nearest(v.detach()).to(v.dtype))

    def symbols(self, y: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        return leech.nearest((y / step).detach())

    def reconstruct(self, points: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        return points.to(step.dtype) * step


class SphericalLeechQuantizer:
    """Gain times a first-shell direction (Lambda24-SQ of Zhao et al. 2025).

    The direction is the first-shell point of largest inner product; the gain
    ||y|| is rounded on a grid of ``gain_step``. ``nearest_shell`` serves the training proxy
    only (``leech.compiled_nearest_shell`` when training compiles); symbols for coding always
    come from the eager ``leech.nearest_shell``.
    """

    def __init__(self, nearest_shell: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
                 = leech.nearest_shell) -> None:
        self.nearest_shell = nearest_shell

    def quantize(self, y: torch.Tensor, gain_step: torch.Tensor) -> torch.Tensor:
        points, gains = self.symbols(y, gain_step)
        return self.reconstruct(points, gains, gain_step).to(y.dtype)

    def proxy(self, y: torch.Tensor, gain_step: torch.Tensor, kind: str) -> tuple[Proxy, Proxy]:
        """(direction proxy in the integer frame, gain proxy in gain steps); recon in y units.

        As for the full lattice, the direction's rate is taken on the shell point itself;
        the gain is scalar, so ``noise`` and ``mixed`` give it uniform noise for the rate.
        A shell is no lattice, so the dithers are refused.
        """
        _check_proxy(kind, UNDITHERED_PROXIES)
        gain = y.norm(dim=-1, keepdim=True)
        u = y / gain.clamp(min=1e-6) * SHELL_NORM
        _, point = self.nearest_shell(u.detach())
        hard_dir = straight_through(u, point.to(u.dtype))
        g = gain / gain_step
        hard_gain = straight_through(g, torch.round(g))
        recon = hard_dir / SHELL_NORM * hard_gain * gain_step
        if kind == "ste":
            return Proxy(hard_dir, recon), Proxy(hard_gain, recon)
        noisy_gain = g + torch.empty_like(g).uniform_(-0.5, 0.5)
        return Proxy(hard_dir, recon), Proxy(noisy_gain, recon)

    def symbols(
        self, y: torch.Tensor, gain_step: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(first-shell points (..., 24), gain indices (..., 1))."""
        gain = y.norm(dim=-1, keepdim=True)
        _, point = leech.nearest_shell(y.detach())
        return point, torch.round(gain / gain_step).to(torch.int64)

    def reconstruct(
        self, points: torch.Tensor, gains: torch.Tensor, gain_step: torch.Tensor
    ) -> torch.Tensor:
        return points.to(gain_step.dtype) / SHELL_NORM * gains.to(gain_step.dtype) * gain_step
