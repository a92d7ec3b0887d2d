"""End-to-end speed, peak memory and quality of `lsq` encode and decode.

    python -m lsq.tools.bench_codec [--dataset ../shared/data/kodak] [--images kodim01]
        [--large] [--large-size 3000x2000] [--model NAME] [--repeat 3] [--threads N]
        [--device cpu|cuda]
        [--workers N] [--compressai]

Per image: bytes, bpp, PSNR, seam_dB (what the 2-pixel bands either side of every tile
border lose against the same pixels coded mid-tile, from a second coding of the image
shifted by half a tile; "-" for one tile), then encode and decode seconds in-process (the
full image path: tiling, padding, header; the model loaded, the best of --repeat runs after
a warm-up run), wall and CPU time (CPU time is the steadier figure on a shared machine),
and the peak resident memory of each direction. Each direction runs in its own child
process, so that its peak (``ru_maxrss``, import of torch and the model included) is its
own. --large adds a 3000x2000 photograph (another size with --large-size, e.g. 6000x4000):
kodim23 upscaled with Lanczos, written once to the temporary folder. --compressai adds
CompressAI's bmshj2018-hyperprior (quality 3, untrained weights: timing only) compress +
decompress of the same padded image.

--workers N is batch mode: N processes share the images (on --device, e.g. cuda: one GPU
serves them all while the range coding runs on the CPU cores) and the result is images per
second each way, from the slowest worker's wall time of each phase. Each worker runs
--threads torch threads, by default the cores divided among the workers (more would
oversubscribe them).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LARGE_SIZE = (3000, 2000)


def large_image(dataset: Path, size: tuple[int, int] = LARGE_SIZE) -> Path:
    """kodim23 upscaled to ``size`` with Lanczos, made once in the temporary folder."""
    from PIL import Image

    from lsq.fileio import write_atomic

    path = Path(tempfile.gettempdir()) / f"lsq-bench-kodim23-{size[0]}x{size[1]}.png"
    if not path.is_file():
        with Image.open(dataset / "kodim23.png") as src:
            big = src.convert("RGB").resize(size, Image.LANCZOS)
        out = tempfile.SpooledTemporaryFile()
        big.save(out, "PNG")
        out.seek(0)
        write_atomic(path, out.read())
    return path


def _peak_mb() -> float:
    """Peak resident memory of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(direction: str, image: Path, stream: Path, model: str | None, repeat: int,
             device: str) -> dict:
    """One direction of one image, in this process: best time of ``repeat`` after a warm-up."""
    from PIL import Image

    from lsq.image_codec import decode_image, encode_image

    times, cpu = [], []
    if direction == "encode":
        with Image.open(image) as src:
            img = src.convert("RGB")
        for _ in range(repeat + 1):
            start, start_cpu = time.perf_counter(), time.process_time()
            data = encode_image(img, model=model, device=device)
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        stream.write_bytes(data)
    else:
        data = stream.read_bytes()
        for _ in range(repeat + 1):
            start, start_cpu = time.perf_counter(), time.process_time()
            decode_image(data, device=device)
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    return {"seconds": min(times[1:]), "cpu_seconds": min(cpu[1:]), "peak_mb": _peak_mb()}


def _child(direction: str, image: Path, stream: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, "-m", "lsq.tools.bench_codec", "--child", direction,
               "--child-image", str(image), "--child-stream", str(stream),
               "--repeat", str(args.repeat), "--device", args.device]
    if args.model:
        command += ["--model", args.model]
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"{direction} of {image} failed:\n{done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def seam_mask(shape: tuple[int, ...], tile: int) -> np.ndarray:
    """The 2-pixel bands either side of every tile border of an image of ``shape``."""
    h, w = shape[:2]
    seams = np.zeros((h, w), bool)
    for b in range(tile, w, tile):
        seams[:, b - 2 : b + 2] = True
    for b in range(tile, h, tile):
        seams[b - 2 : b + 2, :] = True
    return seams


