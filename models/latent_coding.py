"""Bit-exact coding of a model's latents: integer hyper-decoder, then table-driven coders.

The decoder must rebuild the encoder's probability models exactly, on any machine. So
h_s runs as an integer network (Ballé et al. 2019 in spirit): weights and activations
are fixed-point integers held in float64, every partial sum is an integer below 2**53,
hence exact whatever the summation order, BLAS or device. Its outputs are then quantized
to table indices with comparisons and correctly rounded float64 operations only.
Leech points are coded under the exact lattice prior (``LeechCoder``); spherical-Leech
directions under the exact first-shell prior (``ShellCoder``), which gives no probability
to the lattice points off the shell, then their gains.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lsq.codec import tables
from lsq.codec.entropy_coding import Decoder, Encoder, LeechCoder, scale_index
from lsq.codec.quantizers import (
    BLOCK,
    BSQQuantizer,
    LeechQuantizer,
    ScalarQuantizer,
    SphericalLeechQuantizer,
    from_blocks,
    to_blocks,
)
from lsq.codec.shell_coding import ShellCoder

WEIGHT_BITS = 12  # fixed-point fraction bits of h_s weights
ACTIVATION_BITS = 8  # and of its activations
EXACT_LIMIT = 2.0**52
SCALE_BOUND = 0.11  # smallest scale, as CompressAI bounds its Gaussian conditional


def integer_hyper_decode(h_s: nn.Sequential, z_hat: torch.Tensor) -> torch.Tensor:
    """h_s(z_hat) in exact fixed point; float64 multiples of 2**-ACTIVATION_BITS."""
    a = torch.round(z_hat.to(torch.float64) * 2**ACTIVATION_BITS)
    with torch.backends.cudnn.flags(enabled=False):
        for layer in h_s:
            if isinstance(layer, nn.ReLU):
                a = a.clamp(min=0)
                continue
            w = torch.round(layer.weight.to(torch.float64) * 2**WEIGHT_BITS)
            b = torch.round(layer.bias.to(torch.float64) * 2 ** (WEIGHT_BITS + ACTIVATION_BITS))
            if isinstance(layer, nn.ConvTranspose2d):
                acc = F.conv_transpose2d(a, w, b, layer.stride, layer.padding,
                                         layer.output_padding)
            elif isinstance(layer, nn.Conv2d):
                acc = F.conv2d(a, w, b, layer.stride, layer.padding)
            else:
                raise TypeError(f"h_s layer {type(layer).__name__} has no integer form")
            if acc.numel() and float(acc.abs().max()) >= EXACT_LIMIT:
                raise OverflowError("integer hyper-decoder left the exact float64 range")
            a = torch.floor(acc / 2**WEIGHT_BITS)
    return a / 2**ACTIVATION_BITS


def _blocks(t: torch.Tensor) -> np.ndarray:
    """(C, H, W) -> (C/24 * H * W, 24): the model's blocks, flattened in order."""
    return to_blocks(t[None]).reshape(-1, BLOCK).cpu().numpy()


