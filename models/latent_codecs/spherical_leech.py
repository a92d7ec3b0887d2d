"""Λ24-SQ: a first-shell direction under its exact prior, times a quantized gain."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lsq.codec import tables
from lsq.codec.entropy_coding import Decoder, Encoder, mean_index, scale_index
from lsq.codec.leech import compiled_nearest_shell
from lsq.codec.quantizers import (
    BLOCK,
    UNDITHERED_PROXIES,
    SphericalLeechQuantizer,
    from_blocks,
    to_blocks,
)
from lsq.codec.shell_coding import ShellCoder
from lsq.codec.shell_prior import shell_log_prob
from lsq.models.latent_codecs.base import (
    SCALE_BOUND,
    LatentCodec,
    as_numpy,
    gaussian_likelihood,
    spread,
)
from lsq.models.latent_codecs.leech import latent_blocks, latent_from_blocks


class SphericalLeechLatentCodec(LatentCodec):
    """Spherical Leech quantization (Zhao et al. 2025): each block's direction snaps to the
    nearest of the 196,560 minimal vectors, coded under the exact first-shell prior
    (``lsq.codec.shell_prior``); its norm is rounded on a grid of a learned step and coded
    under a Gaussian.

    ``params`` = (scales, means) of the direction (M channels each, integer frame), then
    (scale, mean) of each block's gain (M / 24 channels each).
    """

    name = "spherical-leech"
    planes = (24, 24, 1, 1)
    rate_functions = ("log_prob", "gain_likelihood")
    log_prob = staticmethod(shell_log_prob)
    gain_likelihood = staticmethod(gaussian_likelihood)
    proxies = UNDITHERED_PROXIES

    def __init__(self, M: int, proxy: str = "mixed") -> None:
        super().__init__(M, proxy)
        self.log_gain_step = nn.Parameter(torch.tensor(0.0))
        # The step the coder uses, frozen by update(): no exp() at coding time.
        self.register_buffer("coding_step", torch.ones(()))
        self.quantizer = SphericalLeechQuantizer()

    def compile_rate(self, backend: str = "inductor") -> None:
        """The priors, and the first-shell search of the training proxy as well."""
        super().compile_rate(backend)
        self.quantizer = SphericalLeechQuantizer(compiled_nearest_shell(backend))

    def update(self) -> None:
        self.coding_step.fill_(float(self.log_gain_step.detach().exp()))

    def forward(self, y: torch.Tensor, params: torch.Tensor
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        k = self.M // BLOCK
        scales, means, gain_params = params.split([self.M, self.M, 2 * k], dim=1)
        direction, gain = self.quantizer.proxy(
            to_blocks(y), self.log_gain_step.exp(), self.training_proxy())
        log_p = self.log_prob(direction.rate_input, to_blocks(means),
                               to_blocks(scales).clamp(min=SCALE_BOUND))
        gain_scale, gain_mean = gain_params.chunk(2, 1)
        gain_lik = self.gain_likelihood(gain.rate_input.squeeze(-1), gain_scale, gain_mean)
        return from_blocks(direction.recon), {"y": spread(log_p), "gain": gain_lik}

    def code(self, params: torch.Tensor, enc: Encoder | None = None,
             dec: Decoder | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
        m, k = self.M, self.M // BLOCK
        params = params.to(torch.float64).cpu()
        scales, means = (as_numpy(latent_blocks(p)) for p in (params[:m], params[m : 2 * m]))
        s = scale_index(scales.clip(min=SCALE_BOUND), tables.theta_tables())
        mq = mean_index(means)
        gain_scale = as_numpy(params[2 * m : 2 * m + k]).reshape(-1)
        gain_mean = as_numpy(params[2 * m + k :]).reshape(-1)
        gauss = tables.gauss_tables()
        rows = scale_index(gain_scale.clip(min=SCALE_BOUND), gauss)
        centre = np.floor(gain_mean + 0.5).astype(np.int64)
        step = self.coding_step.to(torch.float64).cpu()
        coder = ShellCoder()
        if enc is not None:
            points_t, gains_t = self.quantizer.symbols(latent_blocks(y), step)
            points, gains = points_t.numpy(), gains_t.reshape(-1).numpy()
            coder.encode(enc, points, s, mq)
            enc.table_offsets(gains - centre, rows, gauss)
        else:
            points = coder.decode(dec, s, mq)
            gains = dec.table_offsets(rows, gauss) + centre
        recon = self.quantizer.reconstruct(torch.from_numpy(points),
                                           torch.from_numpy(gains)[:, None], step)
        return latent_from_blocks(recon, torch.Size((m, *params.shape[1:])))
