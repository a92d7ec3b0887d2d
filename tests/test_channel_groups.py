"""The channel-groups context model: exact coding with every inner codec, training forward,
its integer group transforms, and weights that survive the registry."""

import json
from pathlib import Path

import pytest
import torch
from conftest import context_model, encoder_side

from lsq.models import latent_coding, registry, weights_file
from lsq.models.hyperprior import build_model
from lsq.models.latent_codecs import ChannelGroupsLatentCodec, make_latent_codec
from lsq.models.latent_codecs.channel_groups import default_groups, group_slices
from lsq.training.warm_start import warm_start

CONTEXT = {"context": "channel-groups"}
Q = 2.671875  # a multiple of 1/256


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    torch.manual_seed(0)
    x = torch.rand(1, 3, 64, 128)
    return torch.nn.functional.avg_pool2d(x, 5, 1, 2)


def test_group_slices_pick_each_groups_own_parameters() -> None:
    # M = 72 in groups (24, 48), planes (24, 24): scales at 0..71, means at 72..143
    first, second = group_slices((24, 24), (24, 48))
    assert first.tolist() == [*range(24), *range(72, 96)]
    assert second.tolist() == [*range(24, 72), *range(96, 144)]
    # the first-shell codec adds one gain scale and one gain mean per block
    first, second = group_slices((24, 24, 1, 1), (24, 48))
    assert first.tolist() == [*range(24), *range(72, 96), 144, 147]
    assert second.tolist() == [*range(24, 72), *range(96, 144), 145, 146, 148, 149]


@pytest.mark.parametrize(("quantizer", "kind"), [("scalar", "separable"), ("leech", "separable"),
                                                 ("leech", "full")])
def test_starts_as_its_hyperprior_version(quantizer: str, kind: str, image: torch.Tensor
                                          ) -> None:
    """Untrained group transforms add nothing, so the context model warm-started from a
    hyperprior model's weights codes the same symbols, and only the transforms are fresh."""
    torch.manual_seed(4)
    plain = build_model(quantizer, N=16, M=72).eval()
    with torch.no_grad():
        plain.gains.log_gain.add_(2.0)
    plain.update(force=True)
    context = build_model(quantizer, N=16, M=72, group_transform=kind, **CONTEXT).eval()
    fresh = warm_start(context, plain.state_dict())
    assert fresh == [f"latent_codec.transforms.{k}" for k in range(3)]
    context.update(force=True)
    a, b = plain.compress(image, Q), context.compress(image, Q)
    assert torch.equal(plain.decompress_latents(a["strings"], a["shape"], Q)[0],
                       context.decompress_latents(b["strings"], b["shape"], Q)[0])
    lrp = build_model(quantizer, N=16, M=72, lrp=True, group_transform=kind, **CONTEXT).eval()
    fresh = warm_start(lrp, context.state_dict())  # LRP starts at zero too
    assert fresh == [f"latent_codec.residuals.{k}" for k in range(3)]
    lrp.update(force=True)
    c = lrp.compress(image, Q)
    assert torch.equal(plain.decompress_latents(a["strings"], a["shape"], Q)[0],
                       lrp.decompress_latents(c["strings"], c["shape"], Q)[0])
    with pytest.raises(ValueError, match="does not fit"):
        warm_start(build_model(quantizer, N=16, M=48, **CONTEXT), plain.state_dict())
    with pytest.raises(ValueError, match="does not fit"):  # the other way: unexpected keys
        warm_start(build_model(quantizer, N=16, M=72), context.state_dict())


def test_default_groups_and_bad_options() -> None:
    assert default_groups(192) == (24, 24, 48, 96)
    assert default_groups(48) == (24, 24)
    assert default_groups(72) == (24, 24, 24)
    assert default_groups(312) == (24, 24, 48, 96, 120)
    codec = make_latent_codec("leech", 96, groups=[24, 72], **CONTEXT)
    assert isinstance(codec, ChannelGroupsLatentCodec) and codec.groups == (24, 72)
    assert codec.hyper_channels == 2 * 96
    with pytest.raises(ValueError, match="multiples of 24"):
        make_latent_codec("leech", 96, groups=[24, 48], **CONTEXT)
    with pytest.raises(ValueError, match="context model"):
        make_latent_codec("leech", 96, context="checkerboard")
    with pytest.raises(ValueError, match="unknown group transform 'dense'"):
        make_latent_codec("leech", 96, group_transform="dense", **CONTEXT)
    with pytest.raises(TypeError, match="mean_shift"):
        make_latent_codec("scalar", 48, mean_shift=False, **CONTEXT)


@pytest.mark.parametrize(("lrp", "kind"), [(False, "separable"), (True, "separable"),
                                           (True, "full")])
