"""The hyperprior codecs: training forward, exact compress/decompress, qualities, determinism."""

import pytest
import torch

from lsq.models import latent_coding
from lsq.models.hyperprior import QUANTIZERS, build_model
from lsq.models.quality import LAMBDAS, QualityGains, lmbda
from lsq.models.spec import ModelSpec, SpecError


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    torch.manual_seed(0)
    x = torch.rand(1, 3, 64, 128)
    return torch.nn.functional.avg_pool2d(x, 5, 1, 2)  # some spatial structure


def qualities_of(quantizer: str) -> tuple[int, int]:
    """bsq is fixed-rate: one quality per model."""
    return (4, 4) if quantizer == "bsq" else (1, 8)


def coded_model(quantizer: str, seed: int = 1):
    torch.manual_seed(seed)
    model = build_model(quantizer, N=16, M=48, qualities=qualities_of(quantizer)).eval()
    with torch.no_grad():  # spread the gains so that qualities really differ
        model.gains.log_gain.add_(2.0 + torch.randn_like(model.gains.log_gain) * 0.1)
    model.update(force=True)
    return model


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_round_trip_is_exact_at_fractional_quality(quantizer: str, image: torch.Tensor) -> None:
    model = coded_model(quantizer)
    q = 4.0 if quantizer == "bsq" else 2.671875  # a multiple of 1/256
    with torch.no_grad():
        coded = model.compress(image, q)
        first = model.decompress_latents(coded["strings"], coded["shape"], q)[0]
        again = model.decompress_latents(coded["strings"], coded["shape"], q)[0]
        x_hat = model.decompress(coded["strings"], coded["shape"], q)["x_hat"]
        # the encoder's own reconstruction: what it quantized, times the inverse gain
        y = model.g_a(image) * model.gains.coding(q).float()
        z_string, z_hat = latent_coding.encode_z(model.entropy_bottleneck, model.h_a(y)[0])
        params = latent_coding.integer_hyper_decode(model.h_s, z_hat[None])[0]
        from lsq.codec.entropy_coding import Encoder

        encoder_side = model.latent_codec.code(params, enc=Encoder(), y=y[0].double())
    assert torch.equal(first, again)
    assert first.dtype == torch.float64
    assert torch.equal(first, encoder_side * model.gains.coding(q, inverse=True))
    assert coded["strings"][1][0] == z_string
    assert x_hat.shape == image.shape and all(len(s[0]) > 0 for s in coded["strings"])


