"""Mean-scale hyperprior codecs whose latent quantizer is a parameter.

Ballé et al. 2018 with Minnen et al.'s mean prediction (no context model); the latent
y (M channels) is cut into 24-dimensional blocks of 24 consecutive channels at one
position. Quantizers: ``scalar`` (CompressAI's Gaussian conditional), ``bsq``,
``leech`` (exact lattice prior of ``lsq.codec.lattice_prior``) and ``spherical-leech``
(exact first-shell prior of ``lsq.codec.shell_prior`` for the direction, times a gain).
Following CompressAI, ``forward`` returns ``x_hat`` and ``likelihoods``; for block
quantizers the likelihood of a block is spread evenly over its 24 coordinates
(P ** (1/24) each), so that ``-sum(log2(likelihoods))`` is the exact rate in bits.
"""

from __future__ import annotations

import math

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.layers import GDN
from compressai.models import CompressionModel
from compressai.models.utils import conv, deconv
from torch import nn

from lsq.codec.lattice_prior import leech_log_prob
from lsq.codec.quantizers import (
    BLOCK,
    LEECH_UNIT_STEP,
    BSQQuantizer,
    LeechQuantizer,
    ScalarQuantizer,
    SphericalLeechQuantizer,
    from_blocks,
    to_blocks,
)
from lsq.codec.shell_prior import shell_log_prob
from lsq.models import latent_coding
from lsq.models.latent_coding import SCALE_BOUND

QUANTIZERS = ("scalar", "bsq", "leech", "spherical-leech")
LIKELIHOOD_BOUND = 1e-9


def spread(log_p_blocks: torch.Tensor) -> torch.Tensor:
    """Per-block log-probabilities (B, K, H, W) -> per-coordinate likelihoods (B, 24K, H, W).

    Floored at LIKELIHOOD_BOUND like CompressAI's likelihoods, but with the gradient kept
    (as CompressAI's LowerBound does for upward pushes), so early training cannot stall.
    """
    per_coord = log_p_blocks / BLOCK
    floored = per_coord + (per_coord.clamp(min=math.log(LIKELIHOOD_BOUND)) - per_coord).detach()
    return from_blocks(torch.exp(floored).unsqueeze(-1).expand(*log_p_blocks.shape, BLOCK))


