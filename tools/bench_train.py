"""Training throughput: images/s of the crop sampler alone and of full training steps.

    python -m lsq.tools.bench_train --quantizer leech --batch 16 --steps 50 [--data SHARDS]
                                    [--context channel-groups [--group-transform full]]
                                    [--compile inductor] [--compile-transforms MODE]
                                    [--channels-last] [--ratio] [--seconds S]

Without --data it crops synthetic 500x375 images, which costs the sampler the same work.
``--seconds`` times training steps for a fixed wall time instead of a fixed count, so that
processes sharing a GPU (``lsq.tools.bench_share``) are timed over the same window.
On the GPU machine it needs the carried wheels too: building a model imports constriction.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import time
from collections.abc import Callable, Sequence
from multiprocessing.synchronize import Barrier

import numpy as np
import torch
from torch import nn

from lsq.models.shards import load_images
from lsq.models.train import (
    COMPILE_MODES,
    CropSampler,
    TrainConfig,
    compile_transforms,
    default_builder,
    split_parameters,
    train_step,
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], None], steps: int, seconds: float, device: torch.device) -> float:
    """Calls per second of ``fn``: ``steps`` calls, or when ``seconds`` is positive as many as
    are issued in that much wall time (at least one; the final sync waits for them all)."""
    _sync(device)
    t = time.perf_counter()
    done = 0
    while (done < steps) if seconds <= 0 else (done == 0 or time.perf_counter() - t < seconds):
        fn()
        done += 1
    _sync(device)
    return done / (time.perf_counter() - t)


def bench(args: argparse.Namespace, barrier: Barrier | None = None) -> dict:
    """Warm up, then time ``args.steps`` sampler calls and training steps (training steps for
    ``args.seconds`` if positive); with ``barrier``, the timed training steps start when
    every process sharing it has warmed up."""
    device = torch.device(args.device if args.device != "auto" else
                          ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.data:
        images = load_images(args.data, "train")
    else:
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, (375, 500, 3), dtype=np.uint8) for _ in range(64)]
    sampler = CropSampler(images, args.crop, device, 0.5, (0, 0))
    torch.manual_seed(0)
    cfg = TrainConfig(quantizer=args.quantizer, context=args.context, N=args.N, M=args.M,
                      group_transform=args.group_transform, batch=args.batch, crop=args.crop,
                      channels_last=args.channels_last)
    model: nn.Module = default_builder(dataclasses.asdict(cfg)).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if args.compile:
        model.latent_codec.compile_rate(args.compile)
    if args.compile_transforms:
        compile_transforms(model, args.compile_transforms)
    main, aux = split_parameters(model)
    opt, aux_opt = torch.optim.Adam(main, lr=1e-4), torch.optim.Adam(aux, lr=1e-3)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16
                else contextlib.nullcontext())

    def step() -> None:
        train_step(model, model, sampler.sample(args.batch), opt, aux_opt, cfg, autocast)

    results = {}
    for name, fn in (("sampler", lambda: sampler.sample(args.batch)), ("train_step", step)):
        for _ in range(args.warmup):
            fn()
        seconds = 0.0
        if name == "train_step":
            seconds = args.seconds
            if barrier is not None:
                _sync(device)
                barrier.wait()
        results[name] = args.batch * _timed(fn, args.steps, seconds, device)
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The model and step flags, shared with ``lsq.tools.bench_share``."""
    parser.add_argument("--context", default="none", help="none | channel-groups")
    parser.add_argument("--group-transform", default="separable", help="separable | full")
    parser.add_argument("--N", type=int, default=128)
    parser.add_argument("--M", type=int, default=192)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--data", help="shard folder; default: synthetic images")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", default="", metavar="BACKEND",
                        help="torch.compile the latent codec's training rate (inductor); "
                             "the warm-up steps take the compilation")
    parser.add_argument("--compile-transforms", default="", metavar="MODE",
                        choices=("", *COMPILE_MODES),
                        help="torch.compile g_a, g_s, h_a, h_s (inductor) with this mode: "
                             "default, reduce-overhead (CUDA graphs), max-autotune")
    parser.add_argument("--seconds", type=float, default=0.0,
                        help="time training steps for this many seconds instead of --steps")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lsq.tools.bench_train", description=__doc__)
    parser.add_argument("--quantizer", default="scalar")
    add_arguments(parser)
    parser.add_argument("--ratio", action="store_true",
                        help="also time plain scalar in the same run and print the step-time "
                             "ratio")
    args = parser.parse_args(argv)
    results = bench(args)
    print(f"{args.quantizer} context={args.context} {args.group_transform} N={args.N} M={args.M} "
          f"batch={args.batch} crop={args.crop} bf16={args.bf16} "
          f"channels_last={args.channels_last} compile={args.compile or 'off'} "
          f"compile_transforms={args.compile_transforms or 'off'}: "
          + ", ".join(f"{k} {v:.0f} images/s" for k, v in results.items()))
    if args.ratio:
        scalar = bench(argparse.Namespace(**{**vars(args), "quantizer": "scalar",
                                               "context": "none",
                                               "group_transform": "separable"}))
        print(f"scalar: train_step {scalar['train_step']:.0f} images/s; {args.quantizer} step "
              f"time / scalar step time = {scalar['train_step'] / results['train_step']:.2f}")


if __name__ == "__main__":
    main()