@pytest.mark.parametrize("quantizer", ["scalar", "leech", "spherical-leech"])
def test_quality_changes_only_the_gains(quantizer: str, image: torch.Tensor) -> None:
    """The same strings decoded at another quality give the same symbols, rescaled."""
    model = coded_model(quantizer)
    with torch.no_grad():
        coded = model.compress(image, 3.5)
        at_35 = model.decompress_latents(coded["strings"], coded["shape"], 3.5)[0]
        at_6 = model.decompress_latents(coded["strings"], coded["shape"], 6.0)[0]
        other = model.compress(image, 6.0)
    ratio = model.gains.coding(6.0, inverse=True) / model.gains.coding(3.5, inverse=True)
    torch.testing.assert_close(at_6, at_35 * ratio, rtol=1e-12, atol=0)
    assert other["strings"] != coded["strings"]


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_training_forward_has_finite_rate_and_gradients(quantizer: str,
                                                        image: torch.Tensor) -> None:
    torch.manual_seed(2)
    model = build_model(quantizer, N=16, M=48, qualities=qualities_of(quantizer)).train()
    q = [4.0, 4.0] if quantizer == "bsq" else [1.5, 7.25]
    out = model(image.expand(2, -1, -1, -1), torch.tensor(q))
    bits = sum(-torch.log2(lik).sum() for lik in out["likelihoods"].values())
    assert torch.isfinite(bits) and bits > 0
    (bits + ((out["x_hat"] - image) ** 2).mean()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.gains.log_gain.grad is not None and model.gains.log_gain.grad.abs().sum() > 0


def test_lambda_table_and_interpolation() -> None:
    assert [round(float(lmbda(q)), 6) for q in range(1, 9)] == list(LAMBDAS)
    mid = float(lmbda(3.5))
    assert abs(mid - (LAMBDAS[2] * LAMBDAS[3]) ** 0.5) < 1e-12


def test_coding_gains_interpolate_exactly_and_check_range() -> None:
    gains = QualityGains(24, 2, 5)
    with torch.no_grad():
        gains.log_gain.normal_()
    gains.update()
    table = gains.coding_gain.double()
    assert torch.equal(gains.coding(3.0)[:, 0, 0], table[1])
    assert torch.equal(gains.coding(5.0)[:, 0, 0], table[3])
    assert torch.equal(gains.coding(3.25)[:, 0, 0], table[1] * 0.75 + table[2] * 0.25)
    assert gains.check(3.1) == round(3.1 * 256) / 256
    for bad in (1.0, 5.5, float("nan")):
        with pytest.raises(ValueError, match="outside"):
            gains.check(bad)
    fixed = QualityGains(24, 4, 4)
    fixed.update()
    assert torch.equal(fixed.coding(4.0)[:, 0, 0], fixed.coding_gain[0].double())


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


@pytest.mark.parametrize("rows, cols", [(1, 1), (3, 5), (17, 34), (40, 23)])
def test_integer_convolutions_equal_torchs(rows: int, cols: int) -> None:
    """The Winograd 3x3 convolutions (in bands of rows) and the sub-pixel transposed
    convolutions give torch's integers exactly, odd sizes included; values too large for
    Winograd's bound take torch's convolution."""
    torch.manual_seed(rows * cols)
    conv = torch.nn.Conv2d(24, 7, 3, padding=1).requires_grad_(False)
    deconv = torch.nn.ConvTranspose2d(24, 7, 5, 2, 2, 1).requires_grad_(False)
    a = torch.randint(-2**14, 2**14, (1, 24, rows, cols)).double()
    (w, b), (wt, bt) = ((torch.round(layer.weight.double() * 2**12),
                         torch.round(layer.bias.double() * 2**20)) for layer in (conv, deconv))
    F = torch.nn.functional
    assert torch.equal(latent_coding._conv2d(a, w, b, conv), F.conv2d(a, w, b, 1, 1))
    assert torch.equal(latent_coding._conv_transpose2d(a, wt, bt, deconv),
                       F.conv_transpose2d(a, wt, bt, 2, 2, 1))
    assert latent_coding._winograd_exact(a, w)
    huge = a * 2**18  # beyond the Winograd bound, within the exact range of a direct sum
    assert not latent_coding._winograd_exact(huge, w)
    assert torch.equal(latent_coding._conv2d(huge, w, b, conv),
                       F.conv2d(huge, w, b, 1, 1))


def test_integer_leaky_relu_rounds_down_and_needs_a_power_of_two_slope() -> None:
    identity = torch.nn.Conv2d(1, 1, 1)
    torch.nn.init.ones_(identity.weight)
    torch.nn.init.zeros_(identity.bias)
    x = torch.tensor([-3.0, -1.0, -2.0**-8, 0.0, 0.5, 2.0]).reshape(1, 1, 1, 6)
    net = torch.nn.Sequential(identity, torch.nn.LeakyReLU(0.25))
    out = latent_coding.integer_hyper_decode(net, x).flatten() * 2**latent_coding.ACTIVATION_BITS
    assert out.tolist() == [-192.0, -64.0, -1.0, 0.0, 128.0, 512.0]  # floor(a / 4), a < 0
    with pytest.raises(TypeError, match="power of"):
        latent_coding.integer_hyper_decode(torch.nn.Sequential(identity,
                                                               torch.nn.LeakyReLU(0.01)), x)


def test_unknown_quantizer_bad_channels_and_qualities_raise() -> None:
    """build_model validates through its ModelSpec."""
    with pytest.raises(SpecError, match="latent_codec: unknown quantizer 'hexagonal'"):
        build_model("hexagonal")
    with pytest.raises(SpecError, match="M: 50 is not a positive multiple of 24"):
        build_model("leech", N=16, M=50)
    with pytest.raises(SpecError, match="qualities: 0..8"):
        build_model("leech", N=16, M=24, qualities=(0, 8))
    with pytest.raises(SpecError, match="codec_options.mean_shift: scalar"):
        build_model("scalar", N=16, M=24, mean_shift=False)
    with pytest.raises(SpecError, match="qualities: bsq is fixed-rate"):
        build_model("bsq", N=16, M=24)


def test_model_keeps_the_spec_it_was_built_from() -> None:
    spec = ModelSpec("leech", N=16, M=48, qualities=(2, 5), codec_options={"mean_shift": False})
    model = spec.build()
    assert model.spec is spec and (model.gains.low, model.gains.high) == (2, 5)
    assert model.latent_codec.mean_shift is False
    assert build_model("leech", N=16, M=48, qualities=(2, 5), mean_shift=False).spec == spec


def test_origin_anchored_leech_codes_exactly(image: torch.Tensor) -> None:
    torch.manual_seed(4)
    model = build_model("leech", N=16, M=48, mean_shift=False).eval()
    model.update(force=True)
    with torch.no_grad():
        coded = model.compress(image, 5.0)
        a = model.decompress_latents(coded["strings"], coded["shape"], 5.0)[0]
        b = model.decompress_latents(coded["strings"], coded["shape"], 5.0)[0]
    assert torch.equal(a, b)


@pytest.mark.parametrize("quantizer", ["scalar", "leech"])
def test_model_built_for_coding_codes_identically(quantizer: str, image: torch.Tensor) -> None:
    """The CompressAI-free coding model (what the registry loads) gives the same bytes and
    latents as the trainable one, and imports no CompressAI."""
    import subprocess
    import sys

    trained = coded_model(quantizer)
    coding = build_model(quantizer, N=16, M=48, for_coding=True).eval()
    coding.load_state_dict(trained.state_dict())
    a, b = trained.compress(image, 3.0), coding.compress(image, 3.0)
    assert a["strings"] == b["strings"]
    assert torch.equal(trained.decompress_latents(a["strings"], a["shape"], 3.0)[0],
                       coding.decompress_latents(b["strings"], b["shape"], 3.0)[0])
    code = ("import sys; from lsq.models.hyperprior import build_model; "
            "build_model('leech', N=16, M=48, for_coding=True); "
            "print(any(m.startswith('compressai') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
