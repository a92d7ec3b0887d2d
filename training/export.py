"""Exported weights: a checkpoint's model, after ``update(force=True)``, as one safetensors
file whose config holds the ModelSpec verbatim beside the registry's keys and how the
weights were trained (totals, and the run's history: ``sessions``). ``python -m
lsq.training.export RUNS_DIR OUT_DIR`` exports the latest checkpoint of every run folder
(runs stopped by a time limit have no final export)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from lsq.models.spec import ModelSpec

from . import checkpoint, sessions

FINAL = "final.safetensors"
BEST = "best.safetensors"  # the best held-out validation so far
#: Default quality of a model trained from scratch, until Kodak calibrates it (about 0.5 bpp).
UNCALIBRATED_QUALITY = 2.75
META_KEYS = (
    "name", "family", "qualities", "default_quality", "codec_options", "N", "M", "spec",
    "steps", "images_seen", "batch", "crop", "data", "gpu_time", "lr_scale", "command",
    "sessions",
)


def export_weights(ckpt: str | os.PathLike | dict, out_path: str | os.PathLike,
                   meta: dict | None = None, half: bool = True) -> Path:
    """Save a checkpoint's model (a run folder or a loaded checkpoint) as safetensors.

    Integer buffers are stored exactly; with ``half`` the large float tensors as fp16 and the
    rest as fp32 (``lsq.models.weights_file``). ``meta`` overrides what the checkpoint gives.
    """
    from lsq.models.weights_file import save

    state = ckpt if isinstance(ckpt, dict) else checkpoint.load(ckpt)
    spec = ModelSpec.from_dict(state["spec"])
    cfg = state["config"]
    model = spec.build()
    model.load_state_dict(state["model"])
    model.update(force=True)
    start = sessions.from_checkpoint(state, cfg["out"])  # the accounting of older ones too
    full = {
        "name": state.get("name") or cfg.get("name") or Path(cfg["out"]).name,
        **spec.weights_config(),
        "default_quality": state.get("default_quality") or min(
            max(UNCALIBRATED_QUALITY, spec.qualities[0]), spec.qualities[1]),
        "steps": state["step"], "images_seen": start.images_seen,
        "batch": cfg["batch"], "crop": cfg["crop"], "data": state.get("data"),
        "gpu_time": round(state.get("elapsed_s", 0.0), 1),
        "lr_scale": state.get("lr_scale", 1.0), "command": state.get("command"),
        "sessions": start.history, **(meta or {}),
    }
    return save(model.state_dict(), out_path, full, half=half)


def export_run(run: Path, out_dir: Path) -> tuple[str, int, int]:
    """(name, steps, bytes) of the exported file ``out_dir/<run name>.safetensors``."""
    state = checkpoint.load(run)
    out = export_weights(state, out_dir / f"{run.name}.safetensors")
    return run.name, state["step"], out.stat().st_size


def main(argv: Sequence[str] | None = None) -> None:
    """Export every run; a run that cannot be exported is reported and skipped (exit 1)."""
    parser = argparse.ArgumentParser(prog="python -m lsq.training.export")
    parser.add_argument("runs", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    if not args.runs.is_dir():
        parser.exit(2, f"export: {args.runs} is not a folder\n")
    runs = sorted(p for p in args.runs.iterdir() if p.is_dir() and checkpoint.exists(p))
    failed = 0
    # spawn, not fork: a forked child of a process whose torch thread pools have started
    # can deadlock in its first torch call
    with ProcessPoolExecutor(min(8, os.cpu_count() or 1), get_context("spawn")) as pool:
        futures = {run.name: pool.submit(export_run, run, args.out) for run in runs}
        for run_name, future in futures.items():
            try:
                name, steps, size = future.result()
            except Exception as error:  # noqa: BLE001 - one bad run must not cost the others
                failed += 1
                print(f"{run_name}: not exported ({type(error).__name__}: {error})")
                continue
            print(f"{name}: {steps} steps, {size / 2**20:.1f} MiB")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
