"""One training step: the rate-distortion loss at random qualities through the main
optimizer, then CompressAI's aux loss (the bottleneck's quantiles) through the aux one."""

from __future__ import annotations

import torch
from torch import nn

from . import distributed
from .loss import RateDistortionLoss


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(main, aux) parameters, CompressAI's rule: names ending in '.quantiles' are aux."""
    main, aux = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (aux if name.endswith(".quantiles") else main).append(p)
    return main, aux


class Optimizers:
    """The main and aux Adam optimizers of a model."""

    def __init__(self, model: nn.Module, lr: float, aux_lr: float) -> None:
        main, aux = split_parameters(model)
        self.main = torch.optim.Adam(main, lr=lr)
        self.aux = torch.optim.Adam(aux, lr=aux_lr)

    def set_lr(self, lr: float) -> None:
        for group in self.main.param_groups:
            group["lr"] = lr

    def state_dict(self, moments: torch.dtype) -> dict:
        from .checkpoint import compact_optimizer_state

        return {"optimizer": compact_optimizer_state(self.main.state_dict(), moments),
                "aux_optimizer": self.aux.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.main.load_state_dict(state["optimizer"])
        self.aux.load_state_dict(state["aux_optimizer"])


def train_step(net: nn.Module, model: nn.Module, x: torch.Tensor, opts: Optimizers,
               clip: float = 1.0, world: int = 1, channels_last: bool = False) -> torch.Tensor:
    """One step of both optimizers; returns [loss, bpp, mse, psnr, aux] (no host sync).

    ``net`` is ``model`` or its DDP wrapper; the aux loss goes through ``model`` and its
    gradients are averaged by hand, since DDP ignores the '.quantiles' parameters.
    """
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    q = model.gains.sample(x.shape[0], x.device)
    terms = RateDistortionLoss()(net(x, q), x, q)
    opts.main.zero_grad(set_to_none=True)
    terms["loss"].backward()
    if clip > 0:
        nn.utils.clip_grad_norm_([p for g in opts.main.param_groups for p in g["params"]], clip)
    opts.main.step()
    aux_loss = model.aux_loss()
    opts.aux.zero_grad(set_to_none=True)
    aux_loss.backward()
    distributed.average_grads([p for g in opts.aux.param_groups for p in g["params"]], world)
    opts.aux.step()
    mse = terms["mse"].detach()
    return torch.stack([terms["loss"].detach(), terms["bpp"].detach(), mse,
                        -10.0 * torch.log10(mse), aux_loss.detach()])
