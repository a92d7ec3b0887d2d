"""Aggregate training throughput of several models sharing one device.

    python -m lsq.tools.bench_share --quantizers leech,scalar,leech-hybrid,spherical-leech
                                    --seconds 60 [bench_train flags: --compile inductor
                                    --compile-transforms reduce-overhead --channels-last ...]

One process per quantizer, each a ``bench_train`` run; after every process has warmed up
(compilation included) a barrier releases them together and each counts its training steps
for the same ``--seconds`` of wall time, so the images/s add up to what the models achieve
side by side. Sums of separate runs overstate it: their timed windows need not overlap. On a
GPU, start CUDA MPS (``nvidia-cuda-mps-control -d``) first, as training does.
``--seconds 0`` times a fixed ``--steps`` per process instead, released together as well:
the same work whatever the machine's speed (the tests use it), but a process that finishes
first leaves the others to share the device, so the sum is less exact.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import queue
import sys
from collections.abc import Sequence
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from threading import BrokenBarrierError

from lsq.tools.bench_train import add_arguments, bench

#: How long a process waits for the others to warm up (compilation can take minutes).
BARRIER_TIMEOUT_S = 900


def _run(args: argparse.Namespace, barrier: Barrier, results: Queue) -> None:
    try:
        results.put((args.quantizer, bench(args, barrier)["train_step"], ""))
    except BrokenBarrierError:
        results.put((args.quantizer, 0.0, "another process failed or timed out"))
    except Exception as e:  # reported by the parent, which exits non-zero
        barrier.abort()
        results.put((args.quantizer, 0.0, f"{type(e).__name__}: {e}"))


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Run the processes and print their images/s; returns them by quantizer (a name that
    repeats keeps its last process's figure)."""
    parser = argparse.ArgumentParser(prog="python -m lsq.tools.bench_share", description=__doc__)
    parser.add_argument("--quantizers", default="leech,scalar,leech-hybrid,spherical-leech",
                        help="one process per name, separated by commas (a name may repeat)")
    add_arguments(parser)
    parser.set_defaults(seconds=30.0)
    args = parser.parse_args(argv)
    names = [q for q in args.quantizers.split(",") if q]
    if not names or args.seconds < 0 or (args.seconds == 0 and args.steps < 1):
        parser.error("give at least one quantizer and a positive --seconds (or --seconds 0 "
                     "and a positive --steps)")
    ctx = mp.get_context("spawn")  # CUDA cannot be shared across fork
    barrier = ctx.Barrier(len(names), timeout=BARRIER_TIMEOUT_S)
    results = ctx.Queue()
    procs = [ctx.Process(target=_run, args=(argparse.Namespace(**{**vars(args), "quantizer": q}),
                                            barrier, results)) for q in names]
    for p in procs:
        p.start()
    try:  # a process that dies without reporting breaks the barrier, not this wait
        rows = [results.get(timeout=BARRIER_TIMEOUT_S + args.seconds + 300) for _ in procs]
    except queue.Empty:
        for p in procs:
            p.kill()
        sys.exit("bench_share: a process died without reporting")
    for p in procs:
        p.join()
    failed = [f"{q}: {err}" for q, _, err in rows if err]
    if failed:
        sys.exit("bench_share: " + "; ".join(failed))
    for q, rate, _ in sorted(rows):
        print(f"{q}: {rate:.1f} images/s")
    window = f"{args.seconds:g} s" if args.seconds > 0 else f"{args.steps} steps each"
    print(f"together: {sum(rate for _, rate, _ in rows):.1f} images/s over {window} "
          f"({len(names)} processes, batch {args.batch}, crop {args.crop})")
    return {q: rate for q, rate, _ in rows}


if __name__ == "__main__":
    main()
