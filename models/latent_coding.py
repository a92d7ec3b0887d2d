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
                acc = _conv_transpose2d(a, w, b, layer)
            elif isinstance(layer, nn.Conv2d):
                acc = _conv2d(a, w, b, layer)
            else:
                raise TypeError(f"layer {type(layer).__name__} has no integer form")
            if _magnitude(acc) >= EXACT_LIMIT:
                raise CorruptStreamError("integer hyper-decoder left the exact float64 range")
            a = acc.div_(2**WEIGHT_BITS).floor_()
    return a / 2**ACTIVATION_BITS


def _magnitude(t: torch.Tensor) -> float:
    """max |t| (0 for an empty tensor), without an |t| copy of t."""
    if not t.numel():
        return 0.0
    lo, hi = t.aminmax()
    return max(-float(lo), float(hi))


def _conv2d(a: torch.Tensor, w: torch.Tensor, b: torch.Tensor, layer: nn.Conv2d) -> torch.Tensor:
    """F.conv2d of an integer layer. A full 3x3 convolution of stride 1 runs as Winograd's
    F(2x2, 3x3) (``_winograd``), CONV_BAND output rows at a time: the same integers, every
    value on the way being a multiple of 1/4 below 2**50 and so exact, in 4 products per
    output pair of rows and columns instead of 9. Other stride-1 convolutions run in bands
    of CONV_BAND rows, so that torch's float64 convolution unfolds only a band of the input
    (k * k values per input value and channel)."""
    if layer.stride != (1, 1) or layer.dilation != (1, 1):
        return F.conv2d(a, w, b, layer.stride, layer.padding, groups=layer.groups)
    (pad_rows, pad_cols), reach = layer.padding, layer.kernel_size[0] - 1
    padded = F.pad(a, (0, 0, pad_rows, pad_rows))
    rows = padded.shape[-2] - reach
    winograd = (layer.kernel_size == (3, 3) and layer.padding == (1, 1) and layer.groups == 1
                and _winograd_exact(a, w))
    if winograd:
        u = _winograd_weights(w)
        padded = F.pad(padded, (1, 1))
    elif a.shape[-2] <= CONV_BAND:
        return F.conv2d(a, w, b, layer.stride, layer.padding, groups=layer.groups)
    bands = []
    for lo in range(0, rows, CONV_BAND):
        band = padded[..., lo : min(lo + CONV_BAND, rows) + reach, :]
        bands.append(_winograd(band, u, b) if winograd else
                     F.conv2d(band, w, b, padding=(0, pad_cols), groups=layer.groups))
    return torch.cat(bands, dim=-2)


#: Winograd's F(2x2, 3x3) weight transform G (Lavin & Gray 2016); its input and output
#: transforms, B^T and A^T, only add and subtract (``_input_transform``, ``_winograd``).
_G = ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1))
#: Bound of the Winograd products and of their sums: multiples of 1/4 are exact below it.
_WINOGRAD_LIMIT = 2.0**50


def _winograd_weights(w: torch.Tensor) -> torch.Tensor:
    """G w G^T of 3x3 weights (C_out, C_in, 3, 3), as (16, C_out, C_in): multiples of 1/4."""
    g = w.new_tensor(_G)
    return torch.einsum("ik,ockl,jl->ijoc", g, w, g).reshape(16, *w.shape[:2]).contiguous()


def _winograd_exact(a: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether every Winograd product and partial sum of a 3x3 convolution stays below
    _WINOGRAD_LIMIT: |B^T d B| <= 4 max|a|, |G w G^T| <= 9/4 max|w| per tap, and each
    output adds 9 sums of C_in products."""
    bound = 4 * _magnitude(a) * 2.25 * _magnitude(w) * 9 * w.shape[1]
    return bound < _WINOGRAD_LIMIT


def _input_transform(x: torch.Tensor, dim: int, n: int) -> list[torch.Tensor]:
    """B^T applied along ``dim`` to the n overlapping 4-tuples of stride 2 of x."""
    d0, d1, d2, d3 = (x.narrow(dim, k, 2 * n - 1)[(slice(None),) * dim + (slice(None, None, 2),)]
                      for k in range(4))
    return [d0 - d2, d1 + d2, d2 - d1, d1 - d3]


def _winograd(x: torch.Tensor, u: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The 3x3 convolution (no padding) of x (1, C_in, h + 2, w + 2) with the transformed
    weights u of ``_winograd_weights``, plus bias: (1, C_out, h, w)."""
    _, cin, height, width = x.shape
    h, w = height - 2, width - 2
    th, tw = -(-h // 2), -(-w // 2)
    x = F.pad(x[0], (0, 2 * tw + 2 - width, 0, 2 * th + 2 - height))
    v = x.new_empty((4, 4, cin, th, tw))
    for i, rows in enumerate(_input_transform(x, 1, th)):
        for j, part in enumerate(_input_transform(rows, 2, tw)):
            v[i, j] = part
    m = torch.bmm(u, v.view(16, cin, th * tw)).view(4, 4, -1, th, tw)
    y = x.new_empty((m.shape[2], th, 2, tw, 2))
    for i, rows in enumerate((m[0] + m[1] + m[2], m[1] - m[2] - m[3])):  # A^T along rows
        y[:, :, i, :, 0] = rows[0] + rows[1] + rows[2] + b[:, None, None]
        y[:, :, i, :, 1] = rows[1] - rows[2] - rows[3] + b[:, None, None]
    return y.view(-1, 2 * th, 2 * tw)[None, :, :h, :w]


def _conv_transpose2d(a: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
                      layer: nn.ConvTranspose2d) -> torch.Tensor:
    """F.conv_transpose2d of an integer layer. CompressAI's 5x5 one of stride 2 (padding 2,
    output padding 1) runs as its four sub-pixel phases, each a stride-1 convolution with
    3 or 2 taps per side: the same integers, without the k * k values per input value and
    channel that torch's float64 transposed convolution unfolds and folds back."""
    if (layer.kernel_size, layer.stride, layer.padding, layer.output_padding, layer.groups,
            layer.dilation) != ((5, 5), (2, 2), (2, 2), (1, 1), 1, (1, 1)):
        return F.conv_transpose2d(a, w, b, layer.stride, layer.padding, layer.output_padding,
                                  layer.groups)
    n, _, h, width = a.shape
    padded = F.pad(a, (1, 1, 1, 1))
    out = a.new_empty((n, w.shape[1], 2 * h, 2 * width))
    taps = ((4, 2, 0), (3, 1))  # kernel indices of the even and odd output phase, by offset
    for py, ky in enumerate(taps):
        for px, kx in enumerate(taps):
            kernel = w[:, :, list(ky)][:, :, :, list(kx)].transpose(0, 1)
            source = padded[..., py : py + h + len(ky) - 1, px : px + width + len(kx) - 1]
            out[:, :, py::2, px::2] = F.conv2d(source, kernel, b)
    return out


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
