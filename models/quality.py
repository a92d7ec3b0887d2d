"""Continuous quality: gain vectors on the latent (Cui et al., CVPR 2021).

A quality q in [1, 8] selects lambda and a pair of gain vectors: the latent is multiplied by
g(q) before quantization and the decoded latent by g'(q) after (asymmetric gains). Integer
qualities are CompressAI's lambda table; between them lambda is interpolated geometrically
and the gains linearly, both in training and in coding. A model covers the integer qualities
``low..high``; a fixed-rate model has ``low == high``.

Qualities travel in streams in steps of 1 / QUALITY_STEPS, and coding uses gains frozen by
``update()`` and interpolated in float64 with exact weights, so the decoder's inverse gain is
bit-identical on any machine.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lsq.codec.bitstream import QUALITY_STEPS

LAMBDAS = (0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483, 0.0932, 0.1800)
MIN_QUALITY, MAX_QUALITY = 1, len(LAMBDAS)
#: Initial gain per integer quality step: the grid shrinks by sqrt(2) per quality.
GAIN_PER_QUALITY = math.sqrt(2.0)
INIT_GAIN_QUALITY = 3  # the quality whose initial gain is 1


def snap_quality(q: float) -> float:
    """q rounded to the stream's resolution (1/256)."""
    return round(q * QUALITY_STEPS) / QUALITY_STEPS


def lmbda(q: torch.Tensor | float) -> torch.Tensor:
    """The rate-distortion weight of quality q: CompressAI's table, geometric in between."""
    q = torch.as_tensor(q, dtype=torch.float64)
    log_l = torch.log(torch.tensor(LAMBDAS, dtype=torch.float64, device=q.device))
    lo = q.floor().clamp(MIN_QUALITY, MAX_QUALITY - 1).long() - MIN_QUALITY
    t = q - MIN_QUALITY - lo
    return torch.exp(log_l[lo] * (1 - t) + log_l[lo + 1] * t)


class QualityGains(nn.Module):
    """Learned gains g_k and inverse gains g'_k (M each) for the integer qualities low..high."""

    def __init__(self, M: int, low: int = MIN_QUALITY, high: int = MAX_QUALITY) -> None:
        if not MIN_QUALITY <= low <= high <= MAX_QUALITY:
            raise ValueError(f"quality range {low}..{high} outside {MIN_QUALITY}..{MAX_QUALITY}")
        super().__init__()
        self.low, self.high = low, high
        k = torch.arange(low, high + 1, dtype=torch.float32) - INIT_GAIN_QUALITY
        init = (k * math.log(GAIN_PER_QUALITY))[:, None].expand(-1, M).clone()
        self.log_gain = nn.Parameter(init)
        self.log_inv_gain = nn.Parameter(-init)
        # What coding uses, frozen by update(): no exp() at coding time.
        self.register_buffer("coding_gain", torch.ones(high - low + 1, M))
        self.register_buffer("coding_inv_gain", torch.ones(high - low + 1, M))

    def check(self, q: float) -> float:
        """q snapped to the stream's resolution; ValueError outside this model's range."""
        if not (isinstance(q, int | float) and math.isfinite(q) and self.low <= q <= self.high):
            raise ValueError(f"quality {q} outside this model's range {self.low}..{self.high}")
        return snap_quality(q)

    def sample(self, n: int, device: torch.device) -> torch.Tensor:
        """n qualities drawn uniformly over the model's range (training)."""
        return self.low + (self.high - self.low) * torch.rand(n, device=device)

    def _interpolate(self, table: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """Rows (B, M) of ``table`` (one per integer quality) interpolated linearly at q (B,),
        in ``table``'s dtype; for a quality that is a multiple of 1/256 the weights are exact."""
        lo = (q.floor().clamp(self.low, max(self.high - 1, self.low)) - self.low).long()
        hi = (lo + 1).clamp(max=self.high - self.low)
        t = (q - self.low - lo).to(table.dtype)[:, None]
        return table[lo] * (1 - t) + table[hi] * t

    def forward(self, q: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        """Gains (B, M, 1, 1) for qualities q (B,), differentiable (training)."""
        gains = (self.log_inv_gain if inverse else self.log_gain).exp()
        return self._interpolate(gains, q)[:, :, None, None]

    def coding(self, q: float, inverse: bool = False) -> torch.Tensor:
        """Frozen gains (M, 1, 1) in float64 on the CPU for a snapped quality q."""
        table = (self.coding_inv_gain if inverse else self.coding_gain).to("cpu", torch.float64)
        return self._interpolate(table, torch.tensor([q], dtype=torch.float64))[0, :, None, None]

    def update(self) -> None:
        self.coding_gain.copy_(self.log_gain.detach().exp())
        self.coding_inv_gain.copy_(self.log_inv_gain.detach().exp())
