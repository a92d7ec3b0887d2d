"""The full Leech lattice under its exact Gaussian prior (docs/design.md sections 3 and 5)."""

from __future__ import annotations

import numpy as np
import torch

from lsq.codec import tables
from lsq.codec.entropy_coding import Decoder, Encoder, LeechCoder, mean_index, scale_index
from lsq.codec.lattice_prior import leech_log_prob, leech_log_prob_centred
from lsq.codec.leech import compiled_nearest
from lsq.codec.quantizers import BLOCK, LEECH_UNIT_STEP, LeechQuantizer, from_blocks, to_blocks
from lsq.models.latent_codecs.base import SCALE_BOUND, LatentCodec, as_numpy, spread


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
    mu / step (the general form, 8,192 cosets). Either way the rate is -log2 P of the lattice
    point itself (straight-through), never of a noisy value: the prior is a pmf.
    """

    name = "leech"
    planes = (24, 24)
    rate_functions = ("log_prob", "log_prob_centred")
    log_prob = staticmethod(leech_log_prob)
    log_prob_centred = staticmethod(leech_log_prob_centred)

    def __init__(self, M: int, proxy: str = "mixed", mean_shift: bool = True) -> None:
        super().__init__(M, proxy)
        self.mean_shift = mean_shift
        self.quantizer = LeechQuantizer()

    def compile_rate(self, backend: str = "inductor") -> None:
        """The prior, and the lattice search of the training proxy as well."""
        super().compile_rate(backend)
        self.quantizer = LeechQuantizer(compiled_nearest(backend))

    def forward(self, y: torch.Tensor, params: torch.Tensor
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        scales, means = (to_blocks(p) for p in params.chunk(2, 1))
        anchor = means if self.mean_shift else torch.zeros_like(means)
        p = self.quantizer.proxy(to_blocks(y) - anchor, LEECH_UNIT_STEP, self.training_proxy())
        sigma = scales.clamp(min=SCALE_BOUND) / LEECH_UNIT_STEP
        if self.mean_shift:
            log_p = self.log_prob_centred(p.rate_input, sigma)
        else:
            log_p = self.log_prob(p.rate_input, means / LEECH_UNIT_STEP, sigma)
        return from_blocks(p.recon + anchor), {"y": spread(log_p)}

    def coding_parameters(self, params: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """What ``LeechCoder`` codes the blocks under, from integer-exact hyper outputs
        (C, H, W): scale indices into ``THETA_SCALES`` and means in 1 / MEAN_GRID units,
        both in the integer frame (means all 0 when mean-shifted)."""
        scales, means = (as_numpy(latent_blocks(p.to(torch.float64))) for p in params.chunk(2, 0))
        s = scale_index(scales.clip(min=SCALE_BOUND) / LEECH_UNIT_STEP, tables.theta_tables())
        if self.mean_shift:
            return s, np.zeros_like(s)
        return s, mean_index(means / LEECH_UNIT_STEP)

    def anchor(self, params: torch.Tensor) -> torch.Tensor:
        """Blocks (n, 24) of the point the lattice is anchored at, float64 on the CPU."""
        means = latent_blocks(params[self.M :].to(torch.float64).cpu())
        return means if self.mean_shift else torch.zeros_like(means)

    def code(self, params: torch.Tensor, enc: Encoder | None = None,
             dec: Decoder | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
        s, mq = self.coding_parameters(params)
        blocks = latent_blocks(y) if enc is not None else None
        recon = self.code_blocks(s, mq, self.anchor(params), enc, dec, blocks)
        return latent_from_blocks(recon, torch.Size((self.M, *params.shape[1:])))

    def code_blocks(self, s: np.ndarray, mq: np.ndarray, anchor: torch.Tensor,
                    enc: Encoder | None = None, dec: Decoder | None = None,
                    blocks: torch.Tensor | None = None) -> torch.Tensor:
        """Encode ``blocks`` (n, 24) or decode n blocks under ``coding_parameters`` rows s, mq
        and the anchor's rows; returns the reconstructed blocks, float64."""
        step = torch.tensor(LEECH_UNIT_STEP, dtype=torch.float64)
        if enc is not None:
            # The eager search in float32, five times faster than in float64 on the CPU: the
            # decoder never repeats it, so a point off by a float32 rounding near a Voronoi
            # boundary is still a lattice point, coded and decoded exactly.
            points = self.quantizer.symbols((blocks - anchor).float(), step.float()).numpy()
            LeechCoder().encode(enc, points, s, mq)
        else:
            points = LeechCoder().decode(dec, s, mq)
        return self.quantizer.reconstruct(torch.from_numpy(points), step) + anchor
