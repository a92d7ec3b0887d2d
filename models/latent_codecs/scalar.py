"""Scalar rounding around the predicted mean: CompressAI's mean-scale Gaussian conditional."""

from __future__ import annotations

import torch

from lsq.codec import tables
from lsq.codec.entropy_coding import Decoder, Encoder, scale_index
from lsq.codec.quantizers import ScalarQuantizer
from lsq.models.latent_codecs.base import SCALE_BOUND, LatentCodec, as_numpy, gaussian_likelihood


class ScalarLatentCodec(LatentCodec):
    """y - mu rounded to integers; each integer coded under a unit-bin Gaussian of scale sigma.

    ``params`` = (scales, means), M channels each.
    """

    name = "scalar"
    planes = (24, 24)
    rate_functions = ("likelihood",)
    likelihood = staticmethod(gaussian_likelihood)

    def forward(self, y: torch.Tensor, params: torch.Tensor
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        scales, means = params.chunk(2, 1)
        p = ScalarQuantizer().proxy(y, means, self.training_proxy())
        return p.recon, {"y": self.likelihood(p.rate_input, scales, means)}

    def code(self, params: torch.Tensor, enc: Encoder | None = None,
             dec: Decoder | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
        scales, means = (as_numpy(p).reshape(-1) for p in params.chunk(2, 0))
        gauss = tables.gauss_tables()
        rows = scale_index(scales.clip(min=SCALE_BOUND), gauss)
        quantizer = ScalarQuantizer()
        mean_t = torch.from_numpy(means).reshape(self.M, *params.shape[1:])
        if enc is not None:
            symbols = quantizer.symbols(y, mean_t)
            enc.table_offsets(symbols.reshape(-1).numpy(), rows, gauss)
        else:
            symbols = torch.from_numpy(dec.table_offsets(rows, gauss)).reshape(mean_t.shape)
        return quantizer.reconstruct(symbols, mean_t)
