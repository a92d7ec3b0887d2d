"""Two training runs compared on their held-out validation rows: a recipe or codec A/B.

    python -m lsq.tools.compare_runs A/log.jsonl:BATCH_A B/log.jsonl:BATCH_B [--steps 17000,18000]

BD-PSNR and BD-rate (``bjontegaard``, Akima) of B against A over the qualities both logs
validate (all, the lower half, the upper half), at equal training time (each run's last
validation row) and at equal crops (each run's row nearest to the crops the shorter run
reached); with ``--steps``, at equal crops at each of B's steps listed instead.
BATCH is the run's crops per step (times its GPUs), which the log does not record. A run
trained over several sessions may name its logs joined by commas (``s3.jsonl,s4.jsonl:128``):
where two hold the same step, the later log's row counts.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import bjontegaard as bd


def validation_rows(path: str | Path) -> list[dict]:
    """The validation records (those with ``val_images``) of a run's ``log.jsonl``."""
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if "val_images" in r]


def qualities(row: dict) -> list[int]:
    return sorted(int(k.removeprefix("val_bpp_q")) for k in row if k.startswith("val_bpp_q"))


def rd_curves(rows: Sequence[dict], qs: Sequence[int]) -> list[tuple[list, list]]:
    """(bpp values, PSNR values) of each validation row over qualities ``qs``."""
    return [([r[f"val_bpp_q{q}"] for q in qs], [r[f"val_psnr_q{q}"] for q in qs]) for r in rows]


def bd_delta(anchor: dict, test: dict, qs: Sequence[int]) -> tuple[float, float]:
    """(BD-PSNR in dB, BD-rate in %) of ``test`` against ``anchor`` over qualities ``qs``."""
    curves = rd_curves((anchor, test), qs)
    with warnings.catch_warnings():  # little overlap is reported through the figures
        warnings.simplefilter("ignore")
        return (float(bd.bd_psnr(*curves[0], *curves[1], method="akima")),
                float(bd.bd_rate(*curves[0], *curves[1], method="akima")))


def compare(anchor: dict, test: dict) -> dict[str, tuple[float, float]]:
    """BD figures over all common qualities and over their lower and upper halves."""
    qs = sorted(set(qualities(anchor)) & set(qualities(test)))
    if len(qs) < 4:
        raise ValueError("BD figures need validation at four common qualities or more")
    half = len(qs) // 2
    out = {f"q{qs[0]}-{qs[-1]}": bd_delta(anchor, test, qs)}
    if half >= 4:
        out[f"q{qs[0]}-{qs[half - 1]}"] = bd_delta(anchor, test, qs[:half])
        out[f"q{qs[half]}-{qs[-1]}"] = bd_delta(anchor, test, qs[half:])
    return out


def _run(spec: str) -> tuple[str, list[dict], int]:
    paths, _, batch = spec.rpartition(":")
    if not paths or not batch.isdigit() or int(batch) < 1:
        raise ValueError(f"{spec!r}: expected LOG.jsonl:BATCH")
    by_step = {r["step"]: r for path in paths.split(",") for r in validation_rows(path)}
    if not by_step:
        raise ValueError(f"{paths}: no validation rows")
    return paths, [by_step[s] for s in sorted(by_step)], int(batch)


def _nearest(rows: Sequence[dict], batch: int, crops: int) -> dict:
    return min(rows, key=lambda r: abs(r["step"] * batch - crops))


def _steps(text: str) -> list[int]:
    try:
        steps = [int(s) for s in text.split(",")]
    except ValueError:
        steps = []
    if not steps or min(steps) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected steps such as 17000,18000")
    return steps


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("anchor", help="LOG.jsonl:BATCH of run A")
    parser.add_argument("test", help="LOG.jsonl:BATCH of run B")
    parser.add_argument("--steps", type=_steps,
                        help="B's steps (comma-separated) to compare at, each at equal crops")
    args = parser.parse_args(argv)
    try:
        (pa, ra, ba), (pb, rb, bb) = _run(args.anchor), _run(args.test)
        if args.steps:
            cases = []
            for step in args.steps:
                row_b = next((r for r in rb if r["step"] == step), None)
                if row_b is None:
                    raise ValueError(f"{pb}: no validation row at step {step}")
                cases.append(("equal crops", (_nearest(ra, ba, step * bb), row_b)))
        else:
            last_a, last_b = ra[-1], rb[-1]
            crops = min(last_a["step"] * ba, last_b["step"] * bb)
            cases = [("equal time (last rows)", (last_a, last_b)),
                     ("equal crops", (_nearest(ra, ba, crops), _nearest(rb, bb, crops)))]
        for label, (row_a, row_b) in cases:
            print(f"at {label}: A {pa} step {row_a['step']}, {row_a['step'] * ba:,} crops; "
                  f"B {pb} step {row_b['step']}, {row_b['step'] * bb:,} crops")
            for span, (dpsnr, drate) in compare(row_a, row_b).items():
                print(f"  {span}: BD-PSNR {dpsnr:+.3f} dB, BD-rate {drate:+.2f} %")
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f"compare_runs: {e}")


if __name__ == "__main__":
    main()
