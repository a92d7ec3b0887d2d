"""The full Leech lattice under its exact Gaussian prior (docs/design.md sections 3 and 5)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lsq.codec import tables
from lsq.codec.entropy_coding import Decoder, Encoder, LeechCoder, mean_index, scale_index
from lsq.codec.lattice_prior import leech_log_prob, leech_log_prob_centred
from lsq.codec.leech import compiled_nearest
from lsq.codec.quantizers import BLOCK, LEECH_UNIT_STEP, LeechQuantizer, from_blocks, to_blocks
from lsq.models.latent_codecs.base import SCALE_BOUND, LatentCodec, as_numpy, spread

#: Companding: how the lattice step adapts to the predicted scales. "none": one step
#: everywhere; "block": one learned factor per block, from the mean of its 24 scales;
#: "coordinate": one per coordinate, from its own scale (a diagonal rescaling of Λ24).
COMPANDING = ("none", "block", "coordinate")
#: Bucket bounds of the predicted scale (half-octaves from 1/8 to 16): a factor per bucket.
COMPAND_BOUNDS = tuple(2.0 ** (k / 2) for k in range(-6, 9))
#: Range of the learned factors, and the grid coding rounds them to (exact in float64).
COMPAND_RANGE = (1 / 16, 16.0)
COMPAND_GRID = 256


def latent_blocks(t: torch.Tensor) -> torch.Tensor:
    """(M, H, W) -> (M/24 * H * W, 24): one latent's blocks, flattened in order."""
    return to_blocks(t[None]).reshape(-1, BLOCK)


