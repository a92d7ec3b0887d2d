"""Blocks per second through the exact range coders, encoding and decoding, on CPU.

    python -m lsq.tools.bench_entropy [--blocks 12000] [--repeat 3]

12,000 blocks is one 768x512 image at 192 latent channels. Scales and means are drawn
like a trained model's (integer frame). ``leech``: any lattice point (``LeechCoder``), scales
0.3 .. 30, means within a few units. ``shell``: first-shell points of the spherical quantizer
(``ShellCoder``), scales 0.25 .. 4, means near the shell (norm sqrt(32)).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from lsq.codec import leech, tables
from lsq.codec.entropy_coding import Decoder, Encoder, LeechCoder, mean_index, scale_index
from lsq.codec.shell_coding import ShellCoder


def _leech_case(rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
    sigma = np.exp(rng.uniform(math.log(0.3), math.log(30), (n, 24)))
    mean = rng.normal(0, 3, (n, 24))
    scale = scale_index(sigma, tables.theta_tables())
    mean_q = mean_index(mean)
    y = mean_q / tables.MEAN_GRID + tables.THETA_SCALES[scale] * rng.normal(size=(n, 24))
    return leech.nearest(torch.from_numpy(y)).numpy(), scale, mean_q


def _shell_case(rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
    sigma = np.exp(rng.uniform(math.log(0.25), math.log(4), (n, 24)))
    u = rng.normal(size=(n, 24))
    mean = u * math.sqrt(32) / np.linalg.norm(u, axis=1, keepdims=True)
    mean += 0.5 * rng.normal(size=(n, 24))
    scale = scale_index(sigma, tables.theta_tables())
    mean_q = mean_index(mean)
    y = torch.from_numpy(mean + 0.3 * rng.normal(size=(n, 24)))
    return leech.nearest_shell(y)[1].numpy(), scale, mean_q


def _measure(coder: LeechCoder | ShellCoder, points: np.ndarray, scale: np.ndarray,
             mean_q: np.ndarray, repeat: int) -> tuple[float, float, float]:
    """Best encode and decode seconds over ``repeat`` round trips, and bits per block."""
    enc_s, dec_s = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        enc = Encoder()
        coder.encode(enc, points, scale, mean_q)
        data = enc.finish()
        enc_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        out = coder.decode(Decoder(data), scale, mean_q)
        dec_s.append(time.perf_counter() - t)
        if not np.array_equal(out, points):
            raise SystemExit("round trip failed")
    return min(enc_s), min(dec_s), len(data) * 8 / len(points)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m lsq.tools.bench_entropy")
    parser.add_argument("--blocks", type=int, default=12_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    n = args.blocks
    print(f"{n} blocks, torch threads {torch.get_num_threads()}, best of {args.repeat}")
    for name, case, coder in (("leech", _leech_case, LeechCoder()),
                              ("shell", _shell_case, ShellCoder())):
        enc, dec, bits = _measure(coder, *case(np.random.default_rng(0), n), args.repeat)
        print(f"{name}: encode {n / enc:,.0f} blocks/s, decode {n / dec:,.0f} blocks/s, "
              f"{bits:.2f} bits/block")


if __name__ == "__main__":
    main()