@pytest.mark.parametrize("quantizer", ["scalar", "leech", "spherical-leech", "leech-hybrid"])
def test_round_trip_is_exact_and_thread_independent(quantizer: str, lrp: bool, kind: str,
                                                     image: torch.Tensor) -> None:
    model = context_model(quantizer, M=72, lrp=lrp, group_transform=kind)
    with torch.no_grad():
        coded = model.compress(image, Q)
        first = model.decompress_latents(coded["strings"], coded["shape"], Q)[0]
        again = model.decompress_latents(coded["strings"], coded["shape"], Q)[0]
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            one_thread = model.decompress_latents(coded["strings"], coded["shape"], Q)[0]
        finally:
            torch.set_num_threads(threads)
        reference = encoder_side(model, image, Q)
        x_hat = model.decompress(coded["strings"], coded["shape"], Q)["x_hat"]
    assert first.dtype == torch.float64 and first.shape == (72, 4, 8)
    assert torch.equal(first, again) and torch.equal(first, one_thread)
    assert torch.equal(first, reference)
    assert first.abs().sum() > 0 and x_hat.shape == image.shape
    if lrp:  # the corrections are in: without them the same stream decodes otherwise
        model.latent_codec.residuals = None
        plain = model.decompress_latents(coded["strings"], coded["shape"], Q)[0]
        assert not torch.equal(first, plain)


@pytest.mark.parametrize("quantizer", ["scalar", "leech", "spherical-leech", "leech-hybrid"])
def test_training_forward_reaches_the_group_transforms(quantizer: str,
                                                      image: torch.Tensor) -> None:
    torch.manual_seed(2)
    image = image[:, :, :, :64]
    model = build_model(quantizer, N=16, M=72, lrp=True, **CONTEXT).train()
    out = model(image.expand(2, -1, -1, -1), torch.tensor([1.5, 7.25]))
    plain = build_model(quantizer, N=16, M=72)(image, 3.0)
    assert {k: v.shape[1:] for k, v in out["likelihoods"].items()} == {
        k: v.shape[1:] for k, v in plain["likelihoods"].items()}
    bits = sum(-torch.log2(lik).sum() for lik in out["likelihoods"].values())
    assert torch.isfinite(bits) and bits > 0
    (bits + ((out["x_hat"] - image) ** 2).mean()).backward()
    assert len(model.latent_codec.integer_transforms) == 6  # 3 groups, with LRP
    for transform in model.latent_codec.integer_transforms:
        grads = [p.grad for p in transform.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert sum(g.abs().sum() for g in grads) > 0


@pytest.mark.parametrize("kind", ["separable", "full"])
def test_integer_group_transform_matches_its_float_form(kind: str) -> None:
    torch.manual_seed(3)
    codec = make_latent_codec("leech", 72, group_transform=kind, **CONTEXT)
    transform = codec.transforms[2]
    transform[-1].reset_parameters()  # it starts at zero: give it the usual initialisation
    features = torch.round(torch.randn(1, codec.hyper_channels, 5, 7) * 2**8) / 2**8
    y_hat = torch.randn(1, 48, 5, 7, dtype=torch.float64) * 3
    x = torch.cat([features.double(), y_hat], 1)
    exact = latent_coding.integer_hyper_decode(transform, x)
    with torch.no_grad():
        approx = transform(x.float())
    scaled = exact * 2**latent_coding.ACTIVATION_BITS
    assert torch.equal(scaled, torch.round(scaled)) and exact.abs().max() > 0.2
    assert (exact.float() - approx).abs().max() < 0.02


def test_weights_round_trip_through_the_registry(tmp_path: Path, image: torch.Tensor,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    trained = context_model("leech")
    config = dict(name="tiny-leech-ctx", family="leech", qualities=[1, 8], default_quality=4,
                  codec_options=CONTEXT, N=16, M=48, command="tests/test_channel_groups.py")
    path = weights_file.save(trained.state_dict(), tmp_path / "tiny-leech-ctx.safetensors",
                             config)
    (tmp_path / "registry.json").write_text(json.dumps({"default": "tiny-leech-ctx"}))
    monkeypatch.setenv(registry.WEIGHTS_ENV, str(tmp_path))
    coding = registry.load("tiny-leech-ctx")
    assert isinstance(coding.latent_codec, ChannelGroupsLatentCodec)
    reference = build_model("leech", N=16, M=48, **CONTEXT).eval()
    reference.load_state_dict(weights_file.load_state(path))  # the same fp16-rounded weights
    a, b = reference.compress(image, Q), coding.compress(image, Q)
    assert a["strings"] == b["strings"]
    assert torch.equal(reference.decompress_latents(a["strings"], a["shape"], Q)[0],
                       coding.decompress_latents(b["strings"], b["shape"], Q)[0])


@pytest.mark.parametrize("quantizer", ["leech", "scalar", "spherical-leech"])
def test_full_size_context_model_fits_a_weights_file(quantizer: str, tmp_path: Path) -> None:
    """N = 128, M = 192 with the context model and LRP stays within the 16 MiB a shipped
    weights file (and a device call's returned file) may take."""
    model = build_model(quantizer, lrp=True, **CONTEXT)
    config = dict(name="full", family=quantizer, qualities=[1, 8], default_quality=3,
                  codec_options={**CONTEXT, "lrp": True}, N=128, M=192)
    path = weights_file.save(model.state_dict(), tmp_path / "full.safetensors", config)
    assert path.stat().st_size <= 16 * 2**20
