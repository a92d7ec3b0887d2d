"""Λ24 inside CompressAI's own models: exact round trips, the rate against the stream size,
gradients through the lattice, at tiny sizes on the CPU."""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

with warnings.catch_warnings():  # compressai's import-time torch.jit notices
    warnings.simplefilter("ignore")
    from compressai.entropy_models import EntropyBottleneck
    from compressai.latent_codecs import HyperLatentCodec, HyperpriorLatentCodec, LatentCodec
    from compressai.layers import GDN
    from compressai.models import MeanScaleHyperprior, ScaleHyperprior
    from compressai.models.base import SimpleVAECompressionModel
    from compressai.models.utils import conv, deconv

from lsq.codec.quantizers import LEECH_UNIT_STEP
from lsq.models.compressai_adapter import LeechConditionalLatentCodec, LeechGaussianConditional

N, M = 16, 48


def image(seed: int, size: tuple[int, int] = (64, 128)) -> torch.Tensor:
    """Smooth random images: a coarse random field upsampled, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(2, 3, size[0] // 16, size[1] // 16, generator=g)
    return nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=False)


def swapped(cls: type, seed: int = 0) -> nn.Module:
    """A CompressAI model with the Leech conditional in place of its Gaussian one; g_a's
    last layer scaled up so that the untrained latent spans many lattice points."""
    torch.manual_seed(seed)
    net = cls(N=N, M=M)
    net.gaussian_conditional = LeechGaussianConditional(M)
    with torch.no_grad():
        net.g_a[-1].weight.mul_(40)
    return net


def rd_loss(out: dict, x: torch.Tensor) -> torch.Tensor:
    bits = sum(-torch.log2(lik).sum() for lik in out["likelihoods"].values())
    return bits / (x.shape[0] * x.shape[2] * x.shape[3]) + 100 * ((out["x_hat"] - x) ** 2).mean()


@pytest.mark.parametrize("cls", [MeanScaleHyperprior, ScaleHyperprior])
def test_gradient_reaches_the_transforms(cls: type) -> None:
    net = swapped(cls).train()
    x = image(1)
    rd_loss(net(x), x).backward()
    for name in ("g_a", "h_a", "h_s", "g_s"):
        grad = getattr(net, name)[0].weight.grad
        assert grad is not None and grad.abs().sum() > 0, name


@pytest.mark.parametrize("cls", [MeanScaleHyperprior, ScaleHyperprior])
def test_model_round_trip_is_exact_after_training_steps(cls: type) -> None:
    net = swapped(cls)
    opt = torch.optim.Adam([p for n, p in net.named_parameters() if "quantiles" not in n], 1e-4)
    for step in range(2):
        x = image(10 + step)
        opt.zero_grad()
        rd_loss(net(x), x).backward()
        opt.step()
    net.update(force=True)
    net.eval()
    x = image(99)
    with torch.no_grad():
        forward = net(x)
        coded = net.compress(x)
        x_hat = net.decompress(coded["strings"], coded["shape"])["x_hat"]
        # the latent itself: forward's hard quantization against the decoder's
        y = net.g_a(x)
        z_hat, _ = net.entropy_bottleneck(net.h_a(y))
        params = net.h_s(z_hat)
        scales, means = params.chunk(2, 1) if cls is MeanScaleHyperprior else (params, None)
        y_hat, _ = net.gaussian_conditional(y, scales, means)
        indexes = net.gaussian_conditional.build_indexes(scales)
        decoded = net.gaussian_conditional.decompress(coded["strings"][0], indexes, means=means)
    points = torch.round((y_hat - (0 if means is None else means)) / LEECH_UNIT_STEP)
    assert (points != 0).float().mean() > 0.2  # a latent with substance, not all zeros
    assert torch.equal(decoded, y_hat)
    assert torch.equal(x_hat, forward["x_hat"].clamp(0, 1))
    assert len(coded["strings"][0]) == 2


def test_rate_is_the_stream_size() -> None:
    """Eval-mode likelihoods give the coded size, for a latent drawn from its prior."""
    g = torch.Generator().manual_seed(3)
    gc = LeechGaussianConditional(M).eval()
    scales = 0.3 + 4 * torch.rand(2, M, 8, 8, generator=g)
    means = 3 * torch.randn(2, M, 8, 8, generator=g)
    y = means + scales * torch.randn(2, M, 8, 8, generator=g)
    y_hat, likelihoods = gc(y, scales, means)
    indexes = gc.build_indexes(scales)
    strings = gc.compress(y, indexes, means)
    assert torch.equal(gc.decompress(strings, indexes, means=means), y_hat)
    for lik, string in zip(likelihoods, strings, strict=True):
        rate = -torch.log2(lik).sum().item() / 8
        assert rate > 1000 and abs(len(string) - rate) < 0.01 * rate + 8


class TinyHyperprior(SimpleVAECompressionModel):
    """A hyperprior assembled from CompressAI latent codecs, Λ24 as its "y" codec."""

    def __init__(self, y_codec: LatentCodec) -> None:
        super().__init__()
        self.g_a = nn.Sequential(conv(3, N), GDN(N), conv(N, N), GDN(N), conv(N, M))
        self.g_s = nn.Sequential(deconv(M, N), GDN(N, inverse=True), deconv(N, N),
                                 GDN(N, inverse=True), deconv(N, 3))
        h_a = nn.Sequential(conv(M, N, stride=1, kernel_size=3), nn.ReLU(), conv(N, N))
        h_s = nn.Sequential(deconv(N, M), nn.ReLU(), conv(M, 2 * M, stride=1, kernel_size=3))
        self.latent_codec = HyperpriorLatentCodec(latent_codec={
            "y": y_codec, "hyper": HyperLatentCodec(EntropyBottleneck(N), h_a, h_s)})
        with torch.no_grad():
            self.g_a[-1].weight.mul_(40)


def test_latent_codec_inside_a_hyperprior_latent_codec() -> None:
    torch.manual_seed(0)
    net = TinyHyperprior(LeechConditionalLatentCodec(M))
    x = image(4, (32, 64))
    rd_loss(net(x), x).backward()
    assert net.g_a[0].weight.grad.abs().sum() > 0
    net.update(force=True)
    net.eval()
    with torch.no_grad():
        forward_y = net.latent_codec(net.g_a(x))["y_hat"]
        coded = net.compress(x)
        decoded = net.latent_codec.decompress(coded["strings"], coded["shape"])["y_hat"]
        x_hat = net.decompress(coded["strings"], coded["shape"])["x_hat"]
    assert torch.equal(coded["y_hat"], forward_y) and torch.equal(decoded, forward_y)
    assert torch.equal(x_hat, net.g_s(forward_y).clamp(0, 1))
    assert (forward_y != 0).float().mean() > 0.2


def test_chunk_orders_and_bad_arguments() -> None:
    g = torch.Generator().manual_seed(5)
    y = 3 * torch.randn(1, 24, 2, 2, generator=g)
    scales, means = 1 + torch.rand(1, 24, 2, 2, generator=g), torch.randn(1, 24, 2, 2, generator=g)
    ms = LeechConditionalLatentCodec(24, chunks=("means", "scales")).eval()
    sm = LeechConditionalLatentCodec(24).eval()
    assert torch.equal(ms(y, torch.cat([means, scales], 1))["y_hat"],
                       sm(y, torch.cat([scales, means], 1))["y_hat"])
    with pytest.raises(ValueError, match="chunks must be one of"):
        LeechConditionalLatentCodec(24, chunks=("means",))
    with pytest.raises(ValueError, match="multiple of 24, got 40"):
        LeechGaussianConditional(40)
    with pytest.raises(ValueError, match="unknown training proxy 'round'"):
        LeechGaussianConditional(24, proxy="round")
    gc = LeechGaussianConditional(48)
    with pytest.raises(ValueError, match="expected a latent N x 48 x H x W, got 1x24x2x2"):
        gc(y, scales, means)
    indexes = LeechGaussianConditional(24).build_indexes(scales)
    with pytest.raises(ValueError, match="2 strings for indexes of shape"):
        LeechGaussianConditional(24).decompress([b"", b""], indexes)



def run_example(args: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """examples/compressai_leech.py run in this process (compressai is loaded already)."""
    path = Path(__file__).resolve().parents[1] / "examples" / "compressai_leech.py"
    spec = importlib.util.spec_from_file_location("compressai_leech", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", [str(path), *args])
    with pytest.raises(SystemExit) as exit_:
        module.main()
    return exit_.value.code


@pytest.mark.parametrize("arch", ["mbt2018-mean", "bmshj2018-hyperprior"])
def test_the_example_trains_and_codes_exactly(arch: str, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture) -> None:
    args = ["--arch", arch, "-N", "8", "-M", "24", "--steps", "2", "--batch", "2", "--crop", "64"]
    assert run_example(args, monkeypatch) == 0
    out = capsys.readouterr().out
    assert "step    2:" in out and "decoder == forward pass, bit for bit: yes" in out


@pytest.mark.parametrize(("args", "message"), [
    (["-M", "40"], "-M must be a positive multiple of 24, got 40"),
    (["missing.png"], "missing.png: no such file or folder"),
    (["--crop", "4096"], "1 image(s) smaller than --crop 4096"),
])
def test_the_example_refuses_bad_arguments(args: list[str], message: str,
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture) -> None:
    code = run_example(args, monkeypatch)
    assert code != 0 and message in f"{code} {capsys.readouterr().err}"
