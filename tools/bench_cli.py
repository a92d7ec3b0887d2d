"""Wall time of the `lsq` command line against the bare `import torch` it cannot avoid.

    python -m lsq.tools.bench_cli [--image eval/sample/kodim23.png] [--repeat 5]

Runs, as a user would, the installed `lsq` console script (or `python -m lsq.cli.main` when
there is none): `encode` of the image, `decode` of the result, `info` and `--help`, each
`--repeat` times interleaved with `python -c "import torch"`, and prints the median walls,
the excess of encode and decode over importing torch, their ratio to it, and the issue's
targets (encode and decode within torch + 1.0 s, `--help` and `info` within 0.5 s).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SAMPLE = Path(__file__).resolve().parents[1] / "eval" / "sample" / "kodim23.png"
EXCESS_TARGET = 1.0  # seconds over `import torch` for encode and decode
FAST_TARGET = 0.5  # seconds for `--help` and `info`


def lsq_command() -> list[str]:
    """The console script beside this interpreter, else the module."""
    script = Path(sys.executable).with_name("lsq")
    return [str(script)] if script.exists() else [sys.executable, "-m", "lsq.cli.main"]


def wall(cmd: list[str]) -> float:
    """Seconds one command takes, start to exit; a failing command stops the benchmark."""
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed: {result.stderr.decode().strip()}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m lsq.tools.bench_cli")
    parser.add_argument("--image", type=Path, default=SAMPLE)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if not args.image.is_file():
        sys.exit(f"{args.image}: no such file (pass --image)")
    lsq = lsq_command()
    folder = Path(tempfile.mkdtemp(prefix="lsq-bench-"))
    try:
        stream, decoded = folder / "x.lsq", folder / "x.png"
        commands = {
            "import torch": [sys.executable, "-c", "import torch"],
            "lsq encode": [*lsq, "encode", str(args.image), "-o", str(stream), "--force"],
            "lsq decode": [*lsq, "decode", str(stream), "-o", str(decoded), "--force"],
            "lsq info": [*lsq, "info", str(stream)],
            "lsq --help": [*lsq, "--help"],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeat):
            for name, cmd in commands.items():  # in order: decode needs the encoded stream
                times[name].append(wall(cmd))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    med = {name: statistics.median(t) for name, t in times.items()}
    torch_s = med["import torch"]
    print(f"{args.image}, {args.repeat} runs each, median wall seconds ({' '.join(lsq)})")
    for name, seconds in med.items():
        lo, hi = min(times[name]), max(times[name])
        print(f"  {name:14} {seconds:6.2f}  (min {lo:.2f}, max {hi:.2f})")
    ok = True
    for name in ("lsq encode", "lsq decode"):
        excess = med[name] - torch_s
        passed = excess <= EXCESS_TARGET
        ok &= passed
        print(f"  {name}: {med[name] / torch_s:.2f}x import torch, excess {excess:+.2f} s "
              f"(target <= {EXCESS_TARGET:.1f} s): {'ok' if passed else 'MISSED'}")
    for name in ("lsq info", "lsq --help"):
        passed = med[name] <= FAST_TARGET
        ok &= passed
        print(f"  {name}: {med[name]:.2f} s (target <= {FAST_TARGET:.1f} s): "
              f"{'ok' if passed else 'MISSED'}")
    print("all targets met" if ok else "some targets missed")


if __name__ == "__main__":
    main()
