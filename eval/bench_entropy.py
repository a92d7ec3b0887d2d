"""Leech blocks per second through the exact range coder, encoding and decoding, on CPU.

    python -m lsq.eval.bench_entropy [--blocks 12000] [--repeat 3]

12,000 blocks is one 768x512 image at 192 latent channels. Scales and means are drawn
like a trained model's (integer frame: scales 0.3 .. 30, means within a few units).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from lsq.codec import leech, tables
from lsq.codec.entropy_coding import Decoder, Encoder, LeechCoder, scale_index


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m lsq.eval.bench_entropy")
    parser.add_argument("--blocks", type=int, default=12_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n = args.blocks
    sigma = np.exp(rng.uniform(math.log(0.3), math.log(30), (n, 24)))
    mean = rng.normal(0, 3, (n, 24))
    scale = scale_index(sigma, tables.theta_tables())
    mean_q = np.floor(mean * tables.MEAN_GRID + 0.5).astype(np.int64)
    y = mean_q / tables.MEAN_GRID + tables.THETA_SCALES[scale] * rng.normal(size=(n, 24))
    points = leech.nearest(torch.from_numpy(y)).numpy()
    coder = LeechCoder()
    enc_s, dec_s = [], []
    for _ in range(args.repeat):
        t = time.perf_counter()
        enc = Encoder()
        coder.encode(enc, points, scale, mean_q)
        data = enc.finish()
        enc_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        out = coder.decode(Decoder(data), scale, mean_q)
        dec_s.append(time.perf_counter() - t)
        assert np.array_equal(out, points)
    print(f"{n} Leech blocks, {len(data) * 8 / n:.2f} bits/block, torch threads "
          f"{torch.get_num_threads()}")
    print(f"encode: {n / min(enc_s):,.0f} blocks/s (best of {args.repeat})")
    print(f"decode: {n / min(dec_s):,.0f} blocks/s (best of {args.repeat})")


if __name__ == "__main__":
    main()
