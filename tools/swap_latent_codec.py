"""Same latents, another quantizer: how much a model's transforms are made for its own.

    python -m lsq.tools.swap_latent_codec --model scalar --codec leech | leech-hybrid
        [--above SCALE] [--dataset ../shared/data/kodak] [--images 6]

At each integer quality the model's latent y and hyper parameters go once through its own
latent codec and once through CODEC put in its place (eval mode: hard quantization). For
each it prints the model's -log2 P in bits per pixel (y and z) and the PSNR. The swapped
model is the same ModelSpec with CODEC as its latent codec, holding every one of the
model's tensors, so CODEC must read the same hyper parameters as the model's own (a scale
and a mean per channel: `leech`, `scalar` and `leech-hybrid`); a channel-groups model keeps
its context networks and swaps the codec of every group. `leech-hybrid` puts Λ24 on the
blocks whose mean predicted scale exceeds ``--above`` (default 1) and rounds the others;
where it is one of the two codecs, a last column gives the share of y's blocks, and of y's
bits, that it puts on Λ24. What it measured on the shipped models: docs/experiments.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from torch import nn

from lsq.codec.quantizers import to_blocks
from lsq.eval.bdrate import bd_rate
from lsq.models import registry, weights_file
from lsq.models.hyperprior import LsqHyperprior
from lsq.models.latent_codecs.leech_hybrid import LeechHybridLatentCodec
from lsq.models.spec import ModelSpec
from lsq.tools.images import first_pngs


def load_trainable(name: str) -> LsqHyperprior:
    """A shipped model with its training-time modules (CompressAI's bottleneck), in eval mode."""
    spec = ModelSpec.from_weights_config(registry.get_config(name))
    state = weights_file.load_state(registry.weights_dir() / f"{name}.safetensors")
    return spec.load(state).eval()


def swapped_model(net: LsqHyperprior, codec: str, **options) -> LsqHyperprior:
    """``net`` with ``codec`` (and its ``options``) as its latent codec, holding ``net``'s
    tensors; ValueError unless ``codec`` reads the same parameters."""
    spec = dataclasses.replace(net.spec, latent_codec=codec,
                               codec_options={**net.spec.codec_options, **options})
    try:
        return spec.load(net.state_dict()).eval()
    except RuntimeError:
        raise ValueError(f"{codec!r} reads other hyper parameters than {net.quantizer!r} "
                         "(its tensors do not fit the model's)") from None


@torch.no_grad()
def rate_and_psnr(net: LsqHyperprior, images: list[torch.Tensor], quality: float
                  ) -> tuple[float, float]:
    """Mean bpp (the model's -log2 P of y and z) and PSNR of the mean MSE."""
    bits = mse = 0.0
    for x in images:
        out = net(x, quality=quality)
        rate = sum(-torch.log2(lik).sum().item() for lik in out["likelihoods"].values())
        bits += rate / (x.shape[2] * x.shape[3])
        mse += (out["x_hat"].clamp(0, 1) - x).square().mean().item()
    return bits / len(images), 10 * math.log10(len(images) / mse)


def hybrid_codecs(net: nn.Module) -> list[LeechHybridLatentCodec]:
    """The model's `leech-hybrid` codecs: its latent codec, or one per channel group."""
    return [m for m in net.modules() if isinstance(m, LeechHybridLatentCodec)]


@contextmanager
def lattice_share(net: nn.Module) -> Iterator[Callable[[], tuple[float, float]]]:
    """While open, counts y's blocks, and y's bits (-log2 P), that ``net``'s `leech-hybrid`
    codecs put on Λ24 in forward passes; yields the function that gives their shares, so the
    pass that measures the rate measures the share too."""
    counts = torch.zeros(4, dtype=torch.float64)

    def count(module: LeechHybridLatentCodec, inputs: tuple, output: tuple) -> None:
        chosen = module.lattice_blocks(inputs[1].chunk(2, 1)[0])
        bits = to_blocks(-torch.log2(output[1]["y"]))
        counts.add_(torch.stack([chosen.sum(), torch.tensor(chosen.numel()),
                                 (bits * chosen).sum(), bits.sum()]).double())

    handles = [codec.register_forward_hook(count) for codec in hybrid_codecs(net)]
    try:
        yield lambda: (float(counts[0] / counts[1]), float(counts[2] / counts[3]))
    finally:
        for handle in handles:
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
        other = swapped_model(net, args.codec, **options)
    except (registry.RegistryError, registry.UnknownModelError, ValueError) as e:
        sys.exit(f"swap_latent_codec: {e}")
    images = first_pngs(args.dataset, args.images)
    if not images:
        sys.exit(f"swap_latent_codec: no PNG images in {args.dataset}")
    print(f"{args.model}'s latents, {len(images)} images: own codec against {args.codec}")
    hybrid = next((m for m in (net, other) if hybrid_codecs(m)), None)
    wide = len(args.codec) + 4
    print(f"{'quality':>7} {'own bpp':>8} {'own dB':>7} {args.codec + ' bpp':>{wide}} "
          f"{args.codec + ' dB':>{wide}} {'bits ratio':>10}"
          + ("  Λ24 blocks, bits (leech-hybrid)" if hybrid else ""))
    own_curve, curve = [], []
    for q in range(net.gains.low, net.gains.high + 1):
        with lattice_share(hybrid) if hybrid else nullcontext(None) as shares:
            own_curve.append(rate_and_psnr(net, images, float(q)))
            curve.append(rate_and_psnr(other, images, float(q)))
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
