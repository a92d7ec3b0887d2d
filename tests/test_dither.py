"""The subtractive-dither training proxies: the reconstruction error is uniform over the
Voronoi cell whatever the input, the rate is always taken on a lattice point and is smooth in
expectation, gradients reach y, and coding never sees the dither."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from lsq.codec import leech
from lsq.codec.lattice_prior import leech_log_prob_centred
from lsq.codec.quantizers import LeechQuantizer, ScalarQuantizer, SphericalLeechQuantizer
from lsq.models.hyperprior import build_model
from lsq.models.latent_codecs import (
    LeechHybridLatentCodec,
    LeechLatentCodec,
    SphericalLeechLatentCodec,
)
from lsq.models.spec import PRESETS, ModelSpec, SpecError
from lsq.training import ConfigError, export, train
from lsq.training.cli import parse_args

#: Λ24's normalized second moment; the integer-frame cell has volume 8^12, so the error's
#: second moment per dimension is G * (8^12)^(2/24) = 8 G.
LEECH_G = 0.065771
#: Λ24's covering radius in the integer frame (twice the packing radius sqrt(32) / 2, over
#: sqrt(2)): no point of space is farther from the lattice.
COVERING_RADIUS = 4.0


def points_along(v: torch.Tensor, kind: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rate input, reconstruction) of the Λ24 proxy at step 1, with a fixed dither seed."""
    torch.manual_seed(seed)
    p = LeechQuantizer().proxy(v, 1.0, kind)
    return p.rate_input, p.recon


@pytest.mark.parametrize("scale", [0.0, 0.7, 6.0])
def test_dither_error_is_uniform_over_the_cell_whatever_the_input(scale: float) -> None:
    """Crypto lemma: recon - v = Q(v + u) - (v + u) lies in the cell of 0 and has the cell's
    second moment, at the origin, near cell boundaries and far out alike."""
    v = torch.randn(2000, 24, generator=torch.Generator().manual_seed(1),
                    dtype=torch.float64) * scale
    rate, recon = points_along(v, "dither", seed=2)
    error = recon - v
    assert not leech.nearest(error).any()
    assert abs((error**2).mean().item() - 8 * LEECH_G) < 0.01
    assert error.mean().abs().item() < 0.01 and (error * v).mean().abs().item() < 0.01 * (
        1 + scale)
    # at the origin, Q(u) = 0 for every dither; elsewhere the dither moves points
    assert torch.equal(rate, leech.nearest(v).to(rate.dtype)) == (scale == 0)


@pytest.mark.parametrize("kind", ["dither", "dither-rate"])
def test_dithered_rate_input_is_a_lattice_point_near_the_input(kind: str) -> None:
    v = torch.randn(500, 24, generator=torch.Generator().manual_seed(3),
                    dtype=torch.float64) * 4
    rate, recon = points_along(v, kind, seed=4)
    points = leech.nearest(rate)
    assert (rate - points).abs().max().item() < 1e-9  # Q(p) == p up to the straight-through
    assert bool(leech.is_leech(points).all())
    # |p - v| <= |p - (v + u)| + |u|, each at most the covering radius
    assert ((rate - v) ** 2).sum(-1).max().item() <= (2 * COVERING_RADIUS) ** 2 + 1e-9
    if kind == "dither-rate":
        assert torch.allclose(recon, leech.nearest(v).to(recon.dtype), rtol=0, atol=1e-9)


@pytest.mark.parametrize("kind", ["dither", "dither-rate"])
def test_gradients_reach_y_through_rate_and_reconstruction(kind: str) -> None:
    step = torch.tensor(0.5, dtype=torch.float64)
    y = torch.randn(64, 24, dtype=torch.float64, requires_grad=True)
    p = LeechQuantizer().proxy(y, step, kind)
    (grad_rate,) = torch.autograd.grad(p.rate_input.sum(), y, retain_graph=True)
    (grad_recon,) = torch.autograd.grad(p.recon.sum(), y)
    assert torch.equal(grad_rate, torch.full_like(y, 2.0))  # d(y / step) / dy
    assert torch.allclose(grad_recon, torch.ones_like(y))


def test_mean_dither_rate_is_continuous_across_a_cell_boundary_where_ste_jumps() -> None:
    """Along v = t w, w a minimal vector (the boundary between 0 and w at t = 1/2), the rate
    of the straight-through point jumps by |w|^2 / (2 sigma^2) = 4 nats; the Monte-Carlo mean
    of the dithered rate over the same dither draws at every t rises in small steps."""
    w = torch.zeros(24, dtype=torch.float64)
    w[:2] = 4.0
    draws = 500
    sigma = torch.full((draws, 24), 2.0, dtype=torch.float64)

    def mean_rate(kind: str) -> torch.Tensor:
        rates = []
        for t in torch.linspace(0.44, 0.56, 13, dtype=torch.float64):
            rate, _ = points_along((t * w).expand(draws, 24), kind, seed=5)
            rates.append(-leech_log_prob_centred(rate, sigma).mean())
        return torch.stack(rates)

    ste, dither = mean_rate("ste"), mean_rate("dither")
    assert ste.diff().abs().max().item() == pytest.approx(4.0, rel=1e-6)
    assert ste[-1] - ste[0] == pytest.approx(4.0, rel=1e-6)  # all of it in one step
    assert dither.diff().abs().max().item() < 0.25
    assert dither[-1] - dither[0] > 0.25  # it does move across the boundary, smoothly


