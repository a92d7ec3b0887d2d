"""Coded size of real images against the model's own -log2 P, for Leech models.

    python -m lsq.tools.check_rate [--dataset ../shared/data/kodak] [--images 4] [--model NAME]
        [--quality Q]

Each image's latent is coded as ``lsq encode`` codes it, and its size compared with the
exact -log2 P (``leech_log_prob``) of the same points under the same quantized parameters:
overall, and by how far each block's point lies from its mean (max_i |x_i - mu_i| / sigma_i),
each group coded on its own. The range coder gives every symbol at least 2^-24
(constriction's leaky quantization), so points far in the tails cost less than -log2 P;
closer in, the two agree.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lsq.codec import leech, tables
from lsq.codec.entropy_coding import Encoder, LeechCoder
from lsq.codec.lattice_prior import leech_log_prob
from lsq.codec.quantizers import BLOCK, to_blocks
from lsq.models import latent_coding, registry
from lsq.models.latent_codecs import LeechLatentCodec

GROUPS = ((0.0, 4.0), (4.0, 6.0), (6.0, math.inf))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m lsq.tools.check_rate")
    parser.add_argument("--dataset", type=Path, default=Path("../shared/data/kodak"))
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--model", default=None, help="a Leech model (default: the default)")
    parser.add_argument("--quality", type=float, default=None, help="default: the model's")
    args = parser.parse_args()
    config = registry.get_config(args.model or registry.default_name())
    net = registry.load(config["name"], "cpu").eval()
    quality = net.gains.check(registry.pick_quality(config, args.quality))
    if not isinstance(net.latent_codec, LeechLatentCodec):  # a context model codes per group
        sys.exit(f"check_rate measures plain Leech models; this one is {net.quantizer} "
                 f"({type(net.latent_codec).__name__})")
    paths = sorted(args.dataset.glob("*.png"))[: args.images]
    if not paths:
        sys.exit(f"no PNG images in {args.dataset}")
    print(f"{'image':<10} {'max|x-mu|/sigma':<16} {'blocks':>7} {'coded bits':>11} "
          f"{'-log2 P':>11} {'coded/ideal':>11}")
    for path in paths:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        x = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float().div(255)[None]
        with torch.inference_mode():
            y = net.g_a(x)[0] * net.gains.coding(quality).float()
            _, z_hat = latent_coding.encode_z(net.entropy_bottleneck, net.h_a(y[None])[0])
            params = latent_coding.integer_hyper_decode(net.h_s, z_hat[None])[0]
        codec = net.latent_codec
        s, mq, step = codec.coding_parameters(params)
        blocks = to_blocks(y[None].double()).reshape(-1, BLOCK)
        points = leech.nearest((blocks - codec.anchor(params)) / step).numpy()
        mu, sigma = mq / tables.MEAN_GRID, tables.THETA_SCALES[s]
        bits = -leech_log_prob(torch.from_numpy(points).double(), torch.from_numpy(mu),
                               torch.from_numpy(sigma)).numpy() / math.log(2)
        far = (np.abs(points - mu) / sigma).max(axis=1)
        rows = [("all", np.arange(len(points)))]
        rows += [(f"[{lo:g}, {hi:g})", np.flatnonzero((far >= lo) & (far < hi)))
                 for lo, hi in GROUPS]
        for label, which in rows:
            enc = Encoder()
            LeechCoder().encode(enc, points[which], s[which], mq[which])
            coded, ideal = 8 * len(enc.finish()), bits[which].sum()
            print(f"{path.stem:<10} {label:<16} {len(which):>7} {coded:>11,} {ideal:>11,.0f} "
                  f"{coded / max(ideal, 1e-9):>11.4f}")


if __name__ == "__main__":
    main()
