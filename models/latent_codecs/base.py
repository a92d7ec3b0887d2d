"""The interface every latent codec implements (CompressAI's ``LatentCodec`` idea).

A latent codec owns one way of quantizing and coding the latent y (M channels) given the
hyper-decoder's output ``params``: its training forward (proxy and likelihoods), its exact
``compress``/``decompress`` given integer-exact ``params``, and how many channels of
``params`` it needs. The hyperprior model holds one and knows nothing quantizer-specific.

Variable rate happens outside the codec: the model hands it y already multiplied by the
quality's gains, so a codec always works on a fixed grid (a gain is a rescaled lattice).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from lsq.codec.entropy_coding import Decoder, Encoder
from lsq.codec.quantizers import BLOCK, PROXIES, from_blocks
from lsq.models.layers import LowerBoundFunction

LIKELIHOOD_BOUND = 1e-9
SCALE_BOUND = 0.11  # smallest scale, as CompressAI bounds its Gaussian conditional


def spread(log_p_blocks: torch.Tensor) -> torch.Tensor:
    """Per-block log-probabilities (B, K, H, W) -> per-coordinate likelihoods (B, 24K, H, W).

    For block quantizers the likelihood of a block is spread evenly over its 24 coordinates
    (P ** (1/24) each), so that ``-sum(log2(likelihoods))`` is the exact rate in bits.
    Floored at LIKELIHOOD_BOUND like CompressAI's likelihoods, but with the gradient kept
    (as CompressAI's LowerBound does for upward pushes), so early training cannot stall.
    """
    per_coord = log_p_blocks / BLOCK
    floored = per_coord + (per_coord.clamp(min=math.log(LIKELIHOOD_BOUND)) - per_coord).detach()
    return from_blocks(torch.exp(floored).unsqueeze(-1).expand(*log_p_blocks.shape, BLOCK))


def lower_bound(x: torch.Tensor, bound: float) -> torch.Tensor:
    """max(x, bound), letting through the gradients that push x up (CompressAI's LowerBound)."""
    return LowerBoundFunction.apply(x, torch.tensor(bound, dtype=x.dtype, device=x.device))


def gaussian_likelihood(values: torch.Tensor, scales: torch.Tensor,
                        means: torch.Tensor) -> torch.Tensor:
    """Unit-bin Gaussian likelihood: CompressAI's formula, scale and likelihood bounds."""
    scales = lower_bound(scales, SCALE_BOUND) * math.sqrt(2)
    v = (values - means).abs()
    lik = 0.5 * (torch.erfc((v - 0.5) / scales) - torch.erfc((v + 0.5) / scales))
    return lower_bound(lik, LIKELIHOOD_BOUND)


class LatentCodec(nn.Module):
    """Quantization, training likelihoods and exact coding of a latent of M channels."""

    #: The name models and weight files use for this codec.
    name: str = ""
    #: Whether quality gains change the rate (False: the codec ships as fixed-rate models).
    variable_rate: bool = True
    #: ``params`` per 24-channel block, plane by plane: (24, 24) = a scale and a mean per
    #: channel. Each plane is laid out block after block (``params[:M]`` = all the scales).
    planes: tuple[int, ...] = ()
    #: Attributes holding the pure-tensor functions of the training rate (``compile_rate``).
    rate_functions: tuple[str, ...] = ()
    #: The training proxies this codec takes (the dithers need a lattice quantizer).
    proxies: tuple[str, ...] = PROXIES

    def __init__(self, M: int, proxy: str = "mixed") -> None:
        if M % BLOCK:
            raise ValueError(f"M must be a multiple of {BLOCK}, got {M}")
        if proxy not in self.proxies:
            raise ValueError(f"{self.name} takes no training proxy {proxy!r}; expected one of "
                             f"{', '.join(self.proxies)}")
        super().__init__()
        self.M, self.proxy = M, proxy

    @property
    def hyper_channels(self) -> int:
        """Channels of the hyper-decoder output this codec reads."""
        return self.M // BLOCK * sum(self.planes)

    def forward(self, y: torch.Tensor, params: torch.Tensor
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(y_hat, likelihoods): the training proxy in train mode, hard quantization in eval."""
        raise NotImplementedError

    def update(self) -> None:
        """Freeze what coding needs from learned parameters (called by the model's update)."""

    def compress(self, y: torch.Tensor, params: torch.Tensor) -> bytes:
        """Code one latent y (M, H, W) given integer-exact hyper outputs (C, H, W)."""
        enc = Encoder()
        self.code(params, enc=enc, y=y.detach().to(torch.float64).cpu())
        return enc.finish()

    def decompress(self, data: bytes, params: torch.Tensor) -> torch.Tensor:
        """The decoded latent (M, H, W), float64 on the CPU, bit-identical on any machine."""
        return self.code(params, dec=Decoder(data))

    def code(self, params: torch.Tensor, enc: Encoder | None = None,
             dec: Decoder | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
        """The one place that defines the symbols and their models, for both directions:
        encodes y with ``enc`` or decodes with ``dec``; returns the reconstruction."""
        raise NotImplementedError

    def compile_rate(self, backend: str = "inductor") -> None:
        """torch.compile the training rate functions. The exact lattice priors are long chains
        of elementwise operations over every block, which compiling fuses (on the CPU the
        centred Leech prior's forward+backward ran 3.8x faster). Training only: coding uses
        tables, never these functions."""
        for name in self.rate_functions:
            setattr(self, name, _dense_inputs(torch.compile(getattr(self, name), backend=backend)))

    def training_proxy(self) -> str:
        return self.proxy if self.training else "ste"


def _dense_inputs(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``fn`` called with contiguous copies of its tensors. A compiled graph keeps the strides
    it was traced with, and a channel group's parameters are views whose strides change with
    the group (inductor's backward asserted 'stride 24576==12288' on the GPU)."""
    return lambda *tensors: fn(*(t.contiguous() for t in tensors))


def as_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()
