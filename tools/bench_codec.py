"""End-to-end speed and quality of `lsq` against CompressAI's bmshj2018-hyperprior on CPU.

    python -m lsq.tools.bench_codec [--dataset ../shared/data/kodak] [--model NAME]

Per image: lsq bytes, bpp, PSNR, encode and decode seconds (the full image path: tiling,
padding, header); then CompressAI's bmshj2018-hyperprior (quality 3, untrained weights:
timing only) compress + decompress on the same padded image.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from compressai.zoo import bmshj2018_hyperprior
from PIL import Image

from lsq.eval.metrics import bpp, psnr
from lsq.image_codec import decode_image, encode_image


def _compressai_seconds(net: torch.nn.Module, rgb: np.ndarray) -> float:
    h, w = (-(-s // 64) * 64 for s in rgb.shape[:2])
    x = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float().div(255).unsqueeze(0)
    x = torch.nn.functional.pad(x, (0, w - rgb.shape[1], 0, h - rgb.shape[0]), mode="replicate")
    start = time.perf_counter()
    with torch.inference_mode():
        out = net.compress(x)
        net.decompress(out["strings"], out["shape"])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m lsq.tools.bench_codec")
    parser.add_argument("--dataset", type=Path, default=Path("../shared/data/kodak"))
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    net = bmshj2018_hyperprior(quality=3, pretrained=False).eval()
    net.update(force=True)
    rows = []
    print("image      bytes    bpp   PSNR  enc_s  dec_s  compressai_s")
    for path in sorted(args.dataset.glob("*.png")):
        img = Image.open(path).convert("RGB")
        rgb = np.asarray(img)
        t0 = time.perf_counter()
        data = encode_image(img, model=args.model)
        t1 = time.perf_counter()
        rec = np.asarray(decode_image(data).convert("RGB"))
        t2 = time.perf_counter()
        ref = _compressai_seconds(net, rgb)
        row = (len(data), bpp(len(data), rgb.shape[0] * rgb.shape[1]), psnr(rgb, rec),
               t1 - t0, t2 - t1, ref)
        rows.append(row)
        print(f"{path.stem:9s} {row[0]:7d} {row[1]:6.3f} {row[2]:6.2f} {row[3]:6.2f} "
              f"{row[4]:6.2f} {row[5]:8.2f}")
    mean = np.mean(np.array(rows), axis=0)
    print(f"{'mean':9s} {mean[0]:7.0f} {mean[1]:6.3f} {mean[2]:6.2f} {mean[3]:6.2f} "
          f"{mean[4]:6.2f} {mean[5]:8.2f}")
    print(f"lsq encode+decode / CompressAI compress+decompress: "
          f"{(mean[3] + mean[4]) / mean[5]:.1f}x (torch threads {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