def test_scalar_dither_on_the_integers() -> None:
    y = torch.randn(4000, dtype=torch.float64, requires_grad=True) * 3
    means = torch.randn(4000, dtype=torch.float64) * 0.3
    torch.manual_seed(6)
    p = ScalarQuantizer().proxy(y, means, "dither")
    offsets = (p.rate_input - means).detach()
    assert (offsets - offsets.round()).abs().max().item() < 1e-9  # a value of the pmf
    error = (p.recon - y).detach()
    assert error.abs().max().item() <= 0.5 and abs((error**2).mean().item() - 1 / 12) < 0.005
    (grad,) = torch.autograd.grad((p.recon + p.rate_input).sum(), y)
    assert torch.allclose(grad, torch.full_like(y, 2.0))


CODECS = {
    "leech": lambda kind: LeechLatentCodec(48, kind),
    "leech-compand": lambda kind: LeechLatentCodec(48, kind, compand="block"),
    "leech-origin": lambda kind: LeechLatentCodec(48, kind, mean_shift=False),
    "leech-hybrid": lambda kind: LeechHybridLatentCodec(48, kind),
}


@pytest.mark.parametrize("codec_name", list(CODECS))
@pytest.mark.parametrize("kind", ["dither", "dither-rate"])
def test_leech_codecs_train_on_the_dither_and_code_without_it(codec_name: str, kind: str) -> None:
    """Gradients reach y through the reconstruction and y and the hyper parameters through
    the rate; in eval mode the output is the straight-through model's, to the bit."""
    torch.manual_seed(7)
    codec = CODECS[codec_name](kind)
    y = (torch.randn(2, 48, 4, 4) * 3).requires_grad_()
    params = torch.cat([torch.rand(2, 48, 4, 4) + 0.5, torch.randn(2, 48, 4, 4)], 1)
    params.requires_grad_()
    y_hat, lik = codec.train()(y, params)
    (grad_y,) = torch.autograd.grad(y_hat.sum(), y, retain_graph=True)
    assert torch.allclose(grad_y, torch.ones_like(y))
    grad_y, grad_params = torch.autograd.grad(-torch.log2(lik["y"]).sum(), (y, params))
    assert torch.isfinite(grad_y).all() and grad_y.abs().sum() > 0 and grad_params.abs().sum() > 0
    codec.eval()
    with torch.no_grad():
        hard = codec(y, params)
        again = codec(y, params)
        reference = CODECS[codec_name]("ste").eval()
        reference.load_state_dict(codec.state_dict())
        ste = reference(y, params)
    assert torch.equal(hard[0], again[0]) and torch.equal(hard[0], ste[0])
    assert torch.equal(hard[1]["y"], ste[1]["y"])
    # in training the dithered rate is another one, and only "dither" moves the output
    with torch.no_grad():
        trained_ste = reference.train()(y, params)
    assert not torch.equal(lik["y"], trained_ste[1]["y"])
    assert torch.equal(y_hat.detach(), trained_ste[0]) == (kind == "dither-rate")


@pytest.mark.parametrize("quantizer", ["leech", "leech-hybrid"])
def test_streams_do_not_depend_on_the_training_proxy(quantizer: str) -> None:
    torch.manual_seed(8)
    dither = build_model(quantizer, N=8, M=24, proxy="dither")
    dither.update(force=True)
    mixed = build_model(quantizer, N=8, M=24, for_coding=True)
    mixed.load_state_dict(dither.state_dict())
    x = torch.rand(1, 3, 64, 64)
    assert dither.compress(x, 3.5)["strings"] == mixed.compress(x, 3.5)["strings"]


def test_codecs_that_are_no_lattice_refuse_the_dithers() -> None:
    with pytest.raises(SpecError, match=r"^model spec proxy: spherical-leech takes no 'dither'"):
        ModelSpec("spherical-leech", proxy="dither")
    with pytest.raises(SpecError, match=r"^model spec proxy: bsq takes no 'dither-rate'"):
        ModelSpec("bsq", qualities=(2, 2), proxy="dither-rate")
    with pytest.raises(SpecError, match=r"spherical-leech takes no 'dither'"):
        ModelSpec("spherical-leech", context="channel-groups", proxy="dither")
    with pytest.raises(ValueError, match="spherical-leech takes no training proxy 'dither'"):
        SphericalLeechLatentCodec(24, "dither")
    with pytest.raises(ValueError, match="training proxy 'dither' needs a lattice"):
        SphericalLeechQuantizer().proxy(torch.randn(2, 24), torch.tensor(0.5), "dither")
    with pytest.raises(ValueError, match="unknown training proxy 'gumbel'"):
        LeechQuantizer().proxy(torch.randn(2, 24), 0.5, "gumbel")
    assert ModelSpec("leech-hybrid", proxy="dither-rate").proxy == "dither-rate"