def masked_psnr(original: np.ndarray, decoded: np.ndarray, mask: np.ndarray) -> float:
    err = (original.astype(np.float64) - decoded)[mask] ** 2
    return float(10 * np.log10(255**2 / err.mean()))


def seam_psnr(original: np.ndarray, decoded: np.ndarray, tile: int) -> float | None:
    """PSNR of the 2-pixel bands either side of every tile border; None for one tile."""
    seams = seam_mask(original.shape, tile)
    return masked_psnr(original, decoded, seams) if seams.any() else None


def seam_loss(original: np.ndarray, decoded: np.ndarray, tile: int, model: str | None
              ) -> float | None:
    """dB lost on the bands either side of the tile borders against the same pixels coded
    away from any border: the image is coded again without its first tile/2 rows and
    columns, which puts those bands mid-tile (and the latent grid where it was), so the
    content's own difficulty cancels. None for one tile."""
    from PIL import Image

    from lsq.image_codec import decode_image, encode_image

    shift = tile // 2
    seams = seam_mask(original.shape, tile)
    seams[:shift], seams[:, :shift] = False, False
    if not seams.any():
        return None
    moved = np.asarray(decode_image(encode_image(Image.fromarray(original[shift:, shift:]),
                                                 model=model)).convert("RGB"))
    return (masked_psnr(original[shift:, shift:], moved, seams[shift:, shift:])
            - masked_psnr(original, decoded, seams))


