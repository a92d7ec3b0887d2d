"""Λ24 inside CompressAI models: the Leech quantizer, its exact prior and its exact coder
behind CompressAI's own interfaces.

Two entry points, one implementation:

- ``LeechGaussianConditional(M)`` takes the place of CompressAI's ``GaussianConditional`` in
  the models that call it directly, ``bmshj2018-hyperprior`` (``ScaleHyperprior``: scales
  only) and ``mbt2018-mean`` (``MeanScaleHyperprior``: scales and means); their
  ``forward``, ``compress`` and ``decompress`` then run unchanged::

      from compressai.models import MeanScaleHyperprior
      from lsq.models.compressai_adapter import LeechGaussianConditional

      net = MeanScaleHyperprior(N=128, M=192)            # M: a multiple of 24
      net.gaussian_conditional = LeechGaussianConditional(192)

- ``LeechConditionalLatentCodec(M)`` is a ``compressai.latent_codecs.LatentCodec``, the
  counterpart of ``GaussianConditionalLatentCodec`` (for example as the ``"y"`` codec of a
  ``HyperpriorLatentCodec``).

The latent is cut into blocks of 24 consecutive channels at one position; each block,
shifted by its predicted mean, is quantized to the nearest point of Λ24 (integer frame, step
``LEECH_UNIT_STEP``: one point per unit volume, as for CompressAI's rounding). Its
likelihood is the exact Gaussian probability mass of that lattice point (spread evenly over
the 24 channels, so ``-sum(log2(likelihoods))`` is the rate in bits, as CompressAI's losses
expect), and ``compress`` range-codes the point under that same model with scales quantized
to a fixed table, as CompressAI quantizes them to its scale table: the file size follows the
rate. In training the rate is taken on the lattice point (straight-through) and the
reconstruction follows ``proxy`` (``lsq.codec.quantizers``).

Decoding rebuilds the encoder's latent bit for bit when the decoder's ``h_s`` gives the
encoder's scales, which CompressAI's float ``h_s`` does on the same machine; only the scale
indices drive the coder (the means only shift the reconstruction), so across machines the
risk is CompressAI's own. lsq's models remove it with an integer hyper-decoder
(``lsq.models.latent_coding``). The lattice replaces the scalar Gaussian conditional: train
the model with it (zoo weights were trained for rounding, and their ``gaussian_conditional``
buffers must be dropped from the state dict).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from compressai.latent_codecs import LatentCodec
from torch import nn

from lsq.codec import tables
from lsq.codec.entropy_coding import Decoder, Encoder, LeechCoder, scale_index
from lsq.codec.lattice_prior import leech_log_prob_centred
from lsq.codec.quantizers import (
    BLOCK,
    LEECH_UNIT_STEP,
    PROXIES,
    LeechQuantizer,
    from_blocks,
    straight_through,
    to_blocks,
)
from lsq.models.latent_codecs.base import SCALE_BOUND, lower_bound, spread

CHUNKS = (("scales", "means"), ("means", "scales"), ("scales",))


class LeechGaussianConditional(nn.Module):
    """Drop-in for CompressAI's ``GaussianConditional`` that codes y (N, M, H, W) on Λ24.

    Same calls: ``forward(y, scales, means=None)`` -> (y_hat, likelihoods),
    ``build_indexes(scales)``, ``compress(y, indexes, means=None)`` -> one string per image,
    ``decompress(strings, indexes, dtype, means=None)`` -> y_hat. Without means (the scale
    hyperprior) the lattice is centred at 0. Nothing to ``update``: the coder's tables are
    fixed, so CompressAI's ``update()`` rightly skips this module.
    """

    def __init__(self, M: int, proxy: str = "mixed") -> None:
        if M % BLOCK or M <= 0:
            raise ValueError(f"M must be a positive multiple of {BLOCK}, got {M}")
        if proxy not in PROXIES:
            raise ValueError(f"unknown training proxy {proxy!r}; expected one of {PROXIES}")
        super().__init__()
        self.M, self.proxy = M, proxy
        self.quantizer = LeechQuantizer()

    def _anchor(self, y: torch.Tensor, means: torch.Tensor | None) -> torch.Tensor:
        """Blocks of the point each lattice is centred at (the means, or 0)."""
        if y.ndim != 4 or y.shape[1] != self.M:
            raise ValueError(f"expected a latent N x {self.M} x H x W, got "
                             f"{'x'.join(map(str, y.shape))}")
        return torch.zeros_like(to_blocks(y)) if means is None else to_blocks(means)

    @staticmethod
    def _reconstruct(points: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
        """Lattice points (integer frame) back to latent units, in float64: correctly rounded
        operations only, so encoder and decoder agree to the bit."""
        return from_blocks(points.to(torch.float64) * LEECH_UNIT_STEP + anchor.to(torch.float64))

    def forward(self, inputs: torch.Tensor, scales: torch.Tensor,
                means: torch.Tensor | None = None, training: bool | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(y_hat, likelihoods). In training the proxy's reconstruction and the scales as
        given; otherwise the hard lattice point, exactly what ``decompress`` returns, and the
        coder's quantized scales (straight-through), so the rate is the coded size."""
        training = self.training if training is None else training
        anchor = self._anchor(inputs, means)
        p = self.quantizer.proxy(to_blocks(inputs) - anchor, LEECH_UNIT_STEP,
                                 self.proxy if training else "ste")
        # CompressAI's lower bound: gradients that raise a scale below the bound pass
        sigma = lower_bound(to_blocks(scales), SCALE_BOUND) / LEECH_UNIT_STEP
        if not training:
            table = torch.from_numpy(tables.THETA_SCALES).to(sigma.device, sigma.dtype)
            sigma = straight_through(sigma, table[to_blocks(self.build_indexes(scales))])
        likelihoods = spread(leech_log_prob_centred(p.rate_input, sigma))
        if training:
            return from_blocks(p.recon + anchor), likelihoods
        points = torch.round(p.rate_input.detach())
        return self._reconstruct(points, anchor).to(inputs.dtype), likelihoods

    def build_indexes(self, scales: torch.Tensor) -> torch.Tensor:
        """Indices of the scales in the coder's fixed table (comparisons only)."""
        sigma = scales.detach().to("cpu", torch.float64).clamp(min=SCALE_BOUND) / LEECH_UNIT_STEP
        index = scale_index(sigma.numpy(), tables.theta_tables())
        return torch.from_numpy(index).to(scales.device)

    def _encode(self, inputs: torch.Tensor, indexes: torch.Tensor,
                means: torch.Tensor | None) -> tuple[list[bytes], torch.Tensor]:
        """(one string per image, the hard y_hat in float64) for a batch."""
        anchor = self._anchor(inputs, means)
        # the very search of forward's hard path, on the same device and dtype
        points = self.quantizer.nearest(((to_blocks(inputs) - anchor) / LEECH_UNIT_STEP).detach())
        strings = []
        for p, s in zip(points, to_blocks(indexes), strict=True):
            enc = Encoder()
            LeechCoder().encode(enc, _rows(p), *_model_rows(s))
            strings.append(enc.finish())
        return strings, self._reconstruct(points, anchor)

    def compress(self, inputs: torch.Tensor, indexes: torch.Tensor,
                 means: torch.Tensor | None = None) -> list[bytes]:
        """One string per image: its lattice points range-coded under the exact prior."""
        return self._encode(inputs, indexes, means)[0]

    def decompress(self, strings: list[bytes], indexes: torch.Tensor,
                   dtype: torch.dtype = torch.float, means: torch.Tensor | None = None
                   ) -> torch.Tensor:
        """y_hat (N, M, H, W) in ``dtype`` on the device of ``indexes``."""
        if len(strings) != indexes.shape[0] or indexes.ndim != 4 or indexes.shape[1] != self.M:
            raise ValueError(f"{len(strings)} strings for indexes of shape "
                             f"{tuple(indexes.shape)}; expected one per image of M={self.M}")
        anchor = self._anchor(indexes, means)
        block_shape = to_blocks(indexes).shape[1:]
        points = torch.stack([
            torch.from_numpy(LeechCoder().decode(Decoder(string), *_model_rows(s)))
            .reshape(block_shape)
            for string, s in zip(strings, to_blocks(indexes), strict=True)
        ])
        y_hat = self._reconstruct(points, anchor.cpu())
        return y_hat.to(indexes.device, dtype)


