"""Heavy correctness check of the Leech decoders against brute force (prints mismatch counts).

    python -m lsq.tools.check_lattice --n 100000 --shell-n 10000 --device cpu

nearest is compared with exhaustive search over all 8,192 cosets (distance-wise, ties
allowed) in float64 and float32; nearest_shell with the best of all 196,560 minimal vectors;
the centred prior's log P on the device in float32 (the training rate) with the general
8,192-coset formula in float64 on the CPU (relative error above 1e-5 counts).
Exit status 1 when any count is non-zero.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from lsq.codec import leech
from lsq.codec.lattice_prior import leech_log_prob, leech_log_prob_centred

SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 100.0)
PRECISIONS = (("f64", torch.float64, 1e-9), ("f32", torch.float32, 1e-4))
"""(name, input dtype, tolerance on the squared distance / inner product: ties are allowed)."""


def hard_points(n: int, gen: torch.Generator) -> torch.Tensor:
    """Float32-representable test points: Gaussian over scales 0.1..100, uniform cube,
    midpoints between lattice neighbours (exact ties) and points just off those boundaries."""
    shell = torch.tensor(leech.first_shell(), dtype=torch.int64)
    k = n // 2 // len(SCALES)
    parts = [torch.randn(k, 24, generator=gen) * s for s in SCALES]
    parts.append((torch.rand(k, 24, generator=gen) - 0.5) * 16)
    rest = max(n - sum(len(p) for p in parts), 0)
    m = rest // 3 + 1
    base = shell[torch.randint(0, leech.SHELL_SIZE, (m, 6), generator=gen)].sum(1)
    step = shell[torch.randint(0, leech.SHELL_SIZE, (m,), generator=gen)]
    mid = (base + step / 2).float()
    noise = torch.randn(m, 24, generator=gen)
    parts += [mid, mid + 1e-5 * noise, mid + 1e-3 * noise]
    return torch.cat(parts)[:n]


def check_nearest(y32: torch.Tensor, device: torch.device, chunk: int = 4096) -> dict[str, int]:
    """Mismatch counts of nearest (float64 and float32) against exhaustive search."""
    counts = {"nearest_f64": 0, "nearest_f32": 0, "not_in_lattice": 0}
    for start in range(0, y32.shape[0], chunk):
        y = y32[start : start + chunk].to(device).double()
        ref = leech.nearest_reference(y)
        ref_d = ((y - ref) ** 2).sum(-1)
        for name, dtype, tol in PRECISIONS:
            got = leech.nearest(y.to(dtype))
            gap = ((y - got) ** 2).sum(-1) - ref_d
            counts[f"nearest_{name}"] += int((gap > tol).sum())
            counts["not_in_lattice"] += int((~leech.is_leech(got)).sum())
    return counts


def check_shell(n: int, gen: torch.Generator, device: torch.device) -> dict[str, int]:
    """Mismatch counts of nearest_shell against brute force over the whole first shell."""
    shell = torch.tensor(leech.first_shell(), dtype=torch.float64, device=device)
    sparse = torch.randn(n // 5, 24, generator=gen) * (torch.rand(n // 5, 24, generator=gen) < 0.2)
    u = torch.cat([torch.randn(n - n // 5, 24, generator=gen), sparse]).to(device)
    counts = {"shell_f64": 0, "shell_f32": 0, "shell_roundtrip": 0}
    for part in u.split(2048):
        best = (part.double() @ shell.T).amax(-1)
        for name, dtype, tol in PRECISIONS:
            index, point = leech.nearest_shell(part.to(dtype))
            got = (part.double() * point.double()).sum(-1)
            counts[f"shell_{name}"] += int((best - got > tol * best.abs().clamp(min=1)).sum())
            counts["shell_roundtrip"] += int((leech.shell_index(point) != index).sum())
    return counts


def check_prior(n: int, gen: torch.Generator, device: torch.device) -> dict[str, int]:
    """Blocks whose device float32 centred log P is off the CPU float64 reference by > 1e-5."""
    sigma = torch.exp(torch.empty(n, 24).uniform_(-1.5, 6.0, generator=gen)).double()
    x = leech.nearest(torch.randn(n, 24, generator=gen, dtype=torch.float64) * sigma).double()
    ref = leech_log_prob(x, torch.zeros_like(x), sigma)
    got = leech_log_prob_centred(x.to(device, torch.float32), sigma.to(device, torch.float32))
    rel = (got.double().cpu() - ref).abs() / ref.abs().clamp(min=1.0)
    print(f"prior: largest relative error of log P {float(rel.max()):.2e}")
    return {"prior_f32": int((rel > 1e-5).sum())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="points for nearest")
    parser.add_argument("--shell-n", type=int, default=10_000, help="directions for nearest_shell")
    parser.add_argument("--prior-n", type=int, default=20_000, help="blocks for the prior")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(args.seed)

    start = time.perf_counter()
    counts = check_nearest(hard_points(args.n, gen), device)
    counts.update(check_shell(args.shell_n, gen, device))
    counts.update(check_prior(args.prior_n, gen, device))
    index = torch.arange(leech.SHELL_SIZE, device=device)
    counts["shell_bijection"] = int((leech.shell_index(leech.shell_point(index)) != index).sum())
    for name, value in counts.items():
        print(f"{name:16s} mismatches: {value}")
    print(f"checked {args.n} points, {args.shell_n} directions on {device} "
          f"in {time.perf_counter() - start:.1f} s")
    return int(any(counts.values()))


if __name__ == "__main__":
    sys.exit(main())
