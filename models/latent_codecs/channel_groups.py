"""A channel-conditional entropy model around any latent codec (Minnen & Singh 2020,
"Channel-wise autoregressive entropy models"; ELIC's uneven groups, He et al. 2022).

The latent y (M channels) is cut into groups of whole 24-channel blocks, by default each
group as large as all earlier ones together (M = 192: 24, 24, 48, 96), so that the first,
best-predicted channels get their own small groups. Group k is coded by its own inner codec
of the chosen kind (scalar, leech, ...). Its hyper parameters are the hyperprior's own for
those channels plus a correction: group transform k applied to concat(hyper features, y_hat
of the groups before k). The transforms' last layers start at zero, so an untrained context
model codes exactly as its hyperprior version and can start from its weights. There is no spatial
autoregression: every position of a group is coded at once, so decoding runs one small
network per group, not one per position.

With ``lrp``, latent residual prediction (Minnen & Singh's LRP): after group k is decoded, a
residual transform of concat(hyper features, y_hat of groups up to k) adds a correction in
[-1/2, 1/2] to that group's y_hat, predicting part of its quantization error. It starts at
zero too, and runs as an integer network while coding, so the corrected y_hat is exact.

With ``checkerboard``, a spatial context inside every group (He et al. 2021; ELIC's
space-channel context): the group's anchors (``checkerboard.Checkerboard``) are coded first,
under the parameters above, then the other half, whose parameters also see a spatial context
network applied to the anchors' y_hat (``checkerboard.make_spatial``). Its only layer starts
at zero, so an untrained checkerboard codes the same symbols as the model without it, in
another order. Two range-coder passes per group, each over all positions of its half at once.

Training: the transforms see the inner codecs' training reconstructions of earlier groups,
as in CompressAI's ``ChannelGroupsLatentCodec``. Coding: they run as integer networks
(``latent_coding.integer_hyper_decode``) on the bit-exact float64 y_hat of earlier groups,
so encoder and decoder derive the same tables on any machine and thread count; all groups
go into one range-coder stream, in group order.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate

import torch
from torch import nn

from lsq.codec.entropy_coding import Decoder, Encoder
from lsq.codec.quantizers import BLOCK
from lsq.models import latent_coding
from lsq.models.latent_codecs.base import LatentCodec
from lsq.models.latent_codecs.checkerboard import Checkerboard, first_activation, make_spatial
from lsq.models.layers import conv


def default_groups(M: int) -> tuple[int, ...]:
    """Each group as large as all earlier ones together, the last cut to what is left:
    (24, 24, 48, 96) for M = 192, (24, 24) for M = 48."""
    blocks, groups = M // BLOCK, []
    while sum(groups) < blocks:
        groups.append(min(max(sum(groups), 1), blocks - sum(groups)))
    return tuple(BLOCK * g for g in groups)


#: How group transforms see the earlier groups: "separable" (a depthwise 3x3 convolution
#: then 1x1 ones) or "full" (three full 3x3 convolutions).
GROUP_TRANSFORMS = ("separable", "full")

#: Hidden widths of a "full" group transform: those of Minnen & Singh's slice transforms
#: (CompressAI's ``mbt2020`` channel-conditional models: 224, then 128).
FULL_WIDTHS = (224, 128)

#: Negative slope of a "full" transform's activations: a power of two (exact in integer form).
#: With ReLU the second-layer units die early in training and the transforms change no
#: likelihood: a unit's inputs are all >= 0, so Adam moves all its weights the same way,
#: about lr each, and a few hundred steps push most units below zero for good.
LEAK = 2.0**-4


def make_transform(in_channels: int, hidden: int, out_channels: int,
                    kind: str = "separable") -> nn.Sequential:
    """A network from hyper features and earlier groups to one group's parameters. Only
    convolutions and (leaky) ReLU: its integer form is exact.

    "separable": a depthwise 3x3 convolution (every channel sees its neighbours) and a 1x1
    one to ``hidden`` channels, then two 1x1 ones as ELIC's parameter aggregation. Each
    input channel has one spatial filter, so the earlier groups' spatial context is barely
    used. "full": three full 3x3 convolutions (``FULL_WIDTHS``; ``hidden`` unused), Minnen
    & Singh's slice transform (with LeakyReLU, ``LEAK``, where they use GELU): a 7x7
    receptive field, any spatial pattern per channel pair; larger and slower, and the one
    that pays on Kodak (docs/experiments.md, channel-groups context models)."""
    if kind == "full":
        wide, narrow = FULL_WIDTHS
        return nn.Sequential(
            conv(in_channels, wide, kernel_size=3, stride=1), nn.LeakyReLU(LEAK, inplace=True),
            conv(wide, narrow, kernel_size=3, stride=1), nn.LeakyReLU(LEAK, inplace=True),
            conv(narrow, out_channels, kernel_size=3, stride=1),
        )
    if kind != "separable":
        raise ValueError(f"unknown group transform {kind!r}; expected one of {GROUP_TRANSFORMS}")
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels),
        conv(in_channels, hidden, kernel_size=1, stride=1), nn.ReLU(inplace=True),
        conv(hidden, hidden, kernel_size=1, stride=1), nn.ReLU(inplace=True),
        conv(hidden, out_channels, kernel_size=1, stride=1),
    )


#: LRP corrections are clamped to [-LRP_BOUND, LRP_BOUND] (Minnen & Singh: 0.5 tanh).
LRP_BOUND = 0.5


def group_slices(planes: Sequence[int], groups: Sequence[int]) -> list[torch.Tensor]:
    """For each group, the channels of the hyperprior's ``params`` (``planes`` per block, each
    plane laid out over all blocks) that hold that group's parameters, plane by plane."""
    blocks = sum(groups) // BLOCK
    plane_start = list(accumulate((blocks * p for p in planes[:-1]), initial=0))
    slices = []
    for first, n in zip(accumulate((g // BLOCK for g in groups[:-1]), initial=0),
                        (g // BLOCK for g in groups), strict=True):
        slices.append(torch.cat([torch.arange(start + p * first, start + p * (first + n))
                                 for start, p in zip(plane_start, planes, strict=True)]))
    return slices


class ChannelGroupsLatentCodec(LatentCodec):
    """Groups of channels, each coded by an instance of ``codec`` conditioned on the earlier
    groups. ``params`` = the hyperprior's parameters for all of y, in the inner codec's
    layout, so the hyper-decoder is the one of the model without the context model."""

    def __init__(self, codec: type[LatentCodec], M: int, proxy: str = "mixed",
                 groups: Sequence[int] | None = None, lrp: bool = False,
                 group_transform: str = "separable", checkerboard: bool = False,
                 **options) -> None:
        super().__init__(M, proxy)
        groups = tuple(default_groups(M) if groups is None else groups)
        if sum(groups) != M or any(g <= 0 or g % BLOCK for g in groups):
            raise ValueError(f"groups {list(groups)} must be positive multiples of {BLOCK} "
                             f"adding up to M = {M}")
        self.groups = groups
        self.variable_rate = codec.variable_rate
        self.codecs = nn.ModuleList(codec(g, proxy, **options) for g in groups)
        self.features = sum(c.hyper_channels for c in self.codecs)
        self.transforms, residuals = nn.ModuleList(), nn.ModuleList()
        for before, g, c in zip(accumulate(groups[:-1], initial=0), groups, self.codecs,
                                strict=True):
            inputs, out = self.features + before, c.hyper_channels
            self.transforms.append(
                make_transform(inputs, (inputs + out) // 2, out, group_transform))
            if lrp:  # separable: narrower (hidden twice the group), to stay within 16 MiB
                residuals.append(make_transform(inputs + g, 2 * g, g, group_transform))
        self.residuals = residuals if lrp else None
        self.spatial = nn.ModuleList(
            make_spatial(g, t) for g, t in zip(groups, self.transforms, strict=True)
        ) if checkerboard else None
        for transform in self.integer_transforms:
            nn.init.zeros_(transform[-1].weight)
            nn.init.zeros_(transform[-1].bias)
        for k, index in enumerate(group_slices(codec.planes, groups)):
            self.register_buffer(f"slice_{k}", index, persistent=False)

    @property
    def integer_transforms(self) -> list[nn.Sequential]:
        """Every network that runs in integer form while coding: the group transforms, LRP's,
        then the checkerboard's spatial context. Their last layers start at zero."""
        return [*self.transforms, *(self.residuals or ()), *(self.spatial or ())]

    def _own(self, params: torch.Tensor, k: int, dim: int) -> torch.Tensor:
        """The hyperprior's parameters of group k."""
        return params.index_select(dim, getattr(self, f"slice_{k}").to(params.device))

    @property
    def hyper_channels(self) -> int:
        return self.features

    def update(self) -> None:
        for codec in self.codecs:
            codec.update()

    def compile_rate(self, backend: str = "inductor") -> None:
        for codec in self.codecs:
            codec.compile_rate(backend)

    def forward(self, y: torch.Tensor, params: torch.Tensor
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Group by group; the likelihoods of each kind are concatenated over the groups in
        channel order, so they have the shapes the inner codec gives for all of y."""
        y_hats: list[torch.Tensor] = []
        likelihoods: dict[str, list[torch.Tensor]] = {}
        for k, (y_k, codec, transform) in enumerate(zip(y.split(self.groups, 1), self.codecs,
                                                        self.transforms, strict=True)):
            context, own = torch.cat([params, *y_hats], 1), self._own(params, k, 1)
            if self.spatial is None:
                y_hat, lik = codec(y_k, own + transform(context).float())
            else:
                y_hat, lik = self._checkerboard_forward(k, y_k, own, context)
            if self.residuals is not None:
                residual = self.residuals[k](torch.cat([params, *y_hats, y_hat], 1)).float()
                y_hat = y_hat + residual.clamp(-LRP_BOUND, LRP_BOUND)
            y_hats.append(y_hat)
            for key, value in lik.items():
                likelihoods.setdefault(key, []).append(value)
        return torch.cat(y_hats, 1), {k: torch.cat(v, 1) for k, v in likelihoods.items()}

    def _checkerboard_forward(self, k: int, y: torch.Tensor, own: torch.Tensor,
                              context: torch.Tensor
                              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Group k in two passes (CompressAI's "twopass"): the anchors under the channel
        context, then the others with the spatial context of the anchors' training
        reconstruction; each half through the inner codec alone."""
        transform, codec = self.transforms[k], self.codecs[k]
        board, cut = Checkerboard(*y.shape[-2:], y.device), first_activation(transform)
        head, tail = transform[:cut], transform[cut:]
        hidden = head(context)
        y_anchors, y_others = board.split(y)
        anchors, lik_anchors = codec(
            y_anchors, board.split(own + tail(hidden.clone()).float())[0])  # tail is in place
        spatial = self.spatial[k](board.anchor_map(anchors))
        others, lik_others = codec(
            y_others, board.split(own + tail(hidden + spatial).float())[1])
        return board.merge(anchors, others), {
            key: board.merge(lik_anchors[key], lik_others[key]) for key in lik_anchors}

    def code(self, params: torch.Tensor, enc: Encoder | None = None,
             dec: Decoder | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
        y_groups = y.split(self.groups, 0) if y is not None else (None,) * len(self.groups)
        y_hats: list[torch.Tensor] = []
        params = params.to(torch.float64)
        for k, (y_k, codec, transform) in enumerate(zip(y_groups, self.codecs, self.transforms,
                                                        strict=True)):
            context, own = self._context(params, y_hats), self._own(params, k, 0)
            if self.spatial is None:
                correction = latent_coding.integer_hyper_decode(transform, context)[0]
                y_hat = codec.code(own + correction, enc=enc, dec=dec, y=y_k)
            else:
                y_hat = self._code_checkerboard(k, own, context, enc, dec, y_k)
            if self.residuals is not None:
                residual = latent_coding.integer_hyper_decode(
                    self.residuals[k], self._context(params, [*y_hats, y_hat]))[0]
                y_hat = y_hat + residual.clamp(-LRP_BOUND, LRP_BOUND).to(y_hat.device)
            y_hats.append(y_hat)
        return torch.cat(y_hats, 0)

    def _code_checkerboard(self, k: int, own: torch.Tensor, context: torch.Tensor,
                           enc: Encoder | None, dec: Decoder | None, y: torch.Tensor | None
                           ) -> torch.Tensor:
        """Group k's anchors, then its other positions, into the same stream; every network
        in integer form, the spatial context's input being the decoded anchors."""
        transform, codec = self.transforms[k], self.codecs[k]
        board, cut = Checkerboard(*own.shape[-2:], own.device), first_activation(transform)
        hidden = latent_coding.integer_hyper_decode(transform[:cut], context)
        y_anchors, y_others = board.split(y) if y is not None else (None, None)

        def half(which: int, x: torch.Tensor, y_half: torch.Tensor | None) -> torch.Tensor:
            correction = latent_coding.integer_hyper_decode(transform[cut:], x)[0]
            return codec.code(board.split(own + correction)[which], enc=enc, dec=dec, y=y_half)

        anchors = half(0, hidden, y_anchors)
        spatial = latent_coding.integer_hyper_decode(
            self.spatial[k], board.anchor_map(anchors.to(own.device))[None])
        return board.merge(anchors, half(1, hidden + spatial, y_others).to(anchors.device))

    @staticmethod
    def _context(params: torch.Tensor, y_hats: Sequence[torch.Tensor]) -> torch.Tensor:
        """An integer transform's input: hyper features and decoded groups, one image."""
        return torch.cat([params, *(h.to(params.device) for h in y_hats)], 0)[None]
