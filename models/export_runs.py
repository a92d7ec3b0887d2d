"""Export the latest checkpoint of every run folder to safetensors, in parallel.

    python -m lsq.models.export_runs RUNS_DIR OUT_DIR

Runs stopped by --max-minutes or --stop-step have no final export of their own. A run that
cannot be exported (a diverged one, say) is reported and skipped, so the others still come back.
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from lsq.models.train import checkpoint_exists, export_weights, load_checkpoint


def export_run(run: Path, out_dir: Path) -> tuple[str, int, int]:
    """(name, steps, bytes) of the exported file ``out_dir/<run name>.safetensors``."""
    state = load_checkpoint(run)
    out = export_weights(state, out_dir / f"{run.name}.safetensors",
                         {"gpu_time": round(state.get("elapsed_s", 0.0), 1)})
    return run.name, state["step"], out.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m lsq.models.export_runs")
    parser.add_argument("runs", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    runs = sorted(p for p in args.runs.iterdir() if p.is_dir() and checkpoint_exists(p))
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