def latent_from_blocks(b: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    m, h, w = shape
    return from_blocks(b.reshape(1, m // BLOCK, h, w, BLOCK))[0]


class LeechLatentCodec(LatentCodec):
    """Blocks of 24 channels quantized on Λ24 with step ``LEECH_UNIT_STEP`` (unit density).

    ``params`` = (scales, means), M channels each. With ``mean_shift`` (the default) the
    lattice is anchored at the predicted mean: (y - mu) / step is quantized and mu added back,
    so the prior is centred on a lattice point and its partition function takes the fast
    centred form. Without it the lattice is anchored at the origin and the prior's mean is
    mu / step (the general form, 8,192 cosets). Either way the rate is -log2 P of a lattice
    point (straight-through), never of a noisy value: the prior is a pmf. The point is the
    one (y - anchor) / step snaps to, or under the proxies ``dither`` and ``dither-rate`` the
    one it snaps to after a dither uniform over the Voronoi cell (``quantizers.dithered``).

    With ``compand`` ("block" or "coordinate") the step is ``LEECH_UNIT_STEP`` times a learned
    factor of the bucket that the predicted scale falls in (LVQAC's adaptive companding,
    Zhang & Wu 2023). The lattice is rescaled, block by block or coordinate by coordinate,
    and the prior rescaled with it (sigma / step), so it stays exact (docs/design.md
    section 4). The factor is a function of the integer-exact scales alone: no bits, and the
    decoder computes it too. Coding rounds the factors to 1 / ``COMPAND_GRID``.
    """

    name = "leech"
    planes = (24, 24)
    rate_functions = ("log_prob", "log_prob_centred")
    log_prob = staticmethod(leech_log_prob)
    log_prob_centred = staticmethod(leech_log_prob_centred)

    def __init__(self, M: int, proxy: str = "mixed", mean_shift: bool = True,
                 compand: str = "none") -> None:
        super().__init__(M, proxy)
        if compand not in COMPANDING:
            raise ValueError(f"unknown companding {compand!r}; expected one of {COMPANDING}")
        self.mean_shift, self.compand = mean_shift, compand
        self.quantizer = LeechQuantizer()
        if compand != "none":
            self.compand_offsets = nn.Parameter(torch.zeros(len(COMPAND_BOUNDS) + 1))

    def steps(self, scales: torch.Tensor, coding: bool = False) -> torch.Tensor:
        """The lattice step of each block (..., 1) or coordinate (..., 24), given the
        bounded scales (..., 24). ``coding``: the factors on their coding grid, float64."""
        shape = (*scales.shape[:-1], BLOCK if self.compand == "coordinate" else 1)
        if self.compand == "none":
            step = torch.tensor(LEECH_UNIT_STEP, dtype=scales.dtype, device=scales.device)
            return step.expand(shape)
        key = scales.mean(-1, keepdim=True) if self.compand == "block" else scales
        bounds = torch.tensor(COMPAND_BOUNDS, dtype=key.dtype, device=key.device)
        bucket = torch.bucketize(key.contiguous(), bounds, right=True)
        factor = (1 + self.compand_offsets).clamp(*COMPAND_RANGE)
        if coding:
            factor = torch.round(factor.detach().cpu().double() * COMPAND_GRID) / COMPAND_GRID
        return LEECH_UNIT_STEP * factor.to(key.dtype).to(key.device)[bucket]

    def compile_rate(self, backend: str = "inductor") -> None:
        """The prior, and the lattice search of the training proxy as well."""
        super().compile_rate(backend)
        self.quantizer = LeechQuantizer(compiled_nearest(backend))

    def forward(self, y: torch.Tensor, params: torch.Tensor
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        scales, means = (to_blocks(p) for p in params.chunk(2, 1))
        scales = scales.clamp(min=SCALE_BOUND)
        step = self.steps(scales.detach())
        anchor = means if self.mean_shift else torch.zeros_like(means)
        p = self.quantizer.proxy(to_blocks(y) - anchor, step, self.training_proxy())
        sigma = scales / step
        if self.mean_shift:
            log_p = self.log_prob_centred(p.rate_input, sigma)
        else:
            log_p = self.log_prob(p.rate_input, means / step, sigma)
        return from_blocks(p.recon + anchor), {"y": spread(log_p)}

    def coding_parameters(self, params: torch.Tensor
                          ) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
        """What ``LeechCoder`` codes the blocks under, from integer-exact hyper outputs
        (C, H, W): scale indices into ``THETA_SCALES`` and means in 1 / MEAN_GRID units,
        both in the integer frame (means all 0 when mean-shifted), and the lattice steps
        (n, 1) or (n, 24), float64 on the CPU."""
        scales, means = (latent_blocks(p.to(torch.float64).cpu()) for p in params.chunk(2, 0))
        scales = scales.clamp(min=SCALE_BOUND)
        step = self.steps(scales, coding=True)
        s = scale_index(as_numpy(scales / step), tables.theta_tables())
        if self.mean_shift:
            return s, np.zeros_like(s), step
        return s, mean_index(as_numpy(means / step)), step

    def anchor(self, params: torch.Tensor) -> torch.Tensor:
        """Blocks (n, 24) of the point the lattice is anchored at, float64 on the CPU."""
        means = latent_blocks(params[self.M :].to(torch.float64).cpu())
        return means if self.mean_shift else torch.zeros_like(means)

    def code(self, params: torch.Tensor, enc: Encoder | None = None,
             dec: Decoder | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
        s, mq, step = self.coding_parameters(params)
        blocks = latent_blocks(y) if enc is not None else None
        recon = self.code_blocks(s, mq, step, self.anchor(params), enc, dec, blocks)
        return latent_from_blocks(recon, torch.Size((self.M, *params.shape[1:])))

    def code_blocks(self, s: np.ndarray, mq: np.ndarray, step: torch.Tensor,
                    anchor: torch.Tensor, enc: Encoder | None = None,
                    dec: Decoder | None = None, blocks: torch.Tensor | None = None
                    ) -> torch.Tensor:
        """Encode ``blocks`` (n, 24) or decode n blocks under ``coding_parameters`` rows s,
        mq, step and the anchor's rows; returns the reconstructed blocks, float64."""
        if enc is not None:
            # The eager search in float32, five times faster than in float64 on the CPU: the
            # decoder never repeats it, so a point off by a float32 rounding near a Voronoi
            # boundary is still a lattice point, coded and decoded exactly.
            points = self.quantizer.symbols((blocks - anchor).float(), step.float()).numpy()
            LeechCoder().encode(enc, points, s, mq)
        else:
            points = LeechCoder().decode(dec, s, mq)
        return self.quantizer.reconstruct(torch.from_numpy(points), step) + anchor
