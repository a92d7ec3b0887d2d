"""Image-quality and rate metrics on 8-bit RGB, as defined in docs/design.md section 7.

All metrics take ``uint8`` arrays of shape (H, W, 3) so that every codec, learned or not,
is measured on exactly the pixels a user would see after decoding to an 8-bit image.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from pytorch_msssim import ms_ssim as _ms_ssim

#: pytorch-msssim's 5-scale MS-SSIM with an 11-pixel window needs min(H, W) > 160.
MS_SSIM_MIN_SIDE = 161


def _check_pair(ref: np.ndarray, rec: np.ndarray) -> None:
    """Reject inputs that would make a metric silently meaningless."""
    for arr in (ref, rec):
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"expected uint8 HxWx3 RGB, got {arr.dtype} {arr.shape}")
    if ref.shape != rec.shape:
        raise ValueError(f"shape mismatch: {ref.shape} vs {rec.shape}")


def psnr(ref: np.ndarray, rec: np.ndarray) -> float:
    """PSNR in dB over all RGB samples (peak 255); ``inf`` for identical images."""
    _check_pair(ref, rec)
    mse = float(np.mean((ref.astype(np.float64) - rec.astype(np.float64)) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(255.0**2 / mse)


def ms_ssim(ref: np.ndarray, rec: np.ndarray) -> float:
    """MS-SSIM (pytorch-msssim, data_range=255, standard 5 scales) on RGB.

    Images whose smaller side is below ``MS_SSIM_MIN_SIDE`` return NaN instead of using
    fewer scales: a reduced-scale value is a different metric and would be averaged with
    real MS-SSIM values without anyone noticing. Callers average with NaN propagation, so
    a rate point with such an image reports NaN.
    """
    _check_pair(ref, rec)
    if min(ref.shape[0], ref.shape[1]) < MS_SSIM_MIN_SIDE:
        return math.nan
    a = torch.tensor(ref, dtype=torch.float32).permute(2, 0, 1).unsqueeze(0)
    b = torch.tensor(rec, dtype=torch.float32).permute(2, 0, 1).unsqueeze(0)
    with torch.no_grad():
        return float(_ms_ssim(a, b, data_range=255, size_average=True))


def ms_ssim_db(value: float) -> float:
    """MS-SSIM in dB, ``-10 log10(1 - v)``, the scale CompressAI plots it on."""
    if value >= 1.0:
        return math.inf
    return -10.0 * math.log10(1.0 - value)


def bpp(num_bytes: int, num_pixels: int) -> float:
    """Bits per pixel counting every byte of the file (headers included)."""
    if num_pixels <= 0:
        raise ValueError("num_pixels must be positive")
    return num_bytes * 8.0 / num_pixels
