"""Throughput of the Leech decoders beside brute force, and the measured second moment G.

    python -m lsq.tools.bench_lattice --n 100000 --device cpu [--compile inductor]

Points/s of nearest and nearest_shell (float32 batches of --n) on CPU and, when available,
on CUDA (with warm-up and torch.cuda.synchronize); the brute-force references are timed on a
small batch. G = E||e||² / (24 V^(1/12)) with V = 8^12 the cell volume in the integer frame,
measured on data uniform over [0, 8)^24 (a period of Λ24, so the error is uniform on a cell).
``--compile`` adds the training loop's compiled searches (``leech.compiled_nearest`` and
``leech.compiled_nearest_shell``).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import torch

from lsq.codec import leech

ROUNDING_G = 1 / 12


def rate(fn: Callable[[torch.Tensor], object], x: torch.Tensor, repeats: int = 1) -> float:
    """Points per second of fn on x, after a warm-up call on a small slice."""
    fn(x[:256])
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn(x)
    sync()
    return repeats * x.shape[0] / (time.perf_counter() - start)


def second_moment(n: int, device: torch.device, gen: torch.Generator) -> float:
    """Normalized second moment of nearest on uniform data (float64)."""
    total = 0.0
    for start in range(0, n, 1 << 16):
        y = torch.rand(min(1 << 16, n - start), 24, generator=gen, dtype=torch.float64) * 8
        y = y.to(device)
        total += float(((y - leech.nearest(y)) ** 2).sum())
    return total / n / (24 * 8.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="batch size")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cpu and cuda)")
    parser.add_argument("--ref-n", type=int, default=2000, help="batch for brute force")
    parser.add_argument("--compile", default="", metavar="BACKEND",
                        help="also time leech.compiled_nearest(BACKEND), e.g. inductor")
    args = parser.parse_args()
    if args.device is not None:
        devices = [torch.device(args.device)]
    else:
        devices = [torch.device("cpu")] + [torch.device("cuda")] * torch.cuda.is_available()
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(args.n, 24, generator=gen) * 3

    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, batch {args.n}")
    for device in devices:
        x = y.to(device)
        ref = x[: args.ref_n]
        repeats = 1 if device.type == "cpu" else 10
        rows = [
            ("nearest", rate(leech.nearest, x, repeats)),
            ("nearest_reference (8,192 cosets)", rate(leech.nearest_reference, ref)),
            ("nearest_shell", rate(leech.nearest_shell, x, repeats)),
            ("nearest_shell_reference (196,560)", rate(leech.nearest_shell_reference, ref)),
        ]
        if args.compile:
            compiled = leech.compiled_nearest(args.compile)
            compiled(x)  # compiles for this device (the warm-up call in rate is shorter)
            rows.insert(1, (f"nearest, compiled ({args.compile})", rate(compiled, x, repeats)))
            compiled_shell = leech.compiled_nearest_shell(args.compile)
            compiled_shell(x)
            rows.insert(4, (f"nearest_shell, compiled ({args.compile})",
                            rate(compiled_shell, x, repeats)))
        for name, value in rows:
            print(f"{device.type:5s} {name:36s} {value:14,.0f} points/s")
        g = second_moment(max(args.n, 100_000), device, gen)
        gain = 10 * math.log10(ROUNDING_G / g)
        print(f"{device.type:5s} G(nearest) = {g:.5f}  (rounding {ROUNDING_G:.5f}; "
              f"granular gain {gain:.2f} dB; Λ24 theory ≈ 0.06577)")


if __name__ == "__main__":
    main()
