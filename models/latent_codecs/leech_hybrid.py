"""Λ24 where the latent is wide, rounding where it is narrow: one block at a time.

``tools/swap_latent_codec`` found each quantizer better on its own side of the rate range:
`leech` over qualities 5–8 of Kodak, `scalar` over 1–4, and `scalar`'s own latents coded
1.1 % cheaper (BD-rate) with Λ24 on just the blocks whose mean predicted scale exceeds 1.
This codec makes that choice inside one model. The choice is a function of the
integer-exact hyper parameters alone, so the decoder makes it too and no flag is coded.
"""

from __future__ import annotations

import torch

from lsq.codec.entropy_coding import Decoder, Encoder
from lsq.codec.quantizers import BLOCK, from_blocks, to_blocks
from lsq.models.latent_codecs.base import LatentCodec
from lsq.models.latent_codecs.leech import LeechLatentCodec, latent_blocks, latent_from_blocks
from lsq.models.latent_codecs.scalar import ScalarLatentCodec


class LeechHybridLatentCodec(LatentCodec):
    """Each 24-channel block on Λ24 (mean-shifted, exact prior) when the mean of its
    predicted scales exceeds ``above``, else rounded channel by channel under the Gaussian
    conditional. ``params`` = (scales, means), M channels each, as for both."""

    name = "leech-hybrid"
    planes = (24, 24)

    def __init__(self, M: int, proxy: str = "mixed", above: float = 1.0) -> None:
        super().__init__(M, proxy)
        self.above = above
        self.lattice = LeechLatentCodec(M, proxy)
        self.rounding = ScalarLatentCodec(M, proxy)

    def compile_rate(self, backend: str = "inductor") -> None:
        self.lattice.compile_rate(backend)
        self.rounding.compile_rate(backend)

    def lattice_blocks(self, scales: torch.Tensor) -> torch.Tensor:
        """Which blocks go to Λ24, from the scales (..., M, H, W): (..., M/24, H, W, 1). At
        coding time the scales are fixed-point values held in float64, whose sums are exact in
        any order, so every machine makes the same choice."""
        return to_blocks(scales).mean(-1, keepdim=True) > self.above

    def forward(self, y: torch.Tensor, params: torch.Tensor
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Both codecs on every block, then each block's pick: fixed shapes, so the compiled
        rate graphs stay static, at the price of the other codec's work on every block."""
        y_lattice, lik_lattice = self.lattice(y, params)
        y_round, lik_round = self.rounding(y, params)
        chosen = self.lattice_blocks(params.chunk(2, 1)[0].detach())
        chosen = from_blocks(chosen.expand(*chosen.shape[:-1], BLOCK))
        return (torch.where(chosen, y_lattice, y_round),
                {"y": torch.where(chosen, lik_lattice["y"], lik_round["y"])})

    def code(self, params: torch.Tensor, enc: Encoder | None = None,
             dec: Decoder | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
        params = params.to(torch.float64).cpu()
        scales, means = (latent_blocks(p) for p in params.chunk(2, 0))
        on_lattice = self.lattice_blocks(params[None, : self.M])[0].reshape(-1)
        rounded = ~on_lattice
        blocks = latent_blocks(y) if enc is not None else None
        recon = torch.empty_like(scales)
        s, mq, step = self.lattice.coding_parameters(params)
        pick = on_lattice.numpy()
        recon[on_lattice] = self.lattice.code_blocks(
            s[pick], mq[pick], step[on_lattice], self.lattice.anchor(params)[on_lattice], enc, dec,
            None if blocks is None else blocks[on_lattice])
        recon[rounded] = self.rounding.code_values(
            scales[rounded], means[rounded], enc, dec,
            None if blocks is None else blocks[rounded])
        return latent_from_blocks(recon, torch.Size((self.M, *params.shape[1:])))
