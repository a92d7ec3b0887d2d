"""Same latents, another quantizer: how much a model's transforms are made for its own.

    python -m lsq.tools.swap_latent_codec --model scalar --codec leech | leech-hybrid
        [--above SCALE] [--dataset ../shared/data/kodak] [--images 6]

At each integer quality the model's latent y and hyper parameters go once through its own
latent codec and once through CODEC put in its place (eval mode: hard quantization). For
each it prints the model's -log2 P in bits per pixel (y and z) and the PSNR. CODEC must read
the same hyper parameters as the model's own (a scale and a mean per channel: `leech` and
`scalar`), or be `leech-hybrid` (Λ24 on the blocks whose mean predicted scale exceeds
``--above``, default 1, rounding on the others). Where `leech-hybrid` is one of the two
codecs, a last column gives the share of y's blocks, and of y's bits, that it puts on Λ24.
What it measured on the shipped models: docs/experiments.md.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from lsq.codec.quantizers import to_blocks
from lsq.eval.bdrate import bd_rate
from lsq.models import registry, weights_file
from lsq.models.hyperprior import LsqHyperprior, build_model
from lsq.models.latent_codecs import LatentCodec, make_latent_codec
from lsq.models.latent_codecs.leech_hybrid import LeechHybridLatentCodec
from lsq.tools.images import first_pngs


def load_trainable(name: str) -> LsqHyperprior:
    """A shipped model with its training-time modules (CompressAI's bottleneck), in eval mode."""
    config = registry.get_config(name)
    net = build_model(config["family"], N=config["N"], M=config["M"],
                      qualities=tuple(config["qualities"]), **config["codec_options"])
    net.load_state_dict(weights_file.load_state(registry.weights_dir() / f"{name}.safetensors"))
    return net.eval()


def swapped_codec(net: LsqHyperprior, codec: str, **options) -> LatentCodec:
    """``codec`` for the model's M channels; ValueError unless it reads the same parameters."""
    other = make_latent_codec(codec, net.M, **options).eval()
    own = net.latent_codec
    if (type(own).planes, own.hyper_channels) != (type(other).planes, other.hyper_channels):
        raise ValueError(f"{codec!r} reads other hyper parameters than {net.quantizer!r} "
                         f"({type(other).planes} per block against {type(own).planes})")
    return other


@contextmanager
def swapped_in(net: LsqHyperprior, codec: LatentCodec) -> Iterator[None]:
    """``codec`` in place of the model's own latent codec, which is put back after."""
    own, net.latent_codec = net.latent_codec, codec
    try:
        yield
    finally:
        net.latent_codec = own


@torch.no_grad()
def rate_and_psnr(net: LsqHyperprior, codec: LatentCodec, images: list[torch.Tensor],
                  quality: float) -> tuple[float, float]:
    """Mean bpp (the model's -log2 P of y and z) and PSNR of the mean MSE, with ``codec``."""
    bits = mse = 0.0
    with swapped_in(net, codec):
        for x in images:
            out = net(x, quality=quality)
            rate = sum(-torch.log2(lik).sum().item() for lik in out["likelihoods"].values())
            bits += rate / (x.shape[2] * x.shape[3])
            mse += (out["x_hat"].clamp(0, 1) - x).square().mean().item()
    return bits / len(images), 10 * math.log10(len(images) / mse)


@contextmanager
def lattice_share(codec: LeechHybridLatentCodec) -> Iterator[Callable[[], tuple[float, float]]]:
    """While open, counts y's blocks, and y's bits (-log2 P), that ``codec``'s forward passes
    put on Λ24; yields the function that gives their shares, so the pass that measures the
    rate measures the share too."""
    counts = torch.zeros(4, dtype=torch.float64)

    def count(module: LeechHybridLatentCodec, inputs: tuple, output: tuple) -> None:
        chosen = module.lattice_blocks(inputs[1].chunk(2, 1)[0])
        bits = to_blocks(-torch.log2(output[1]["y"]))
        counts.add_(torch.stack([chosen.sum(), torch.tensor(chosen.numel()),
                                 (bits * chosen).sum(), bits.sum()]).double())

    handle = codec.register_forward_hook(count)
    try:
        yield lambda: (float(counts[0] / counts[1]), float(counts[2] / counts[3]))
    finally:
        handle.remove()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lsq.tools.swap_latent_codec")
    parser.add_argument("--model", required=True, help="a shipped model, e.g. scalar")
    parser.add_argument("--codec", required=True, help="the latent codec to swap in, e.g. leech")
    parser.add_argument("--dataset", type=Path, default=Path("../shared/data/kodak"))
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--above", type=float, default=None,
                        help="leech-hybrid: Λ24 on blocks whose mean predicted scale exceeds this")
    args = parser.parse_args(argv)
    if args.above is not None and args.codec != "leech-hybrid":
        sys.exit("swap_latent_codec: --above applies to --codec leech-hybrid only")
    try:
        net = load_trainable(args.model)
        options = {} if args.above is None else {"above": args.above}
        codec = swapped_codec(net, args.codec, **options)
    except (registry.RegistryError, registry.UnknownModelError, ValueError) as e:
        sys.exit(f"swap_latent_codec: {e}")
    images = first_pngs(args.dataset, args.images)
    if not images:
        sys.exit(f"swap_latent_codec: no PNG images in {args.dataset}")
    print(f"{args.model}'s latents, {len(images)} images: own codec against {args.codec}")
    hybrid = next((c for c in (net.latent_codec, codec)
                   if isinstance(c, LeechHybridLatentCodec)), None)
    wide = len(args.codec) + 4
    print(f"{'quality':>7} {'own bpp':>8} {'own dB':>7} {args.codec + ' bpp':>{wide}} "
          f"{args.codec + ' dB':>{wide}} {'bits ratio':>10}"
          + ("  Λ24 blocks, bits (leech-hybrid)" if hybrid else ""))
    own_curve, curve = [], []
    for q in range(net.gains.low, net.gains.high + 1):
        with lattice_share(hybrid) if hybrid else nullcontext(None) as shares:
            own_curve.append(rate_and_psnr(net, net.latent_codec, images, float(q)))
            curve.append(rate_and_psnr(net, codec, images, float(q)))
        (own_bpp, own_db), (bpp, db) = own_curve[-1], curve[-1]
        share = ""
        if shares:
            blocks, bits = shares()
            share = f"  {100 * blocks:5.1f} %, {100 * bits:5.1f} %"
        print(f"{q:>7} {own_bpp:>8.4f} {own_db:>7.2f} {bpp:>{wide}.4f} {db:>{wide}.2f} "
              f"{bpp / own_bpp:>10.3f}{share}")
    print(f"BD-rate (PSNR) against the own codec: "
          f"{bd_rate(*zip(*own_curve, strict=True), *zip(*curve, strict=True)):+.2f} %")


if __name__ == "__main__":
    main()
