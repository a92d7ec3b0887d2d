"""The bit-exact hyper path: z coded under the bottleneck's stored CDFs, then h_s as an
integer network.

The decoder must rebuild the encoder's probability models exactly, on any machine. So
h_s (and any network that feeds the probability models, such as the channel-group
transforms of ``latent_codecs.channel_groups``) runs as an integer network (Ballé et al.
2019 in spirit): weights and activations
are fixed-point integers held in float64, every partial sum is an integer below 2**53,
hence exact whatever the summation order, BLAS or device. The latent codecs
(``lsq.models.latent_codecs``) then quantize its outputs to table indices with comparisons
and correctly rounded float64 operations only.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lsq.codec import tables
from lsq.codec.entropy_coding import CorruptStreamError, Decoder, Encoder

WEIGHT_BITS = 12  # fixed-point fraction bits of h_s weights
ACTIVATION_BITS = 8  # and of its activations
EXACT_LIMIT = 2.0**52
CONV_BAND = 16  # output rows per float64 convolution of stride 1


@torch.no_grad()
def integer_hyper_decode(net: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """net(x) in exact fixed point; float64 multiples of 2**-ACTIVATION_BITS.

    ``net`` is h_s or any other Sequential of Conv2d, ConvTranspose2d, ReLU and LeakyReLU
    layers (a negative slope that is a power of two, so that slope * a is exact); x is
    first rounded (half to even, deterministic) to the activation grid, so a float64 input
    that both encoder and decoder hold bit-identical gives bit-identical outputs."""
    a = torch.round(x.to(torch.float64) * 2**ACTIVATION_BITS)
    with torch.backends.cudnn.flags(enabled=False):
        for layer in net:
            if isinstance(layer, nn.ReLU):
                a = a.clamp(min=0)
                continue
            if isinstance(layer, nn.LeakyReLU):
                if math.frexp(layer.negative_slope)[0] != 0.5:
                    raise TypeError(f"LeakyReLU slope {layer.negative_slope} is not a power of "
                                    "two: it has no exact integer form")
                a = torch.where(a >= 0, a, torch.floor(a * layer.negative_slope))
                continue
            w = torch.round(layer.weight.to(torch.float64) * 2**WEIGHT_BITS)
            b = torch.round(layer.bias.to(torch.float64) * 2 ** (WEIGHT_BITS + ACTIVATION_BITS))
            if isinstance(layer, nn.ConvTranspose2d):
                acc = F.conv_transpose2d(a, w, b, layer.stride, layer.padding,
                                         layer.output_padding, layer.groups)
            elif isinstance(layer, nn.Conv2d):
                acc = _conv2d(a, w, b, layer)
            else:
                raise TypeError(f"layer {type(layer).__name__} has no integer form")
            if acc.numel() and float(acc.abs().max()) >= EXACT_LIMIT:
                raise CorruptStreamError("integer hyper-decoder left the exact float64 range")
            a = torch.floor(acc / 2**WEIGHT_BITS)
    return a / 2**ACTIVATION_BITS


def _conv2d(a: torch.Tensor, w: torch.Tensor, b: torch.Tensor, layer: nn.Conv2d) -> torch.Tensor:
    """F.conv2d of an integer layer, CONV_BAND output rows at a time when its stride is 1:
    the same integers, while torch's float64 convolution unfolds only a band of the input
    (k * k values per input value and channel)."""
    if layer.stride != (1, 1) or layer.dilation != (1, 1) or a.shape[-2] <= CONV_BAND:
        return F.conv2d(a, w, b, layer.stride, layer.padding, groups=layer.groups)
    (pad_rows, pad_cols), reach = layer.padding, layer.kernel_size[0] - 1
    padded = F.pad(a, (0, 0, pad_rows, pad_rows))
    rows = padded.shape[-2] - reach
    return torch.cat([F.conv2d(padded[..., lo : min(lo + CONV_BAND, rows) + reach, :], w, b,
                               padding=(0, pad_cols), groups=layer.groups)
                      for lo in range(0, rows, CONV_BAND)], dim=-2)


def _medians(eb: nn.Module) -> torch.Tensor:
    """(C, 1, 1) medians of an EntropyBottleneck (or ``BottleneckTables``): z's centres."""
    return eb.quantiles[:, 0, 1].detach().reshape(-1, 1, 1)


def bottleneck_tables(eb: nn.Module) -> tables.Tables:
    """CompressAI's stored quantized CDFs as coding rows (last symbol = its overflow bin)."""
    cdf = eb.quantized_cdf.cpu().numpy().astype(np.int64)
    length = eb.cdf_length.cpu().numpy().astype(np.int64) - 1
    rows = [np.diff(cdf[c, : length[c] + 1]) / 2.0**16 for c in range(len(cdf))]
    start = np.concatenate([[0], np.cumsum(length)[:-1]]).astype(np.int64)
    return tables.Tables(np.concatenate(rows), start, length,
                         eb.offset.cpu().numpy().astype(np.int64))


def encode_z(eb: nn.Module, z: torch.Tensor) -> tuple[bytes, torch.Tensor]:
    """(bytes, z_hat) for one latent (C, h, w)."""
    medians = _medians(eb)
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
    medians = _medians(eb)
    return torch.from_numpy(symbols).to(device, medians.dtype).reshape(c, h, w) + medians