def _unblocks(b: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    c, h, w = shape
    return from_blocks(b.reshape(1, c // BLOCK, h, w, BLOCK))[0]


def _mean_index(mean: np.ndarray) -> np.ndarray:
    return np.floor(mean * tables.MEAN_GRID + 0.5).astype(np.int64)


def _bounded(scales: np.ndarray) -> np.ndarray:
    return np.maximum(scales, SCALE_BOUND)


def bottleneck_tables(eb: nn.Module) -> tables.Tables:
    """CompressAI's stored quantized CDFs as coding rows (last symbol = its overflow bin)."""
    cdf = eb._quantized_cdf.cpu().numpy().astype(np.int64)
    length = eb._cdf_length.cpu().numpy().astype(np.int64) - 1
    rows = [np.diff(cdf[c, : length[c] + 1]) / 2.0**16 for c in range(len(cdf))]
    start = np.concatenate([[0], np.cumsum(length)[:-1]]).astype(np.int64)
    return tables.Tables(np.concatenate(rows), start, length,
                         eb._offset.cpu().numpy().astype(np.int64))


def encode_z(eb: nn.Module, z: torch.Tensor) -> tuple[bytes, torch.Tensor]:
    """(bytes, z_hat) for one latent (C, h, w)."""
    medians = eb._get_medians().detach().reshape(-1, 1, 1)
    symbols = torch.round(z - medians)
    enc = Encoder()
    rows = np.repeat(np.arange(z.shape[0]), z.shape[1] * z.shape[2])
    enc.table_offsets(symbols.reshape(-1).cpu().numpy().astype(np.int64), rows,
                      bottleneck_tables(eb))
    return enc.finish(), symbols + medians


def decode_z(eb: nn.Module, data: bytes, shape: tuple[int, int, int],
             device: torch.device) -> torch.Tensor:
    c, h, w = shape
    rows = np.repeat(np.arange(c), h * w)
    symbols = Decoder(data).table_offsets(rows, bottleneck_tables(eb))
    medians = eb._get_medians().detach().reshape(-1, 1, 1)
    return torch.from_numpy(symbols).to(device, medians.dtype).reshape(c, h, w) + medians


def leech_parameters(model: nn.Module, params: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """What ``LeechCoder`` codes a Leech model's blocks under, from the integer hyper outputs
    (C, H, W): scale indices into ``THETA_SCALES`` and means in 1 / MEAN_GRID units, both in
    the integer frame."""
    m, step = model.M, float(model.coding_step)
    sigma = _bounded(_blocks(params[:m])) / step
    return scale_index(sigma, tables.theta_tables()), _mean_index(_blocks(params[m : 2 * m]) / step)


def encode_y(model: nn.Module, y: torch.Tensor, params: torch.Tensor) -> bytes:
    """Code one latent y (M, H, W) given integer-exact hyper outputs (C, H, W)."""
    enc = Encoder()
    _code_y(model, params, enc=enc, y=y.to(torch.float64))
    return enc.finish()


def decode_y(model: nn.Module, data: bytes, params: torch.Tensor) -> torch.Tensor:
    return _code_y(model, params, dec=Decoder(data))


def _code_y(model: nn.Module, params: torch.Tensor, enc: Encoder | None = None,
            dec: Decoder | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
    """The one place that defines each quantizer's symbols and models, for both directions."""
    m = model.M
    shape = (m, params.shape[1], params.shape[2])
    kind = model.quantizer
    if kind == "scalar":
        scales, means = (p.reshape(-1).cpu().numpy() for p in params.chunk(2, 0))
        gauss = tables.gauss_tables()
        rows = scale_index(_bounded(scales), gauss)
        quantizer, mean_t = ScalarQuantizer(), torch.from_numpy(means).reshape(shape)
        if enc is not None:
            symbols = quantizer.symbols(y.cpu(), mean_t).reshape(-1).numpy()
            enc.table_offsets(symbols, rows, gauss)
        else:
            symbols = dec.table_offsets(rows, gauss)
        return quantizer.reconstruct(torch.from_numpy(symbols).reshape(shape), mean_t)
    if kind == "bsq":
        logits = params.reshape(-1).cpu().numpy()
        idx = np.clip(np.floor(logits / tables.BSQ_LOGIT_STEP + 0.5), -tables.BSQ_LOGITS,
                      tables.BSQ_LOGITS).astype(np.int64) + tables.BSQ_LOGITS
        p1 = tables.bsq_probs()[idx]
        probs = np.stack([1 - p1, p1], axis=-1)
        if enc is not None:
            bits = BSQQuantizer().symbols(y.cpu()).reshape(-1).numpy()
            enc.categorical(bits, probs)
        else:
            bits = dec.categorical(probs)
        return BSQQuantizer().reconstruct(torch.from_numpy(bits)).reshape(shape)
    step = model.coding_step.detach().cpu().to(torch.float64)
    if kind == "leech":
        coder = LeechCoder()
        s, mq = leech_parameters(model, params)
        if enc is not None:
            points = LeechQuantizer().symbols(torch.from_numpy(_blocks(y)), step).numpy()
            coder.encode(enc, points, s, mq)
        else:
            points = coder.decode(dec, s, mq)
        return _unblocks(LeechQuantizer().reconstruct(torch.from_numpy(points), step), shape)
    # spherical-leech: shell point in the integer frame, then the gain
    shell_coder = ShellCoder()
    scales, means = _blocks(params[:m]), _blocks(params[m : 2 * m])
    s, mq = scale_index(_bounded(scales), tables.theta_tables()), _mean_index(means)
    k = m // BLOCK
    gain_scale = params[2 * m : 2 * m + k].reshape(-1).cpu().numpy()
    gain_mean = params[2 * m + k :].reshape(-1).cpu().numpy()
    gauss = tables.gauss_tables()
    rows = scale_index(_bounded(gain_scale), gauss)
    centre = np.floor(gain_mean + 0.5).astype(np.int64)
    quantizer = SphericalLeechQuantizer()
    if enc is not None:
        points_t, gains_t = quantizer.symbols(torch.from_numpy(_blocks(y)), step)
        points, gains = points_t.numpy(), gains_t.reshape(-1).numpy()
        shell_coder.encode(enc, points, s, mq)
        enc.table_offsets(gains - centre, rows, gauss)
    else:
        points = shell_coder.decode(dec, s, mq)
        gains = dec.table_offsets(rows, gauss) + centre
    recon = quantizer.reconstruct(torch.from_numpy(points), torch.from_numpy(gains)[:, None], step)
    return _unblocks(recon, shape)
