"""The rate-distortion loss of a training forward (CompressAI's RateDistortionLoss, with a
lambda per image from its quality): lambda * 255^2 * MSE + bits per pixel."""

from __future__ import annotations

import torch
from torch import nn

from lsq.models.quality import lmbda


def rd_terms(out: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image (bpp, mse) of a forward pass, shapes (B,); bits = -sum(log2 likelihoods),
    summed in fp32 whatever precision the forward ran in."""
    bits = sum(torch.log2(lik.float()).flatten(1).sum(1) for lik in out["likelihoods"].values())
    bpp = -bits / (x.shape[2] * x.shape[3])
    mse = (out["x_hat"].float() - x).pow(2).flatten(1).mean(1)
    return bpp, mse


class RateDistortionLoss(nn.Module):
    """{"loss", "bpp", "mse"} (batch means) for a forward at per-image qualities ``q``."""

    def forward(self, out: dict, x: torch.Tensor, q: torch.Tensor) -> dict[str, torch.Tensor]:
        bpp, mse = rd_terms(out, x)
        weight = lmbda(q).to(x.device, torch.float32) * 255.0**2
        return {"loss": (weight * mse + bpp).mean(), "bpp": bpp.mean(), "mse": mse.mean()}
