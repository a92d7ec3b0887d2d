"""How much a training session gained on the held-out slice: the stop rule of a recipe.

    python -m lsq.tools.heldout_gain NAME:STEP[-END]... [--logs models/weights/logs]
                                     [--crops-per-step 16]

For each model, BD-PSNR over the qualities its validation rows hold (``bjontegaard``, Akima)
from the last row of ``LOGS/NAME-val.csv`` at or before STEP (where the session started) to
the last row (or the last at or before END), and the same per 500,000 crops (the stop rule:
0.1 dB); a step is --crops-per-step crops (the batch times the GPUs; the shipped runs: 16).
END measures part of a session, e.g. up to its learning-rate drop.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import bjontegaard as bd

from lsq.models.training_log import read_csv
from lsq.tools.compare_runs import qualities, rd_curves

CROPS_PER_STEP = 16
PER_CROPS = 500_000


def gain(rows: Sequence[dict[str, float]], since: int,
         until: float = float("inf")) -> tuple[int, int, float]:
    """(first step, last step, BD-PSNR in dB) between the last row at or before ``since``
    and the last row at or before ``until`` (rows as ``training_log.read_csv`` gives them)."""
    before = [r for r in rows if r["step"] <= since]
    upto = [r for r in rows if r["step"] <= until]
    if not before or not upto or upto[-1] is before[-1]:
        raise ValueError(f"no validation row at or before step {since} and one after it"
                         + ("" if until == float("inf") else f", at or before {until:.0f}"))
    a, b = before[-1], upto[-1]
    qs = qualities(a)
    if len(qs) < 4:
        raise ValueError("BD-PSNR needs validation at four qualities or more")
    curves = rd_curves((a, b), qs)
    return a["step"], b["step"], float(bd.bd_psnr(*curves[0], *curves[1], method="akima"))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lsq.tools.heldout_gain", description=__doc__)
    parser.add_argument("runs", nargs="+", metavar="NAME:STEP[-END]")
    parser.add_argument("--logs", type=Path, default=Path("models/weights/logs"))
    parser.add_argument("--crops-per-step", type=int, default=CROPS_PER_STEP)
    args = parser.parse_args(argv)
    for spec in args.runs:
        name, _, steps = spec.partition(":")
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", steps)
        if not match:
            sys.exit(f"heldout_gain: {spec!r}: expected NAME:STEP or NAME:STEP-END, STEP the "
                     "session's first step")
        step, end = match.groups()
        try:
            first, last, db = gain(read_csv(args.logs / f"{name}-val.csv"), int(step),
                                   int(end) if end else float("inf"))
        except (OSError, ValueError, KeyError) as e:
            sys.exit(f"heldout_gain: {spec}: {e}")
        crops = (last - first) * args.crops_per_step
        print(f"{name}: step {first:,} -> {last:,}: {db:+.3f} dB over {crops / 1e3:.0f}k crops, "
              f"{db * PER_CROPS / max(crops, 1):+.3f} dB per {PER_CROPS // 1000}k")


if __name__ == "__main__":
    main()
