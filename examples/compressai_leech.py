"""Λ24 in a CompressAI model: mbt2018-mean (or bmshj2018-hyperprior) with the Leech latent
codec in place of its Gaussian conditional, trained a few steps on the CPU, then coded.

    python examples/compressai_leech.py                       # crops of eval/sample/kodim23.png
    python examples/compressai_leech.py ~/photos/ --steps 200 --arch bmshj2018-hyperprior

The model is CompressAI's own class, built from its registry; one line swaps the entropy
model of y. Training is CompressAI's recipe (rate + lambda * 255^2 * MSE, an auxiliary
optimizer for the bottleneck's quantiles). At the end the first image is compressed and
decompressed, and the script checks that the decoder rebuilt exactly what the model's own
forward pass reconstructs, and compares the coded size with the model's rate.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated")
from compressai.registry import MODELS  # noqa: E402

from lsq.models.compressai_adapter import LeechGaussianConditional  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1] / "eval" / "sample" / "kodim23.png"
ARCHS = ("mbt2018-mean", "bmshj2018-hyperprior")
SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".ppm"}
STRIDE = 64  # g_a then h_a downsample by 64: coded images are padded to a multiple of it


def build(arch: str, N: int, M: int) -> torch.nn.Module:
    """CompressAI's architecture with Λ24 coding its latent y (M: a multiple of 24)."""
    net = MODELS[arch](N=N, M=M)
    net.gaussian_conditional = LeechGaussianConditional(M)
    return net


def image_paths(inputs: list[str]) -> list[Path]:
    paths = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += sorted(p for p in item.rglob("*") if p.suffix.lower() in SUFFIXES)
        elif item.is_file():
            paths.append(item)
        else:
            raise SystemExit(f"error: {item}: no such file or folder")
    if not paths:
        raise SystemExit(f"error: no images found in {', '.join(inputs)}")
    return paths


def load_rgb(path: Path) -> torch.Tensor:
    """3 x H x W uint8."""
    try:
        with Image.open(path) as img:
            return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)
    except (UnidentifiedImageError, OSError) as e:
        raise SystemExit(f"error: {path}: cannot read image ({e})") from None


def random_crops(images: list[torch.Tensor], n: int, size: int, g: torch.Generator
                 ) -> torch.Tensor:
    """n random crops (with random horizontal flips) as floats in [0, 1]."""
    crops = []
    for i in torch.randint(len(images), (n,), generator=g).tolist():
        img = images[i]
        top = int(torch.randint(img.shape[1] - size + 1, (1,), generator=g))
        left = int(torch.randint(img.shape[2] - size + 1, (1,), generator=g))
        crop = img[:, top : top + size, left : left + size]
        crops.append(crop.flip(-1) if torch.rand(1, generator=g) < 0.5 else crop)
    return torch.stack(crops).float() / 255


def bits(likelihoods: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(-torch.log2(lik).sum() for lik in likelihoods.values())


def train(net: torch.nn.Module, images: list[torch.Tensor], args: argparse.Namespace) -> None:
    params = [p for n, p in net.named_parameters() if not n.endswith(".quantiles")]
    quantiles = [p for n, p in net.named_parameters() if n.endswith(".quantiles")]
    opt, aux_opt = torch.optim.Adam(params, args.lr), torch.optim.Adam(quantiles, 1e-3)
    g = torch.Generator().manual_seed(args.seed)
    net.train()
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        x = random_crops(images, args.batch, args.crop, g)
        out = net(x)
        bpp = bits(out["likelihoods"]) / (x.shape[0] * x.shape[2] * x.shape[3])
        mse = F.mse_loss(out["x_hat"], x)
        opt.zero_grad()
        (bpp + args.lmbda * 255**2 * mse).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        aux_opt.zero_grad()
        net.aux_loss().backward()
        aux_opt.step()
        if step == 1 or step % 10 == 0 or step == args.steps:
            print(f"step {step:4d}: {bpp.item():.3f} bpp, "
                  f"{-10 * math.log10(max(mse.item(), 1e-10)):.2f} dB, "
                  f"{time.perf_counter() - start:.1f} s")


@torch.no_grad()
def code(net: torch.nn.Module, img: torch.Tensor) -> bool:
    """Compress and decompress one image; True if the decoder matched the forward pass."""
    net.update(force=True)  # the bottleneck's CDFs (the Leech coder's tables are fixed)
    net.eval()
    h, w = img.shape[1:]
    x = img[None].float() / 255
    padded = F.pad(x, (0, -w % STRIDE, 0, -h % STRIDE), mode="replicate")
    forward = net(padded)
    coded = net.compress(padded)
    x_hat = net.decompress(coded["strings"], coded["shape"])["x_hat"]
    exact = torch.equal(x_hat, forward["x_hat"].clamp(0, 1))
    nbytes = sum(len(s) for strings in coded["strings"] for s in strings)
    rate = bits(forward["likelihoods"]).item() / 8
    psnr = -10 * math.log10(F.mse_loss(x_hat[..., :h, :w], x).item())
    print(f"coded {w}x{h}: {nbytes} bytes ({nbytes * 8 / (h * w):.4f} bpp; the model's rate "
          f"{rate:.0f} bytes), {psnr:.2f} dB")
    print(f"decoder == forward pass, bit for bit: {'yes' if exact else 'NO'}")
    return exact


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="*", default=[str(SAMPLE)],
                        help="image files or folders (default: the bundled Kodak sample)")
    parser.add_argument("--arch", choices=ARCHS, default="mbt2018-mean")
    parser.add_argument("-N", type=int, default=128, help="channels of the transforms")
    parser.add_argument("-M", type=int, default=192, help="channels of y, a multiple of 24")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--lmbda", type=float, default=0.013, help="CompressAI's quality 3")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.M <= 0 or args.M % 24:
        parser.error(f"-M must be a positive multiple of 24, got {args.M}")
    if min(args.N, args.steps, args.batch, args.crop) < 1:
        parser.error("-N, --steps, --batch and --crop must be positive")
    torch.manual_seed(args.seed)
    images = [load_rgb(p) for p in image_paths(args.images)]
    small = [i for i, img in enumerate(images) if min(img.shape[1:]) < args.crop]
    if small:
        parser.error(f"{len(small)} image(s) smaller than --crop {args.crop}")
    net = build(args.arch, args.N, args.M)
    print(f"{args.arch} N={args.N} M={args.M} with Λ24: {len(images)} image(s), "
          f"{args.steps} steps of {args.batch} crops of {args.crop}")
    train(net, images, args)
    sys.exit(0 if code(net, images[0]) else 1)


if __name__ == "__main__":
    main()
