"""Is a channel-groups context model using its context? Catches dead group transforms.

    python -m lsq.tools.check_context --weights FILE.safetensors [--dataset ../shared/data/kodak]
        [--images 4] [--qualities 2 6]

For each group transform: the share of its hidden units that are positive somewhere on the
images (a unit that never is passes no gradient through a ReLU: it is dead). Then, at each
quality, y's bits (the model's -log2 P, eval mode) and how much they change when the
transforms' last layers are zeroed, which removes every context correction. A dead
model has a layer 0 % positive and changes y's bits by nothing; a model whose transforms
work changes them by far more (its hyperprior co-adapts to the context). Takes any weights
file, shipped or just returned.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from lsq.models import weights_file
from lsq.models.hyperprior import LsqHyperprior, build_model
from lsq.models.latent_codecs import ChannelGroupsLatentCodec
from lsq.tools.images import first_pngs

ACTIVATIONS = (nn.ReLU, nn.LeakyReLU)


def load(path: Path) -> LsqHyperprior:
    """A context model from a weights file, in eval mode; ValueError if it is none."""
    config = weights_file.read_config(path)
    net = build_model(config["family"], N=config["N"], M=config["M"],
                      qualities=tuple(config["qualities"]), **config.get("codec_options", {}))
    if not isinstance(net.latent_codec, ChannelGroupsLatentCodec):
        raise ValueError(f"{path} is not a channel-groups context model")
    net.load_state_dict(weights_file.load_state(path))
    return net.eval()


@torch.no_grad()
def active_units(net: LsqHyperprior, images: Sequence[torch.Tensor], quality: float
                 ) -> list[list[float]]:
    """Per group transform, per activation layer: the share of units positive somewhere."""
    seen: dict[nn.Module, torch.Tensor] = {}

    def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        positive = (output > 0).transpose(0, 1).flatten(1).any(1)
        seen[module] = seen[module] | positive if module in seen else positive

    layers = [[m for m in t if isinstance(m, ACTIVATIONS)] for t in net.latent_codec.transforms]
    hooks = [m.register_forward_hook(record) for group in layers for m in group]
    try:
        for x in images:
            net(x, torch.tensor([quality]))
    finally:
        for hook in hooks:
            hook.remove()
    return [[float(seen[m].float().mean()) for m in group] for group in layers]


@torch.no_grad()
def y_bits(net: LsqHyperprior, images: Sequence[torch.Tensor], quality: float) -> float:
    return sum(float(-torch.log2(net(x, torch.tensor([quality]))["likelihoods"]["y"]).sum())
               for x in images)


@torch.no_grad()
def bits_without_context(net: LsqHyperprior, images: Sequence[torch.Tensor], quality: float
                         ) -> float:
    """y's bits with every group transform's last layer zeroed (restored afterwards)."""
    saved = [(t[-1].weight.clone(), t[-1].bias.clone()) for t in net.latent_codec.transforms]
    try:
        for t in net.latent_codec.transforms:
            t[-1].weight.zero_()
            t[-1].bias.zero_()
        return y_bits(net, images, quality)
    finally:
        for t, (w, b) in zip(net.latent_codec.transforms, saved, strict=True):
            t[-1].weight.copy_(w)
            t[-1].bias.copy_(b)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lsq.tools.check_context",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--dataset", type=Path, default=Path("../shared/data/kodak"))
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--qualities", type=float, nargs="+", default=[2.0, 6.0])
    args = parser.parse_args(argv)
    try:
        net = load(args.weights)
    except (weights_file.WeightsFileError, ValueError, RuntimeError) as e:
        sys.exit(f"check_context: {e}")
    images = first_pngs(args.dataset, args.images)
    if not images:
        sys.exit(f"check_context: no PNG images in {args.dataset}")
    low, high = net.gains.low, net.gains.high
    if any(not low <= q <= high for q in args.qualities):
        sys.exit(f"check_context: qualities must lie in [{low}, {high}]")
    print(f"{args.weights.name}, {len(images)} images")
    for k, shares in enumerate(active_units(net, images, args.qualities[0])):
        print(f"group {k}: units positive somewhere, by layer: "
              + ", ".join(f"{100 * s:.0f} %" for s in shares))
    for q in args.qualities:
        own, without = y_bits(net, images, q), bits_without_context(net, images, q)
        print(f"quality {q:g}: y {own:,.0f} bits; without the context corrections "
              f"{without:,.0f} ({100 * (without / own - 1):+.2f} %)")


if __name__ == "__main__":
    main()
