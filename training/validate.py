"""Held-out evaluation: likelihood bpp, PSNR and RD cost at every integer quality."""

from __future__ import annotations

import torch
from torch import nn

from lsq.models.quality import lmbda

from .loss import rd_terms


@torch.no_grad()
def evaluate(model: nn.Module, crops: torch.Tensor, batch: int, channels_last: bool) -> dict:
    """Mean bpp (likelihood estimate), PSNR and RD cost on the held-out uint8 crops, at each
    integer quality of the model: keys val_bpp_q3, val_psnr_q3, val_cost_q3, ..."""
    was_training = model.training
    model.eval()
    record: dict = {"val_images": len(crops)}
    for q in range(model.gains.low, model.gains.high + 1):
        bpps, mses = [], []
        for i in range(0, len(crops), batch):
            x = crops[i : i + batch].float().div_(255.0)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out = model(x, float(q))
            bpps.append(rd_terms(out, x)[0])
            mses.append((out["x_hat"].float().clamp(0, 1) - x).pow(2).flatten(1).mean(1))
        bpp, mse = torch.cat(bpps), torch.cat(mses)
        record[f"val_bpp_q{q}"] = float(bpp.mean())
        record[f"val_psnr_q{q}"] = float((-10.0 * torch.log10(mse)).mean())
        record[f"val_cost_q{q}"] = float((float(lmbda(q)) * 255.0**2 * mse + bpp).mean())
    model.train(was_training)
    return record