def _compressai_seconds(rgb: np.ndarray) -> float:
    import torch
    from compressai.zoo import bmshj2018_hyperprior

    net = bmshj2018_hyperprior(quality=3, pretrained=False).eval()
    net.update(force=True)
    h, w = (-(-s // 64) * 64 for s in rgb.shape[:2])
    x = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float().div(255).unsqueeze(0)
    x = torch.nn.functional.pad(x, (0, w - rgb.shape[1], 0, h - rgb.shape[0]), mode="replicate")
    start = time.perf_counter()
    with torch.inference_mode():
        out = net.compress(x)
        net.decompress(out["strings"], out["shape"])
    return time.perf_counter() - start


def per_image(images: list[Path], args: argparse.Namespace) -> None:
    from PIL import Image

    from lsq.eval.metrics import bpp, psnr
    from lsq.image_codec import DEFAULT_TILE, decode_image

    print("image        size        bytes    bpp   PSNR seam_dB enc_s  dec_s  enc_cpu  dec_cpu"
          "  enc_MB  dec_MB"
          + ("  compressai_s" if args.compressai else ""))
    with tempfile.TemporaryDirectory() as tmp:
        for image in images:
            stream = Path(tmp) / f"{image.stem}.lsq"
            enc = _child("encode", image, stream, args)
            dec = _child("decode", image, stream, args)
            with Image.open(image) as src:
                rgb = np.asarray(src.convert("RGB"))
            data = stream.read_bytes()
            rec = np.asarray(decode_image(data).convert("RGB"))
            seam = seam_loss(rgb, rec, DEFAULT_TILE, args.model)
            line = (f"{image.stem[:12]:12s} {rgb.shape[1]:>5d}x{rgb.shape[0]:<5d} {len(data):7d} "
                    f"{bpp(len(data), rgb.shape[0] * rgb.shape[1]):6.3f} {psnr(rgb, rec):6.2f} "
                    f"{'      -' if seam is None else f'{seam:7.2f}'} "
                    f"{enc['seconds']:6.2f} {dec['seconds']:6.2f} {enc['cpu_seconds']:8.2f} "
                    f"{dec['cpu_seconds']:8.2f} {enc['peak_mb']:7.0f} {dec['peak_mb']:7.0f}")
            if args.compressai:
                line += f"  {_compressai_seconds(rgb):12.2f}"
            print(line, flush=True)
    print(f"(best of {args.repeat} in-process runs after a warm-up, wall and CPU seconds of the "
          f"process; peak resident memory of each direction's process; threads: "
          f"{args.threads or 'torch default'}, device {args.device})")


def _worker(images: list[Path], args: argparse.Namespace, barrier, results) -> None:
    import torch
    from PIL import Image

    from lsq.image_codec import decode_image, encode_image

    torch.set_num_threads(args.threads)
    imgs = []
    for path in images:
        with Image.open(path) as src:
            imgs.append(src.convert("RGB"))
    decode_image(encode_image(imgs[0], model=args.model, device=args.device), args.device)
    barrier.wait()
    start = time.perf_counter()
    streams = [encode_image(img, model=args.model, device=args.device) for img in imgs]
    encode_s = time.perf_counter() - start
    barrier.wait()
    start = time.perf_counter()
    for data in streams:
        decode_image(data, device=args.device)
    results.put((encode_s, time.perf_counter() - start))


def batch(images: list[Path], args: argparse.Namespace) -> None:
    """Images per second each way with --workers processes sharing the images."""
    ctx = mp.get_context("spawn")
    args.threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    barrier, results = ctx.Barrier(args.workers), ctx.Queue()
    shares = [images[i :: args.workers] for i in range(args.workers)]
    procs = [ctx.Process(target=_worker, args=(share, args, barrier, results))
             for share in shares]
    for p in procs:
        p.start()
    times = [results.get() for _ in procs]
    for p in procs:
        p.join()
    if any(p.exitcode for p in procs):
        raise SystemExit("a worker failed")
    encode_s, decode_s = (max(t[i] for t in times) for i in range(2))
    print(f"{len(images)} images, {args.workers} workers x {args.threads} threads on "
          f"{args.device}: "
          f"encode {len(images) / encode_s:.1f} images/s ({encode_s:.2f} s), "
          f"decode {len(images) / decode_s:.1f} images/s ({decode_s:.2f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m lsq.tools.bench_codec")
    parser.add_argument("--dataset", type=Path, default=Path("../shared/data/kodak"))
    parser.add_argument("--images", default=None,
                        help="comma-separated image names of the dataset (default: all)")
    parser.add_argument("--large", action="store_true",
                        help="add kodim23 upscaled to --large-size")
    parser.add_argument("--large-size", default="{}x{}".format(*LARGE_SIZE),
                        help="WIDTHxHEIGHT of the --large image")
    parser.add_argument("--model", default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (OMP_NUM_THREADS of the children)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=0,
                        help="batch mode: images/s each way with this many processes")
    parser.add_argument("--compressai", action="store_true")
    parser.add_argument("--child", choices=("encode", "decode"), help=argparse.SUPPRESS)
    parser.add_argument("--child-image", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-stream", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = run_case(args.child, args.child_image, args.child_stream, args.model,
                          args.repeat, args.device)
        print(json.dumps(result))
        return
    if args.repeat < 1 or args.workers < 0:
        parser.error("--repeat must be at least 1 and --workers not negative")
    try:
        large_size = tuple(int(n) for n in args.large_size.lower().split("x"))
    except ValueError:
        large_size = ()
    if len(large_size) != 2 or min(large_size) < 1:
        parser.error(f"--large-size {args.large_size!r}: expected WIDTHxHEIGHT, e.g. 6000x4000")
    if args.images:
        images = [args.dataset / f"{name}.png" for name in args.images.split(",")]
    elif args.large:
        images = []
    else:
        images = sorted(args.dataset.glob("*.png"))
    if args.large:
        images.append(large_image(args.dataset, large_size))
    missing = [str(p) for p in images if not p.is_file()]
    if missing or not images:
        parser.error(f"no such images: {', '.join(missing) or args.dataset}")
    if args.workers:
        batch(images, args)
    else:
        per_image(images, args)


if __name__ == "__main__":
    main()