@pytest.mark.parametrize("kind", ["dither", "dither-rate"])
def test_compiled_rate_path_matches_eager_under_the_dithers(kind: str) -> None:
    """compile_rate swaps in the compiled lattice search (for Q(v + u) and the cell noise
    too) and the compiled prior: the same dither draws give the same bits and gradients."""
    x, q = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(9)), 3.0
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = build_model("leech", N=8, M=48, proxy=kind).train()
        if compiled:
            model.latent_codec.compile_rate("aot_eager")
            assert model.latent_codec.quantizer.nearest is not leech.nearest
        torch.manual_seed(1)
        out = model(x, torch.tensor([q, q]))
        bits = sum(-torch.log2(lik).sum() for lik in out["likelihoods"].values())
        (bits + out["x_hat"].square().sum()).backward()
        results.append((bits.detach(), out["x_hat"].detach(), model.g_a[0].weight.grad))
    (bits_e, x_e, grad_e), (bits_c, x_c, grad_c) = results
    assert torch.allclose(bits_e, bits_c, rtol=1e-5) and torch.allclose(x_e, x_c, atol=1e-5)
    assert torch.allclose(grad_e, grad_c, rtol=1e-4, atol=1e-6 * grad_e.abs().max().item())


def smooth_images(count: int, seed: int) -> list[np.ndarray]:
    """Learnable 96 px images: a low-frequency colour field plus a little noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:96, 0:96] / 96
    images = []
    for _ in range(count):
        f = rng.uniform(1, 4, size=(3, 2))
        img = np.stack([np.sin(f[c, 0] * 6 * yy + f[c, 1] * 4 * xx) for c in range(3)], -1)
        img = 127.5 * (img + 1) + rng.normal(0, 4, img.shape)
        images.append(np.clip(img, 0, 255).astype(np.uint8))
    return images


def test_a_tiny_run_trains_with_proxy_dither_and_exports_a_model_that_codes(tmp_path) -> None:
    """``--proxy dither`` on the command line: the run trains, its export records the proxy,
    and the exported model's streams are those of the same weights under ``ste``."""
    cfg = parse_args(["--out", str(tmp_path), "--quantizer", "leech", "--proxy", "dither",
                      "--N", "8", "--M", "24", "--steps", "4", "--batch", "2", "--crop", "64",
                      "--val-crop", "64", "--quality-min", "2", "--quality-max", "4",
                      "--log-every", "2", "--val-every", "0", "--device", "cpu",
                      "--ckpt-moments", "float32"])
    result = train(cfg, (smooth_images(6, 0), smooth_images(1, 1), "smooth fields"))
    assert result["step"] == 4 and math.isfinite(result["log"]["loss"])
    assert result["log"]["bpp"] > 0
    with safe_open(str(tmp_path / export.FINAL), "pt") as f:
        spec = ModelSpec.from_dict(json.loads(f.metadata()["config"])["spec"])
    assert spec == ModelSpec("leech", N=8, M=24, qualities=(2, 4), proxy="dither")
    state = load_file(str(tmp_path / export.FINAL))
    model = spec.load(state, for_coding=True).eval()
    ste = dataclasses.replace(spec, proxy="ste").load(state, for_coding=True).eval()
    x = torch.nn.functional.avg_pool2d(torch.rand(1, 3, 64, 64), 5, 1, 2)
    with torch.no_grad():
        coded = model.compress(x, 3.0)
        assert coded["strings"] == ste.compress(x, 3.0)["strings"]
        x_hat = model.decompress(coded["strings"], coded["shape"], 3.0)["x_hat"]
    assert x_hat.shape == x.shape and torch.isfinite(x_hat).all()


def test_a_codec_without_the_dithers_is_refused_before_training(tmp_path) -> None:
    cfg = parse_args(["--out", str(tmp_path / "run"), "--quantizer", "spherical-leech",
                      "--proxy", "dither-rate", "--device", "cpu"])
    with pytest.raises(ConfigError, match="spherical-leech takes no 'dither-rate'"):
        train(cfg, (smooth_images(2, 0), [], "smooth fields"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("name", "kind"), [("leech-dither", "dither"),
                                             ("leech-dither-rate", "dither-rate")])
def test_the_dither_presets_are_leech_with_another_proxy(name: str, kind: str) -> None:
    spec = PRESETS[name]
    assert spec == dataclasses.replace(PRESETS["leech"], proxy=kind)
    assert (spec.N, spec.M, spec.context, dict(spec.codec_options)) == (128, 192, "none", {})
    again = ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec and again.proxy == kind
    assert ModelSpec.from_weights_config(spec.weights_config()).proxy == kind
