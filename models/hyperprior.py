"""Mean-scale hyperprior codecs with a choice of latent codec and a continuous quality.

Ballé et al. 2018 with Minnen et al.'s mean prediction (no context model), made
variable-rate with quality gains (Cui et al. 2021, ``lsq.models.quality``)::

      x ── g_a ── y ──×g(q)── y' ──┬──────────────── latent codec ── y'_hat ──×g'(q)── g_s ── x_hat
                                   │                      ▲
                                   h_a ── z ── EB ── z_hat ── h_s ── params

N: channels of the transforms and of z; M: channels of y, a multiple of 24 (the latent is
cut into 24-dimensional blocks of 24 consecutive channels at one position). The latent
codec (``lsq.models.latent_codecs``: scalar, bsq, leech, spherical-leech, optionally inside
the channel-groups context model) owns quantization, likelihoods and exact coding of y';
this class knows nothing quantizer-specific. A model is built from a ``ModelSpec``
(``lsq.models.spec``: codec, N, M, qualities, context, options), which it keeps as ``spec``.
Following CompressAI, ``forward`` returns ``x_hat`` and ``likelihoods``
(``-sum(log2(likelihoods))`` is the rate in bits), ``compress``/``decompress`` give and take
strings, ``update`` freezes what coding needs, ``aux_loss`` trains the bottleneck's quantiles.

A model built ``for_coding`` (what the registry loads) holds ``BottleneckTables`` instead of
CompressAI's EntropyBottleneck and so never imports CompressAI: ``lsq encode`` and
``lsq decode`` start in a fraction of the time. It codes bit for bit the same; it cannot train.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lsq.extras import require
from lsq.models import latent_coding
from lsq.models.bottleneck_tables import BottleneckTables
from lsq.models.latent_codecs import LATENT_CODECS, make_latent_codec
from lsq.models.layers import GDN, conv, deconv
from lsq.models.quality import MAX_QUALITY, MIN_QUALITY, QualityGains
from lsq.models.spec import ModelSpec
from lsq.models.synthesis import Synthesis

QUANTIZERS = tuple(LATENT_CODECS)


class LsqHyperprior(nn.Module):
    """Hyperprior codec with a choice of latent codec, for the qualities low..high."""

    def __init__(self, spec: ModelSpec, for_coding: bool = False) -> None:
        super().__init__()
        N, M = spec.N, spec.M
        self.spec = spec
        self.latent_codec = make_latent_codec(spec.latent_codec, M, spec.proxy, spec.context,
                                              **spec.codec_options)
        self.quantizer, self.N, self.M = spec.latent_codec, N, M
        self._synthesis: tuple[tuple | None, Synthesis | None] = (None, None)
        self.gains = QualityGains(M, *spec.qualities)
        if for_coding:
            self.entropy_bottleneck: nn.Module = BottleneckTables(N)
        else:
            entropy_models = require("compressai.entropy_models")
            self.entropy_bottleneck = entropy_models.EntropyBottleneck(N)
        self.g_a = nn.Sequential(
            conv(3, N), GDN(N), conv(N, N), GDN(N), conv(N, N), GDN(N), conv(N, M)
        )
        self.g_s = nn.Sequential(
            deconv(M, N), GDN(N, inverse=True), deconv(N, N), GDN(N, inverse=True),
            deconv(N, N), GDN(N, inverse=True), deconv(N, 3),
        )
        self.h_a = nn.Sequential(
            conv(M, N, stride=1, kernel_size=3), nn.LeakyReLU(inplace=True),
            conv(N, N), nn.LeakyReLU(inplace=True), conv(N, N),
        )
        self.h_s = nn.Sequential(
            deconv(N, M), nn.ReLU(inplace=True),
            deconv(M, M * 3 // 2), nn.ReLU(inplace=True),
            conv(M * 3 // 2, self.latent_codec.hyper_channels, stride=1, kernel_size=3),
        )

    def update(self, force: bool = False, update_quantiles: bool = False) -> bool:
        """Freeze the bottleneck's CDF tables (CompressAI's update), the gains and the codec's
        steps; True if the tables were rebuilt."""
        self.gains.update()
        self.latent_codec.update()
        return self.entropy_bottleneck.update(force=force, update_quantiles=update_quantiles)

    def aux_loss(self) -> torch.Tensor:
        """The bottleneck's quantile loss (CompressAI's aux_loss)."""
        return self.entropy_bottleneck.loss()

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """nn.Module's, after sizing the bottleneck's CDF buffers to the stored ones, as
        CompressAI's CompressionModel does."""
        eb = self.entropy_bottleneck
        if not isinstance(eb, BottleneckTables) and "entropy_bottleneck._offset" in state_dict:
            utils = require("compressai.models.utils")
            utils.update_registered_buffers(eb, "entropy_bottleneck",
                                            ["_quantized_cdf", "_offset", "_cdf_length"],
                                            state_dict, policy="resize")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def forward(self, x: torch.Tensor, quality: torch.Tensor | float | None = None) -> dict:
        """Training (or evaluation) pass at per-image qualities (default: the highest)."""
        q = torch.as_tensor(self.gains.high if quality is None else quality,
                            dtype=torch.float32, device=x.device).expand(x.shape[0])
        y = self.g_a(x) * self.gains(q)
        z = self.h_a(y)
        z_hat, z_likelihoods = self.entropy_bottleneck(z)
        params = self.h_s(z_hat)
        y_hat, likelihoods = self.latent_codec(y.float(), params.float())
        x_hat = self.g_s(y_hat * self.gains(q, inverse=True))
        return {"x_hat": x_hat, "likelihoods": {"z": z_likelihoods, **likelihoods}}

    @torch.no_grad()
    def compress(self, x: torch.Tensor, quality: float) -> dict:
        """CompressAI's contract: {"strings": [y_strings, z_strings], "shape": z size}."""
        return self.compress_latent(self.g_a(x), quality)

    @torch.no_grad()
    def analyze(self, x: torch.Tensor, band: int) -> torch.Tensor:
        """g_a(x), ``band`` rows of y at a time, each layer computing only the rows the next
        one reads: the same values in a fraction of the memory of a large tile."""
        layers = list(self.g_a)
        rows = -(-x.shape[-2] // 16)
        return torch.cat([_output_rows(layers, x, lo, min(lo + band, rows))
                          for lo in range(0, rows, band)], dim=-2)

    @torch.no_grad()
    def compress_latent(self, y: torch.Tensor, quality: float) -> dict:
        """:meth:`compress` from the analysis output y = g_a(x) (B, M, h, w), which a tiled
        encoder computes with a border of neighbouring pixels and crops."""
        y = y * self.gain(quality).to(y.device, torch.float32)
        z = self.h_a(y)
        y_strings, z_strings = [], []
        for yi, zi in zip(y, z, strict=True):
            z_string, z_hat = self.compress_hyper(zi)
            y_strings.append(self.compress_y(yi, self.hyper_params(z_hat)))
            z_strings.append(z_string)
        return {"strings": [y_strings, z_strings], "shape": tuple(z.shape[-2:])}

    def gain(self, quality: float) -> torch.Tensor:
        """The gains (M, 1, 1) that scale g_a's output at this quality, float64 on the CPU."""
        return self.gains.coding(self.gains.check(quality))

    @torch.no_grad()
    def compress_hyper(self, z: torch.Tensor) -> tuple[bytes, torch.Tensor]:
        """Code the hyper-latent z = h_a(y) (N, h, w): (bytes, z_hat)."""
        return latent_coding.encode_z(self.entropy_bottleneck, z)

    @torch.no_grad()
    def decompress_hyper(self, data: bytes, shape: tuple[int, int]) -> torch.Tensor:
        """z_hat (N, h, w) from the bytes of :meth:`compress_hyper`."""
        device = next(self.parameters()).device
        return latent_coding.decode_z(self.entropy_bottleneck, data, (self.N, *shape), device)

    @torch.no_grad()
    def hyper_params(self, z_hat: torch.Tensor) -> torch.Tensor:
        """The latent codec's parameters (C, 4 h, 4 w) from z_hat (N, h, w), in exact fixed
        point: the same on any machine, and at a position the same for any crop of z_hat
        that holds 2 positions of it either side."""
        return latent_coding.integer_hyper_decode(self.h_s, z_hat.unsqueeze(0))[0]

    @torch.no_grad()
    def compress_y(self, y: torch.Tensor, params: torch.Tensor) -> bytes:
        """Code the scaled latent y (M, h, w) under its parameters (:meth:`hyper_params`)."""
        return self.latent_codec.compress(y, params)

    @torch.no_grad()
    def decompress_y(self, data: bytes, params: torch.Tensor, quality: float) -> torch.Tensor:
        """y_hat (M, h, w), float64 on the CPU, inverse gain applied, from the bytes of
        :meth:`compress_y` and the same parameters."""
        inv_gain = self.gains.coding(self.gains.check(quality), inverse=True)
        return self.latent_codec.decompress(data, params) * inv_gain

    @torch.no_grad()
    def decompress(self, strings: list[list[bytes]], shape: tuple[int, int],
                   quality: float) -> dict:
        """Inverse of :meth:`compress`; the hyper path is bit-exact on any device."""
        y_hat = torch.stack(self.decompress_latents(strings, shape, quality))
        return {"x_hat": self.synthesize(y_hat).clamp(0, 1).to(torch.float32)}

    @torch.no_grad()
    def synthesis(self) -> Synthesis:
        """g_s as float64 matrix products (``lsq.models.synthesis``) on the model's device:
        rounding to 8 bits then gives the same pixels whatever the thread count or the tile
        grid (float32 flips a few values between 1 and 2 CPU threads). Made again only when
        a weight moved or changed."""
        device = next(self.parameters()).device
        key = (device, *((t.data_ptr(), t._version) for t in self.g_s.state_dict().values()))
        if self._synthesis[0] != key:
            self._synthesis = (key, Synthesis(self.g_s, device))
        return self._synthesis[1]

    @torch.no_grad()
    def synthesize(self, y_hat: torch.Tensor) -> torch.Tensor:
        """g_s(y_hat) (B, 3, H, W) in float64 (:meth:`synthesis`)."""
        synthesis = self.synthesis()
        return torch.stack([synthesis(y) for y in y_hat])

    @torch.no_grad()
    def decompress_latents(self, strings: list[list[bytes]], shape: tuple[int, int],
                           quality: float) -> list[torch.Tensor]:
        """The decoded latents y_hat (float64 on the CPU, one per image, inverse gain applied):
        what must agree bit for bit wherever a stream is decoded, before the synthesis."""
        return [self.decompress_y(y_string, self.hyper_params(
                    self.decompress_hyper(z_string, shape)), quality)
                for y_string, z_string in zip(*strings, strict=True)]


def _output_rows(layers: list[nn.Module], x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Rows lo..hi-1 of the output of ``layers`` applied to x, computing from each earlier
    layer only the rows that these read; its convolutions must be CompressAI's 5x5 ones of
    stride 2."""
    if not layers:
        return x[..., lo:hi, :]
    layer = layers[-1]
    if not isinstance(layer, nn.Conv2d):  # GDN, activations: per position
        return layer(_output_rows(layers[:-1], x, lo, hi))
    if (layer.kernel_size, layer.stride, layer.padding) != ((5, 5), (2, 2), (2, 2)):
        raise ValueError("banded transforms handle 5x5 convolutions of stride 2")
    rows = x.shape[-2]  # of this layer's input
    for m in layers[:-1]:
        if isinstance(m, nn.Conv2d):
            rows = (rows - 1) // 2 + 1
    # output row o reads input rows 2o - 2 .. 2o + 2 (first is even)
    first, last = max(2 * lo - 2, 0), min(2 * hi + 1, rows)
    out = layer(_output_rows(layers[:-1], x, first, last))
    return out[..., lo - first // 2 : hi - first // 2, :]


def build_model(quantizer: str, N: int = 128, M: int = 192,
                qualities: tuple[int, int] = (MIN_QUALITY, MAX_QUALITY), proxy: str = "mixed",
                context: str = "none", for_coding: bool = False,
                **codec_options: Any) -> LsqHyperprior:
    """``ModelSpec(...).build(for_coding)`` with the spec's fields as arguments, for tests and
    tools; raises SpecError as the spec does."""
    spec = ModelSpec(quantizer, N=N, M=M, qualities=tuple(qualities), proxy=proxy,
                     context=context, codec_options=codec_options)
    return spec.build(for_coding=for_coding)
