"""Binary spherical quantization (Zhao, Xiong, Krähenbühl 2024) with a hyperprior on the bits."""

from __future__ import annotations

import numpy as np
import torch

from lsq.codec import tables
from lsq.codec.entropy_coding import Decoder, Encoder
from lsq.codec.quantizers import UNDITHERED_PROXIES, BSQQuantizer, from_blocks, to_blocks
from lsq.models.latent_codecs.base import LatentCodec, as_numpy


class BSQLatentCodec(LatentCodec):
    """Each 24-channel block L2-normalized, then its signs; a bit is coded under the logit
    the hyper-decoder predicts for it (``params``: M channels of logits).

    The sign of a block is scale-invariant, so quality gains do not change its rate: BSQ
    models are fixed-rate (one quality each).
    """

    name = "bsq"
    planes = (24,)
    variable_rate = False
    proxies = UNDITHERED_PROXIES

    def forward(self, y: torch.Tensor, params: torch.Tensor
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        p = BSQQuantizer().proxy(to_blocks(y))
        logits = to_blocks(params)
        signs = 2 * (p.recon > 0).to(logits.dtype) - 1
        return from_blocks(p.recon), {"y": from_blocks(torch.sigmoid(signs * logits))}

    def code(self, params: torch.Tensor, enc: Encoder | None = None,
             dec: Decoder | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
        logits = as_numpy(params).reshape(-1)
        idx = np.clip(np.floor(logits / tables.BSQ_LOGIT_STEP + 0.5), -tables.BSQ_LOGITS,
                      tables.BSQ_LOGITS).astype(np.int64) + tables.BSQ_LOGITS
        p1 = tables.bsq_probs()[idx]
        probs = np.stack([1 - p1, p1], axis=-1)
        if enc is not None:
            bits = BSQQuantizer().symbols(y).reshape(-1).numpy()
            enc.categorical(bits, probs)
        else:
            bits = dec.categorical(probs)
        recon = BSQQuantizer().reconstruct(torch.from_numpy(bits)).to(torch.float64)
        return recon.reshape(self.M, *params.shape[1:])
