"""The synthesis g_s in float64, streamed by rows in channels-last layout.

Decoded pixels must be the same on any machine and thread count, so g_s runs in float64
(float32 flips a few 8-bit values between thread counts). Torch's float64 convolutions take
its slow generic paths (a transposed convolution unfolds 25 values per input value and
channel, then folds them back on one thread); here every layer is a few float64 matrix
products over contiguous rows instead:

- a 5x5 transposed convolution of stride 2 is four sub-pixel phases, each a sum over its
  taps (3x3, 3x2, 2x3 or 2x2 of them) of one product (positions x C_in) @ (C_in x C_out),
  taken from the zero-bordered input flattened so that a tap is a plain row offset;
  with few output channels (the last layer) one product gives all 25 taps' values, which
  are then added into the phases;
- IGDN is one product (positions x C) @ (C x C), a square root and a product.

Each output value is the bias plus its taps' products added in a fixed order, and each
product sums over C_in alone, so the values do not depend on how rows are chunked, on
the image's size or on where a tile starts. ``Band`` streams: each transposed
convolution reads one row and column either side of those it makes, so a layer keeps one
input row of lookahead, a band of columns is synthesized from its latent columns and three
more, and the decoder holds a few rows of one band of every layer, whatever the image's
size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lsq.models.layers import GDN

# (input row offset, kernel index) of the taps of the even and odd output phases
TAPS = {0: ((-1, 4), (0, 2), (1, 0)), 1: ((0, 3), (1, 1))}
FEW_CHANNELS = 8  # below this many output channels, one product gives all 25 taps
# MKL's float64 products round differently in the last rows of a product whose row count
# is not a multiple of its block, and in rows whose start is not aligned: every product
# here has a multiple of ROWS rows and a multiple of COLUMNS columns.
ROWS, COLUMNS = 16, 8


class _Deconv:
    """A 5x5 stride-2 transposed convolution (padding 2, output padding 1) in float64."""

    def __init__(self, layer: nn.ConvTranspose2d, device: torch.device) -> None:
        if (layer.kernel_size, layer.stride, layer.padding, layer.output_padding) != (
                (5, 5), (2, 2), (2, 2), (1, 1)):
            raise ValueError("the float64 synthesis handles CompressAI's 5x5 deconvolutions")
        w = layer.weight.detach().to(device, torch.float64)  # (C_in, C_out, 5, 5)
        self.cout = cout = w.shape[1]
        self.few = cout < FEW_CHANNELS
        bias = layer.bias.detach().to(device, torch.float64)
        if self.few:  # one product for all taps: (C_in, 5 * 5 * C_out), zero columns added
            self.bias = bias
            weight = w.permute(0, 2, 3, 1).reshape(w.shape[0], -1)
            self.weight = torch.cat([weight, weight.new_zeros(
                (weight.shape[0], -weight.shape[1] % COLUMNS))], 1)
            return
        self.bias = bias.repeat(4)
        # per input offset (sy, sx): the columns of the phases (py, px) it feeds, laid out
        # as (py, px, C_out), and the weights that feed them
        self.products: list[tuple[int, int, int, int, Tensor]] = []
        for sy in (-1, 0, 1):
            for sx in (-1, 0, 1):
                pys = [py for py in (0, 1) if any(s == sy for s, _ in TAPS[py])]
                pxs = [px for px in (0, 1) if any(s == sx for s, _ in TAPS[px])]
                # both column phases: one product over contiguous columns, else one per row
                for py_set in [pys] if len(pxs) == 2 else [[py] for py in pys]:
                    blocks = [w[:, :, dict(TAPS[py])[sy], dict(TAPS[px])[sx]]
                              for py in py_set for px in pxs]
                    first = (2 * py_set[0] + pxs[0]) * cout
                    self.products.append((sy, sx, first, first + len(blocks) * cout,
                                          torch.cat(blocks, 1).contiguous()))

    def __call__(self, above: Tensor, x: Tensor, below: Tensor) -> Tensor:
        """x (n, W, C_in) with the input row above and below it (zeros at the image's
        edges); returns its 2n output rows (2n, 2W, C_out)."""
        n, width, cin = x.shape
        wp = width + 2
        # zero columns either side, and spare rows so that every product's rows fit
        flat = x.new_zeros(((n + 3) * wp + ROWS, cin))
        grid = flat[: (n + 3) * wp].view(n + 3, wp, cin)
        grid[0, 1:-1], grid[1 : n + 1, 1:-1], grid[n + 1, 1:-1] = above[0], x, below[0]
        if self.few:
            rows = _rounded((n + 3) * wp)
            cols = (flat[:rows] @ self.weight)[: (n + 3) * wp, : 25 * self.cout]
            cols = cols.unflatten(1, (5, 5, self.cout)).unflatten(0, (n + 3, wp))
            out = x.new_empty((n, 2, width, 2, self.cout))
            for py in (0, 1):
                for px in (0, 1):
                    phase = self.bias.expand(n, width, self.cout).clone()
                    for sy, ky in TAPS[py]:
                        for sx, kx in TAPS[px]:
                            phase += cols[1 + sy : 1 + sy + n, 1 + sx : 1 + sx + width, ky, kx]
                    out[:, py, :, px] = phase
            return out.view(2 * n, 2 * width, self.cout)
        rows = _rounded(n * wp)
        acc = self.bias.expand(rows, 4 * self.cout).clone()
        for sy, sx, lo, hi, weight in self.products:
            start = (1 + sy) * wp + 1 + sx
            acc[:, lo:hi].addmm_(flat[start : start + rows], weight)
        phases = acc[: n * wp].view(n, wp, 2, 2, self.cout)[:, :width]
        return phases.permute(0, 2, 1, 3, 4).reshape(2 * n, 2 * width, self.cout)


class _InverseGDN:
    """IGDN in float64: x * sqrt(beta + x^2 @ gamma^T), the parameters as GDN makes them."""

    def __init__(self, layer: GDN, device: torch.device) -> None:
        if not layer.inverse:
            raise ValueError("the synthesis holds inverse GDNs only")

        def reparam(value: Tensor, param: nn.Module) -> Tensor:
            bound = param.lower_bound.bound.to(device, torch.float64)
            pedestal = param.pedestal.to(device, torch.float64)
            return torch.max(value.detach().to(device, torch.float64), bound) ** 2 - pedestal

        self.beta = reparam(layer.beta, layer.beta_reparam)
        self.gamma_t = reparam(layer.gamma, layer.gamma_reparam).t().contiguous()

    def __call__(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1])
        squares = flat.new_zeros((_rounded(flat.shape[0]), flat.shape[1]))
        torch.mul(flat, flat, out=squares[: flat.shape[0]])
        norm = torch.addmm(self.beta, squares, self.gamma_t)[: flat.shape[0]].sqrt_()
        return norm.mul_(flat).view(x.shape)


class Synthesis:
    """g_s (CompressAI's deconv / IGDN stack) as float64 matrix products on ``device``."""

    def __init__(self, g_s: nn.Sequential, device: torch.device) -> None:
        self.device = device
        self.layers: list[_Deconv | _InverseGDN] = []
        for layer in g_s:
            if isinstance(layer, nn.ConvTranspose2d):
                self.layers.append(_Deconv(layer, device))
            elif isinstance(layer, GDN):
                self.layers.append(_InverseGDN(layer, device))
            else:
                raise ValueError(f"the float64 synthesis has no {type(layer).__name__}")

    def band(self, width: int, lo: int, hi: int) -> Band:
        """A stream of g_s that makes the output columns of latent columns lo..hi-1 of an
        image whose latent is ``width`` columns wide (:class:`Band`)."""
        return Band(self, width, lo, hi)

    def __call__(self, y: Tensor, rows_per_chunk: int = 4) -> Tensor:
        """g_s of one latent (M, h, w): (3, 16 h, 16 w) float64, streamed through one band
        of the whole width ``rows_per_chunk`` latent rows at a time."""
        band = self.band(y.shape[2], 0, y.shape[2])
        parts = [band.push(y[:, lo : lo + rows_per_chunk])
                 for lo in range(0, y.shape[1], rows_per_chunk)]
        return torch.cat([*parts, band.close()], dim=1)


class Band:
    """g_s of a band of columns of one image, fed its latent rows top to bottom.

    Output column o of a transposed convolution reads input columns o // 2 - 1 .. o // 2 + 1
    (o even) or o // 2 .. o // 2 + 1 (o odd), so the band is given the latent columns
    ``window`` (its own, one more on the left and two on the right, within the image) and
    every layer's output is cropped to the columns that the next layer reads: each value
    in the band is the one that the whole image's synthesis makes, while the rows held
    stay as narrow as the band, whatever the image's width. Each transposed convolution
    holds back its last input row until the row below it comes, so a push yields the rows
    that the rows given so far complete and ``close`` the rest."""

    def __init__(self, synthesis: Synthesis, width: int, lo: int, hi: int) -> None:
        if not 0 <= lo < hi <= width:
            raise ValueError(f"latent columns {lo}..{hi} are not within 0..{width}")
        self.device = synthesis.device
        self.layers = synthesis.layers
        deconvs = sum(isinstance(layer, _Deconv) for layer in self.layers)
        # the columns each transposed convolution must be given, last layer first
        needed = [(lo << deconvs, hi << deconvs)]
        for k in range(deconvs - 1, -1, -1):
            first, last = needed[-1]
            needed.append((max(first // 2 - 1 + first % 2, 0),
                           min((last - 1) // 2 + 2, width << k)))
        needed.reverse()
        self.window = needed[0]
        self.columns = (hi - lo) << deconvs
        self.channels = next(layer.cout for layer in reversed(self.layers)
                             if isinstance(layer, _Deconv))
        #: per transposed convolution: the columns of its output that the next layer reads
        self.crops = [(needed[k + 1][0] - 2 * needed[k][0], needed[k + 1][1] - 2 * needed[k][0])
                      for k in range(deconvs)]
        self.above: list[Tensor | None] = [None] * deconvs
        self.pending: list[Tensor | None] = [None] * deconvs

    def push(self, y: Tensor) -> Tensor:
        """Feed the band's next latent rows (M, k, window columns); returns the output rows
        (C, r, 16 (hi - lo)) that they complete, r >= 0, float64 and not clamped."""
        return self._run([y.to(self.device, torch.float64).permute(1, 2, 0)], final=False)

    def close(self) -> Tensor:
        """The band's last output rows, below which the image ends (zeros)."""
        return self._run([], final=True)

    def _run(self, chunks: list[Tensor], final: bool) -> Tensor:
        k = 0
        for layer in self.layers:
            if isinstance(layer, _InverseGDN):
                chunks = [layer(chunk) for chunk in chunks]
                continue
            out = [o for chunk in chunks if chunk.shape[0] for o in self._step(k, layer, chunk)]
            if final and self.pending[k] is not None:
                pending = self.pending[k]
                out.append(layer(self.above[k], pending, torch.zeros_like(pending[:1])))
                self.pending[k] = None
            first, last = self.crops[k]
            chunks = [o[:, first:last] for o in out]
            k += 1
        if not chunks:
            return torch.zeros((self.channels, 0, self.columns), dtype=torch.float64,
                               device=self.device)
        return torch.cat(chunks).permute(2, 0, 1)

    def _step(self, k: int, layer: _Deconv, chunk: Tensor) -> list[Tensor]:
        """Layer k's output of the rows it holds and those of ``chunk`` but the last, which
        waits for the row below: the layer holds two input rows, not a chunk."""
        rows = chunk if self.pending[k] is None else torch.cat([self.pending[k], chunk])
        if self.above[k] is None:
            self.above[k] = chunk.new_zeros((1, *chunk.shape[1:]))
        self.pending[k] = rows[-1:].clone()  # not a view that keeps the chunk
        if rows.shape[0] == 1:
            return []
        out = layer(self.above[k], rows[:-1], rows[-1:])
        self.above[k] = rows[-2:-1].clone()
        return [out]


def _rounded(rows: int) -> int:
    """``rows`` rounded up to a multiple of ROWS."""
    return -(-rows // ROWS) * ROWS
