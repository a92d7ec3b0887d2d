"""Training throughput: images/s (and TFLOP/s) of the crop sampler and of full training steps.

    python -m lsq.tools.bench_train --quantizer leech --batch 16 --steps 50 [--data SHARDS]
                                    [--preset NAME] [--context channel-groups
                                    [--group-transform full] [--checkerboard]] [--bf16]
                                    [--channels-last]
                                    [--compile inductor] [--compile-transforms MODE]
                                    [--ratio] [--seconds S]

Without --data it crops synthetic 500x375 images, which costs the sampler the same work.
TFLOP/s counts the convolution and matrix FLOPs of one forward+backward
(``torch.utils.flop_counter.FlopCounterMode`` on the eager model, once) per timed image.
``--seconds`` times training steps for a fixed wall time instead of a fixed count, so that
processes sharing a GPU (``lsq.tools.bench_share``) are timed over the same window.
On the GPU machine it needs the carried wheels too: building a model imports constriction.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from multiprocessing.synchronize import Barrier

import numpy as np
import torch
from torch import nn

from lsq.models.shards import load_images
from lsq.models.spec import ModelSpec, preset
from lsq.training.config import COMPILE_MODES
from lsq.training.data import CropSampler
from lsq.training.loss import RateDistortionLoss
from lsq.training.step import Optimizers, train_step
from lsq.training.throughput import prepare


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


def model_spec(args: argparse.Namespace) -> ModelSpec:
    """The benchmarked model: ``--preset``, else the quantizer and context flags."""
    if args.preset:
        return preset(args.preset)
    options = {} if args.group_transform == "separable" else {
        "group_transform": args.group_transform}
    if args.checkerboard:
        options["checkerboard"] = True
    return ModelSpec(args.quantizer, args.N, args.M, context=args.context,
                     codec_options=options)


def step_flops(model: nn.Module, x: torch.Tensor) -> float:
    """FLOPs of one forward+backward of the rate-distortion loss on ``x``."""
    from torch.utils.flop_counter import FlopCounterMode

    q = model.gains.sample(x.shape[0], x.device)
    with FlopCounterMode(display=False) as counter:
        RateDistortionLoss()(model(x, q), x, q)["loss"].backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def bench(args: argparse.Namespace, barrier: Barrier | None = None) -> dict:
    """Warm up, then time ``args.steps`` sampler calls and training steps (training steps for
    ``args.seconds`` if positive); with ``barrier``, the timed training steps start when
    every process sharing it has warmed up. Adds ``tflops`` (of the training steps)."""
    device = torch.device(args.device if args.device != "auto" else
                          ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.data:
        images = load_images(args.data, None)
    else:
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, (375, 500, 3), dtype=np.uint8) for _ in range(64)]
    sampler = CropSampler(images, args.crop, device, 0.5, (0, 0))
    torch.manual_seed(0)
    model: nn.Module = model_spec(args).build().to(device)
    flops = step_flops(model, sampler.sample(args.batch)) / args.batch
    model = prepare(model, device, args.bf16, args.channels_last, args.compile,
                    args.compile_transforms)
    opts = Optimizers(model, 1e-4, 1e-3)

    def step() -> None:
        train_step(model, model, sampler.sample(args.batch), opts,
                   channels_last=args.channels_last)

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
    results["tflops"] = results["train_step"] * flops / 1e12
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The model and step flags, shared with ``lsq.tools.bench_share``."""
    parser.add_argument("--preset", default="", help="a named model of lsq.models.spec "
                        "(overrides the model flags)")
    parser.add_argument("--context", default="none", help="none | channel-groups")
    parser.add_argument("--group-transform", default="separable", help="separable | full")
    parser.add_argument("--checkerboard", action="store_true",
                        help="a checkerboard spatial context in every channel group")
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
    try:
        spec = model_spec(args)
        results = bench(args)
    except ValueError as e:  # SpecError: a bad preset or model flag
        sys.exit(f"bench_train: {e}")
    print(f"{args.preset or args.quantizer} {spec.to_dict()} batch={args.batch} "
          f"crop={args.crop} bf16={args.bf16} channels_last={args.channels_last} "
          f"compile={args.compile or 'off'} "
          f"compile_transforms={args.compile_transforms or 'off'}: "
          f"sampler {results['sampler']:.0f} images/s, train_step "
          f"{results['train_step']:.0f} images/s, {results['tflops']:.2f} TFLOP/s")
    if args.ratio:
        scalar = bench(argparse.Namespace(**{**vars(args), "quantizer": "scalar", "preset": "",
                                               "context": "none",
                                               "group_transform": "separable",
                                               "checkerboard": False}))
        print(f"scalar: train_step {scalar['train_step']:.0f} images/s; {args.quantizer} step "
              f"time / scalar step time = {scalar['train_step'] / results['train_step']:.2f}")


if __name__ == "__main__":
    main()