class LsqHyperprior(CompressionModel):
    """Hyperprior codec with a choice of latent quantizer."""

    def __init__(self, quantizer: str = "leech", N: int = 128, M: int = 192,
                 proxy: str = "mixed") -> None:
        if quantizer not in QUANTIZERS:
            raise ValueError(f"unknown quantizer {quantizer!r}; expected one of {QUANTIZERS}")
        if M % BLOCK:
            raise ValueError(f"M must be a multiple of {BLOCK}, got {M}")
        super().__init__()
        self.quantizer, self.N, self.M, self.proxy = quantizer, N, M, proxy
        self.entropy_bottleneck = EntropyBottleneck(N)
        self.g_a = nn.Sequential(
            conv(3, N), GDN(N), conv(N, N), GDN(N), conv(N, N), GDN(N), conv(N, M)
        )
        self.g_s = nn.Sequential(
            deconv(M, N), GDN(N, inverse=True), deconv(N, N), GDN(N, inverse=True),
            deconv(N, N), GDN(N, inverse=True), deconv(N, 3),
        )
        self.h_a = nn.Sequential(
            conv(M, N, stride=1, kernel_size=3), nn.LeakyReLU(inplace=True),
            conv(N, N), nn.LeakyReLU(inplace=True), conv(N, N),
        )
        self.h_s = nn.Sequential(
            deconv(N, M), nn.ReLU(inplace=True),
            deconv(M, M * 3 // 2), nn.ReLU(inplace=True),
            conv(M * 3 // 2, self.hyper_channels, stride=1, kernel_size=3),
        )
        if quantizer in ("scalar", "spherical-leech"):
            self.gaussian_conditional = GaussianConditional(None, scale_bound=SCALE_BOUND)
        if quantizer == "leech":
            self.log_step = nn.Parameter(torch.tensor(math.log(LEECH_UNIT_STEP)))
        if quantizer == "spherical-leech":
            self.log_gain_step = nn.Parameter(torch.tensor(0.0))
        # The step the coder uses, frozen by update(): no exp() at coding time.
        self.register_buffer("coding_step", torch.ones(()))

    def update(self, scale_table=None, force: bool = False, update_quantiles: bool = False) -> bool:
        """CompressAI's update, plus freezing the coder's step from its learned logarithm."""
        log_step = getattr(self, "log_step", getattr(self, "log_gain_step", None))
        if log_step is not None:
            self.coding_step.fill_(float(log_step.detach().exp()))
        return super().update(scale_table, force=force, update_quantiles=update_quantiles)

    def compress(self, x: torch.Tensor) -> dict:
        """CompressAI's contract: {"strings": [y_strings, z_strings], "shape": z size}."""
        y = self.g_a(x)
        z = self.h_a(y)
        y_strings, z_strings = [], []
        for yi, zi in zip(y, z, strict=True):
            z_string, z_hat = latent_coding.encode_z(self.entropy_bottleneck, zi)
            params = latent_coding.integer_hyper_decode(self.h_s, z_hat.unsqueeze(0))[0]
            y_strings.append(latent_coding.encode_y(self, yi, params))
            z_strings.append(z_string)
        return {"strings": [y_strings, z_strings], "shape": tuple(z.shape[-2:])}

    def decompress(self, strings: list[list[bytes]], shape: tuple[int, int]) -> dict:
        """Inverse of :meth:`compress`; the hyper path is bit-exact on any device."""
        y_hat = torch.stack(self.decompress_latents(strings, shape)).to(torch.float64)
        weights = {k: v.to(torch.float64) for k, v in self.g_s.state_dict().items()}
        # float64 synthesis: rounding to 8 bits then gives the same pixels whatever the
        # thread count or device (float32 flips a few values between 1 and 2 CPU threads)
        x_hat = torch.func.functional_call(self.g_s, weights, (y_hat,))
        return {"x_hat": x_hat.clamp(0, 1).to(torch.float32)}

    def decompress_latents(self, strings: list[list[bytes]],
                           shape: tuple[int, int]) -> list[torch.Tensor]:
        """The decoded latents y_hat (float64, one per image): what must agree bit for bit
        wherever a stream is decoded, before the float synthesis transform."""
        device = next(self.parameters()).device
        y_hats = []
        for y_string, z_string in zip(*strings, strict=True):
            z_hat = latent_coding.decode_z(self.entropy_bottleneck, z_string,
                                           (self.N, *shape), device)
            params = latent_coding.integer_hyper_decode(self.h_s, z_hat.unsqueeze(0))[0]
            y_hats.append(latent_coding.decode_y(self, y_string, params).to(device))
        return y_hats

    @property
    def hyper_channels(self) -> int:
        """Channels of h_s: (scale, mean) per coordinate, bits' logits for BSQ, plus gains."""
        if self.quantizer == "bsq":
            return self.M
        if self.quantizer == "spherical-leech":
            return 2 * self.M + 2 * (self.M // BLOCK)
        return 2 * self.M

    def forward(self, x: torch.Tensor) -> dict:
        y = self.g_a(x)
        z = self.h_a(y)
        z_hat, z_likelihoods = self.entropy_bottleneck(z)
        params = self.h_s(z_hat)
        y_hat, likelihoods = self.quantize_latent(y.float(), params.float())
        x_hat = self.g_s(y_hat)
        return {"x_hat": x_hat, "likelihoods": {"z": z_likelihoods, **likelihoods}}

    def quantize_latent(self, y: torch.Tensor, params: torch.Tensor
                        ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training proxy (or hard quantization in eval mode) of y and its likelihoods."""
        kind = self.proxy if self.training else "ste"
        if self.quantizer == "scalar":
            scales, means = params.chunk(2, 1)
            p = ScalarQuantizer().proxy(y, means, kind)
            return p.recon, {"y": self.gaussian_likelihood(p.rate_input, scales, means)}
        if self.quantizer == "bsq":
            p = BSQQuantizer().proxy(to_blocks(y))
            logits = to_blocks(params)
            signs = 2 * (p.recon > 0).to(logits.dtype) - 1
            return from_blocks(p.recon), {"y": from_blocks(torch.sigmoid(signs * logits))}
        if self.quantizer == "leech":
            scales, means = params.chunk(2, 1)
            step = self.log_step.exp()
            p = LeechQuantizer().proxy(to_blocks(y), step, kind)
            sigma = to_blocks(scales).clamp(min=SCALE_BOUND) / step
            log_p = leech_log_prob(p.rate_input, to_blocks(means) / step, sigma)
            return from_blocks(p.recon), {"y": spread(log_p)}
        k = self.M // BLOCK
        scales, means, gain_params = params.split([self.M, self.M, 2 * k], dim=1)
        gain_step = self.log_gain_step.exp()
        direction, gain = SphericalLeechQuantizer().proxy(to_blocks(y), gain_step, kind)
        log_p = shell_log_prob(direction.rate_input, to_blocks(means),
                               to_blocks(scales).clamp(min=SCALE_BOUND))
        gain_scale, gain_mean = gain_params.chunk(2, 1)
        gain_lik = self.gaussian_likelihood(gain.rate_input.squeeze(-1), gain_scale, gain_mean)
        return from_blocks(direction.recon), {"y": spread(log_p), "gain": gain_lik}

    def gaussian_likelihood(self, values: torch.Tensor, scales: torch.Tensor,
                            means: torch.Tensor) -> torch.Tensor:
        """CompressAI's unit-bin Gaussian likelihood, scale and likelihood bounded."""
        gc = self.gaussian_conditional
        lik = gc._likelihood(values, gc.lower_bound_scale(scales), means)
        return gc.likelihood_lower_bound(lik)


def build_model(quantizer: str, N: int = 128, M: int = 192, proxy: str = "mixed") -> LsqHyperprior:
    """The registry's and the trainer's single way to construct a model."""
    return LsqHyperprior(quantizer, N=N, M=M, proxy=proxy)
