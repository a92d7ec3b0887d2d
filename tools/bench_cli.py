"""Start-up and wall time of the `lsq` command line, as a user meets it, with peak memory.

    python -m lsq.tools.bench_cli [--image /work/shared/data/kodak/kodim01.png] [--repeat 3]
                                  [--threads N]

Runs the installed `lsq` console script (or `python -m lsq.cli.main` when there is none)
under ``/usr/bin/time -v``: `--help`, `info`, `eval --help`, `encode` of the image, `decode`
of the result, and the errors that must come before the model loads (`--device cuda`
without CUDA, an output folder it cannot write, a `--max-pixels` refusal), each `--repeat`
times interleaved with `python -c "import torch"`. Prints the minimum wall time of each (the
machine may be shared: the minimum is the least disturbed run), its peak resident memory,
and the targets: encode and decode within 0.5 s of `import torch`, `--help` and `info`
within 0.2 s. Then the same image coded in-process with the model loaded (`bench_codec`'s
measurement, same threads): what start-up adds is the command's time less `import torch`
and that.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KODIM01 = Path("/work/shared/data/kodak/kodim01.png")
SAMPLE = Path(__file__).resolve().parents[1] / "eval" / "sample" / "kodim23.png"
EXCESS_TARGET = 0.5  # seconds over `import torch` for encode and decode
FAST_TARGET = 0.2  # seconds for `--help` and `info`
TIME = "/usr/bin/time"


def lsq_command() -> list[str]:
    """The console script beside this interpreter, else the module."""
    script = Path(sys.executable).with_name("lsq")
    return [str(script)] if script.exists() else [sys.executable, "-m", "lsq.cli.main"]


def unwritable_folder(scratch: Path) -> Path:
    """A folder no file can be created in; root ignores permission bits, /sys refuses it."""
    if os.geteuid() == 0:
        return Path("/sys")
    folder = scratch / "readonly"
    folder.mkdir()
    folder.chmod(0o500)
    return folder


#: A run ends well with exit 0 and any output, or as the error it is there to time.
SUCCEEDS = ((0, ""),)
#: Without lsq[eval], `lsq eval` says so in one line; both outcomes are timed.
EVAL_OUTCOMES = (*SUCCEEDS, (1, 'pip install "lsq[eval]"'))


def measure(cmd: list[str], outcomes: tuple[tuple[int, str], ...],
            env: dict[str, str]) -> tuple[float, int, int]:
    """(wall seconds, peak RSS in MB, exit code) of one run; a run that ends otherwise than
    one of `outcomes` (exit code, words its stderr holds) stops the benchmark."""
    start = time.perf_counter()
    result = subprocess.run([TIME, "-v", *cmd], capture_output=True, env=env)
    elapsed = time.perf_counter() - start
    err = result.stderr.decode()
    report = err.rpartition("\tCommand being timed:")[2]
    message = err.rpartition("\tCommand being timed:")[0].strip()
    if not any(result.returncode == code and words in message for code, words in outcomes):
        sys.exit(f"{' '.join(cmd)}: exit {result.returncode}: {message}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", report)
    return elapsed, int(rss.group(1)) // 1024 if rss else -1, result.returncode


def in_process(image: Path, scratch: Path, repeat: int, env: dict[str, str]) -> dict[str, float]:
    """Best wall seconds of encode and decode in one process with the model loaded
    (``bench_codec``'s children: a warm-up run, then the best of ``repeat``)."""
    seconds = {}
    for direction in ("encode", "decode"):
        cmd = [sys.executable, "-m", "lsq.tools.bench_codec", "--child", direction,
               "--child-image", str(image), "--child-stream", str(scratch / "in-process.lsq"),
               "--repeat", str(repeat)]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode:
            sys.exit(f"in-process {direction} failed: {done.stderr.strip()}")
        seconds[direction] = json.loads(done.stdout.strip().splitlines()[-1])["seconds"]
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m lsq.tools.bench_cli")
    parser.add_argument("--image", type=Path, default=KODIM01 if KODIM01.is_file() else SAMPLE)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="pass --threads N to encode and decode")
    args = parser.parse_args()
    if not args.image.is_file():
        sys.exit(f"{args.image}: no such file (pass --image)")
    if not Path(TIME).is_file():
        sys.exit(f"{TIME} is needed for the peak memory (apt-get install time)")
    lsq = lsq_command()
    threads = [] if args.threads is None else ["--threads", str(args.threads)]
    scratch = Path(tempfile.mkdtemp(prefix="lsq-bench-"))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    no_cuda = {**env, "CUDA_VISIBLE_DEVICES": ""}
    try:
        stream, decoded = scratch / "x.lsq", scratch / "x.png"
        locked = unwritable_folder(scratch) / "x.lsq"
        image = str(args.image)
        commands = {  # name -> (command, how it may end, environment)
            "import torch": ([sys.executable, "-c", "import torch"], SUCCEEDS, env),
            "lsq --help": ([*lsq, "--help"], SUCCEEDS, env),
            "lsq encode": ([*lsq, "encode", image, "-o", str(stream), "--force", *threads],
                           SUCCEEDS, env),
            "lsq decode": ([*lsq, "decode", str(stream), "-o", str(decoded), "--force",
                            *threads], SUCCEEDS, env),
            "lsq info": ([*lsq, "info", str(stream)], SUCCEEDS, env),
            "lsq eval --help": ([*lsq, "eval", "--help"], EVAL_OUTCOMES, env),
            "--device cuda error": ([*lsq, "encode", image, "-o", str(scratch / "c.lsq"),
                                     "--device", "cuda"], ((1, "CUDA is not available"),),
                                    no_cuda),
            "unwritable output": ([*lsq, "encode", image, "-o", str(locked)],
                                  ((1, "cannot write in folder"),), env),
            "--max-pixels refusal": ([*lsq, "decode", str(stream), "-o",
                                      str(scratch / "m.png"), "--max-pixels", "1000"],
                                     ((1, "exceeds the decoding limit"),), env),
        }
        runs: dict[str, list[tuple[float, int, int]]] = {name: [] for name in commands}
        for _ in range(args.repeat):
            for name, (cmd, outcomes, cmd_env) in commands.items():  # decode needs encode
                runs[name].append(measure(cmd, outcomes, cmd_env))
        coding_env = {"OMP_WAIT_POLICY": "PASSIVE", **env}  # as the command runs torch
        if args.threads is not None:
            coding_env["OMP_NUM_THREADS"] = str(args.threads)
        coding = in_process(args.image, scratch, args.repeat, coding_env)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    best = {name: min(r) for name, r in runs.items()}
    print(f"{args.image}, {args.repeat} runs each, minimum wall seconds and peak RSS "
          f"({' '.join(lsq)}{' ' + ' '.join(threads) if threads else ''}, "
          f"load {os.getloadavg()[0]:.1f})")
    for name, (seconds, _, code) in best.items():
        rss = max(mb for _, mb, _ in runs[name])
        note = "  (exit 1: lsq[eval] not installed)" if name == "lsq eval --help" and code else ""
        print(f"  {name:22} {seconds:6.2f} s  (max {max(r[0] for r in runs[name]):.2f})  "
              f"{rss:5d} MB{note}")
    torch_s = best["import torch"][0]
    ok = True
    print(f"  in-process, model loaded: encode {coding['encode']:.2f} s, "
          f"decode {coding['decode']:.2f} s")
    for name in ("lsq encode", "lsq decode"):
        excess = best[name][0] - torch_s
        ok &= excess <= EXCESS_TARGET
        start_up = excess - coding[name.split()[1]]
        print(f"  {name}: import torch {excess:+.2f} s (target <= +{EXCESS_TARGET:.1f} s): "
              f"{'ok' if excess <= EXCESS_TARGET else 'MISSED'}; "
              f"import torch + in-process {start_up:+.2f} s")
    for name in ("lsq info", "lsq --help"):
        seconds = best[name][0]
        ok &= seconds <= FAST_TARGET
        print(f"  {name}: {seconds:.2f} s (target <= {FAST_TARGET:.1f} s): "
              f"{'ok' if seconds <= FAST_TARGET else 'MISSED'}")
    print("all targets met" if ok else "some targets missed")


if __name__ == "__main__":
    main()
