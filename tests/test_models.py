"""The four hyperprior codecs: training forward, exact compress/decompress, determinism."""

import math

import pytest
import torch

from lsq.models import latent_coding
from lsq.models.hyperprior import QUANTIZERS, build_model


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    torch.manual_seed(0)
    x = torch.rand(1, 3, 64, 128)
    return torch.nn.functional.avg_pool2d(x, 5, 1, 2)  # some spatial structure


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_round_trip_matches_eval_forward(quantizer: str, image: torch.Tensor) -> None:
    torch.manual_seed(1)
    model = build_model(quantizer, N=16, M=48).eval()
    model.update(force=True)
    with torch.no_grad():
        out = model(image)
        coded = model.compress(image)
        decoded = model.decompress(coded["strings"], coded["shape"])["x_hat"]
        again = model.decompress(coded["strings"], coded["shape"])["x_hat"]
    assert decoded.shape == image.shape
    assert torch.equal(decoded, again)
    assert (decoded - out["x_hat"].clamp(0, 1)).abs().max() < 0.05
    assert all(len(s[0]) > 0 for s in coded["strings"])


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_training_forward_has_finite_rate_and_gradients(quantizer: str,
                                                        image: torch.Tensor) -> None:
    torch.manual_seed(2)
    model = build_model(quantizer, N=16, M=48).train()
    out = model(image)
    bits = sum(-torch.log2(lik).sum() for lik in out["likelihoods"].values())
    assert torch.isfinite(bits) and bits > 0
    (bits + ((out["x_hat"] - image) ** 2).mean()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_integer_hyper_decoder_is_exact_and_thread_independent() -> None:
    torch.manual_seed(3)
    model = build_model("leech", N=16, M=48)
    z_hat = torch.round(torch.randn(1, 16, 3, 5) * 4)
    first = latent_coding.integer_hyper_decode(model.h_s, z_hat)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        second = latent_coding.integer_hyper_decode(model.h_s, z_hat)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(first, second)
    assert torch.equal(first * 2**latent_coding.ACTIVATION_BITS,
                       torch.round(first * 2**latent_coding.ACTIVATION_BITS))
    with torch.no_grad():
        assert (first.float() - model.h_s(z_hat)).abs().max() < 0.05


def test_unknown_quantizer_and_bad_channels_raise() -> None:
    with pytest.raises(ValueError, match="quantizer"):
        build_model("hexagonal")
    with pytest.raises(ValueError, match="multiple of 24"):
        build_model("leech", N=16, M=50)


def test_leech_step_starts_at_unit_density() -> None:
    model = build_model("leech", N=16, M=24)
    model.update(force=True)
    assert math.isclose(float(model.coding_step), 2**-1.5, rel_tol=1e-6)