def _rows(blocks: torch.Tensor) -> np.ndarray:
    """One image's blocks (K, H, W, 24) as the coder's rows (K*H*W, 24), int64."""
    return blocks.reshape(-1, BLOCK).cpu().numpy().astype(np.int64)


def _model_rows(indexes: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``LeechCoder``'s model of one image: scale indices and means, all 0 (every lattice
    is centred at its predicted mean)."""
    scale = _rows(indexes)
    return scale, np.zeros_like(scale)


class LeechConditionalLatentCodec(LatentCodec):
    """CompressAI ``LatentCodec`` coding y on Λ24 given ``ctx_params`` (scales and means),
    the counterpart of ``GaussianConditionalLatentCodec``: same calls, same outputs.

    ``entropy_parameters`` maps ``ctx_params`` to the Gaussian parameters (default: they
    are the parameters), split along channels as ``chunks`` says.
    """

    def __init__(self, M: int, proxy: str = "mixed", entropy_parameters: nn.Module | None = None,
                 chunks: tuple[str, ...] = ("scales", "means")) -> None:
        if tuple(chunks) not in CHUNKS:
            raise ValueError(f"chunks must be one of {CHUNKS}, got {chunks!r}")
        super().__init__()
        self.gaussian_conditional = LeechGaussianConditional(M, proxy)
        self.entropy_parameters = entropy_parameters or nn.Identity()
        self.chunks = tuple(chunks)

    def _chunk(self, ctx_params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        params = self.entropy_parameters(ctx_params)
        if self.chunks == ("scales",):
            return params, None
        first, second = params.chunk(2, 1)
        return (first, second) if self.chunks == ("scales", "means") else (second, first)

    def forward(self, y: torch.Tensor, ctx_params: torch.Tensor) -> dict[str, Any]:
        scales, means = self._chunk(ctx_params)
        y_hat, likelihoods = self.gaussian_conditional(y, scales, means)
        return {"likelihoods": {"y": likelihoods}, "y_hat": y_hat}

    def compress(self, y: torch.Tensor, ctx_params: torch.Tensor) -> dict[str, Any]:
        scales, means = self._chunk(ctx_params)
        indexes = self.gaussian_conditional.build_indexes(scales)
        strings, y_hat = self.gaussian_conditional._encode(y, indexes, means)
        return {"strings": [strings], "shape": tuple(y.shape[2:4]), "y_hat": y_hat.to(y.dtype)}

    def decompress(self, strings: list[list[bytes]], shape: tuple[int, int],
                   ctx_params: torch.Tensor, **kwargs) -> dict[str, Any]:
        (y_strings,) = strings
        scales, means = self._chunk(ctx_params)
        if tuple(scales.shape[2:4]) != tuple(shape):
            raise ValueError(f"shape {tuple(shape)} differs from the parameters' "
                             f"{tuple(scales.shape[2:4])}")
        indexes = self.gaussian_conditional.build_indexes(scales)
        return {"y_hat": self.gaussian_conditional.decompress(y_strings, indexes, scales.dtype,
                                                              means)}
