"""The checkerboard of spatial positions (He et al. 2021, "Checkerboard Context Model for
Efficient Learned Image Compression"): anchors first, then the other half conditioned on them.

Anchors are the positions (i, j) with i + j even, every channel of a position together, so a
24-channel block is never split between the two halves. A half is gathered into a map of one
row, (..., C, 1, n), in raster order: the inner codecs work position by position, so they code
or train on a half exactly as on a whole latent, with no code of their own for it.

The spatial context network reads the anchor map (the anchors' y_hat, zero elsewhere), so a
non-anchor sees the anchors around it and nothing else; it is linear and its output is added to
the group transform's first pre-activation, which is the transform's first layer applied to
its input with the context concatenated: the group transform keeps its shape and its weights,
so a model without the checkerboard warm-starts.
"""

from __future__ import annotations

import torch
from torch import nn

from lsq.models.layers import conv

#: Kernel of the spatial context convolution: the 5x5 of CompressAI's checkerboard models.
SPATIAL_KERNEL = 5


class Checkerboard:
    """The two halves of an H x W grid: ``split`` gathers them, ``merge`` puts them back."""

    def __init__(self, height: int, width: int, device: torch.device | str = "cpu") -> None:
        i, j = torch.meshgrid(torch.arange(height, device=device),
                              torch.arange(width, device=device), indexing="ij")
        anchor = ((i + j) % 2 == 0).reshape(-1)
        self.shape = (height, width)
        self.anchors = int(anchor.sum())
        self.order = torch.cat([anchor.nonzero()[:, 0], (~anchor).nonzero()[:, 0]])
        self.inverse = torch.argsort(self.order)

    def split(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., C, H, W) -> anchors (..., C, 1, a) and non-anchors (..., C, 1, H*W - a)."""
        flat = t.flatten(-2).index_select(-1, self.order.to(t.device)).unsqueeze(-2)
        return flat[..., : self.anchors], flat[..., self.anchors :]

    def merge(self, anchors: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
        """The inverse of ``split``: (..., C, H, W)."""
        flat = torch.cat([anchors, others], -1).squeeze(-2)
        return flat.index_select(-1, self.inverse.to(flat.device)).unflatten(-1, self.shape)

    def anchor_map(self, anchors: torch.Tensor) -> torch.Tensor:
        """The anchors in place and zeros at the other positions: the spatial context's input."""
        shape = (*anchors.shape[:-1], self.shape[0] * self.shape[1] - self.anchors)
        return self.merge(anchors, anchors.new_zeros(shape))


def first_activation(transform: nn.Sequential) -> int:
    """Index of a transform's first activation: the spatial context is added just before it."""
    for i, layer in enumerate(transform):
        if isinstance(layer, nn.ReLU | nn.LeakyReLU):
            return i
    raise ValueError("a group transform needs an activation to take the spatial context")


def make_spatial(channels: int, transform: nn.Sequential) -> nn.Sequential:
    """The spatial context network of one group: one 5x5 convolution from the group's anchor
    map to the width of ``transform``'s first pre-activation (the linear map that ELIC's
    masked convolution and the aggregation's first layer make together)."""
    width = transform[first_activation(transform) - 1].out_channels
    return nn.Sequential(conv(channels, width, kernel_size=SPATIAL_KERNEL, stride=1))
