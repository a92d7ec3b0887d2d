"""How a model is made fast to train, without changing what it computes in fp32 parts:
bf16 autocast around the convolutional transforms only (the entropy bottleneck, the latent
codec's priors, likelihoods and lattice search stay fp32), channels_last, and torch.compile
of the transforms (mode reduce-overhead replays CUDA graphs) and of the training rate.
Everything is applied in place, so state_dict keys stay those of the eager model."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

TRANSFORMS = ("g_a", "g_s", "h_a", "h_s")


class _Autocast:
    """A transform's forward under bf16 autocast, its output back in fp32."""

    def __init__(self, forward: Callable, device_type: str) -> None:
        self.forward, self.device_type = forward, device_type

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            return self.forward(*args).float()


def autocast_transforms(model: nn.Module, device_type: str) -> None:
    for name in TRANSFORMS:
        transform = getattr(model, name)
        transform.forward = _Autocast(transform.forward, device_type)


def compile_transforms(model: nn.Module, mode: str) -> None:
    """torch.compile (inductor, ``mode``) the transforms in place: fuses GDN's elementwise
    work and, with reduce-overhead, replays CUDA graphs for launch-bound small batches."""
    for name in TRANSFORMS:
        getattr(model, name).compile(mode=mode)


def prepare(model: nn.Module, device: torch.device, bf16: bool = False,
            channels_last: bool = False, compile_rate: str = "",
            compile_mode: str = "") -> nn.Module:
    """``model`` set up for fast training with the given options (in place)."""
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if bf16:
        autocast_transforms(model, device.type)
    if compile_rate:
        model.latent_codec.compile_rate(compile_rate)
    if compile_mode:
        compile_transforms(model, compile_mode)
    return model
