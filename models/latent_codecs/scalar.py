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
        return self.code_values(*params.chunk(2, 0), enc=enc, dec=dec, y=y)

    @staticmethod
    def code_values(scales: torch.Tensor, means: torch.Tensor, enc: Encoder | None = None,
                    dec: Decoder | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
        """Encode y - means rounded, or decode it, each value under the Gaussian of its
        scale, in the order of the flattened tensors (any shape); returns the reconstruction."""
        gauss = tables.gauss_tables()
        rows = scale_index(as_numpy(scales).reshape(-1).clip(min=SCALE_BOUND), gauss)
        quantizer = ScalarQuantizer()
        mean_t = torch.from_numpy(as_numpy(means))
        if enc is not None:
            symbols = quantizer.symbols(y, mean_t)
            enc.table_offsets(symbols.reshape(-1).numpy(), rows, gauss)
        else:
            symbols = torch.from_numpy(dec.table_offsets(rows, gauss)).reshape(mean_t.shape)
        return quantizer.reconstruct(symbols, mean_t)
