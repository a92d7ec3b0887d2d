"""The checkerboard spatial context inside channel groups: the halves, exact coding with the
inner codecs on any thread count, the warm start from a model without it, weights files, and
fuzzed streams."""

import dataclasses
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import context_model, encoder_side
from PIL import Image

from lsq import image_codec
from lsq.codec.bitstream import BitstreamError, pack, unpack
from lsq.models import registry, weights_file
from lsq.models.hyperprior import build_model
from lsq.models.latent_codecs import make_latent_codec
from lsq.models.latent_codecs.checkerboard import Checkerboard, first_activation
from lsq.models.spec import ModelSpec, SpecError, preset
from lsq.tools.fuzz_bitstream import fix_crc, mutate
from lsq.training.warm_start import warm_start

CONTEXT = {"context": "channel-groups"}
Q = 2.671875  # a multiple of 1/256


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.nn.functional.avg_pool2d(torch.rand(1, 3, 64, 128), 5, 1, 2)


def decoded(model, coded: dict, threads: int) -> torch.Tensor:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        return model.decompress_latents(coded["strings"], coded["shape"], Q)[0]
    finally:
        torch.set_num_threads(before)


def test_halves_are_the_two_colours_in_raster_order() -> None:
    board = Checkerboard(3, 4)
    grid = torch.arange(24.0).reshape(2, 3, 4)  # two channels
    anchors, others = board.split(grid)
    assert anchors.shape == (2, 1, 6) and others.shape == (2, 1, 6)
    assert anchors[0, 0].tolist() == [0, 2, 5, 7, 8, 10]
    assert others[1, 0].tolist() == [13, 15, 16, 18, 21, 23]
    assert torch.equal(board.merge(anchors, others), grid)
    assert board.anchor_map(anchors)[0].tolist() == [[0, 0, 2, 0], [0, 5, 0, 7], [8, 0, 10, 0]]
    odd = Checkerboard(3, 3)  # one anchor more than the others
    assert odd.split(torch.zeros(1, 5, 3, 3))[0].shape == (1, 5, 1, 5)


def test_spatial_context_joins_the_first_pre_activation() -> None:
    for kind, cut, width in (("separable", 2, (96 + 48) // 2), ("full", 1, 224)):
        codec = make_latent_codec("scalar", 48, group_transform=kind, checkerboard=True,
                                  **CONTEXT)
        assert [first_activation(t) for t in codec.transforms] == [cut, cut]
        assert [s[0].in_channels for s in codec.spatial] == [24, 24]
        assert all(s[0].out_channels == t[cut - 1].out_channels for s, t in
                   zip(codec.spatial, codec.transforms, strict=True))
        assert all(not s[0].weight.any() and not s[0].bias.any() for s in codec.spatial)
        assert codec.spatial[0][0].out_channels == width
    with pytest.raises(ValueError, match="needs an activation"):
        first_activation(torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1)))


@pytest.mark.parametrize(("kind", "lrp"), [("separable", False), ("full", True)])
@pytest.mark.parametrize("quantizer", ["scalar", "leech", "leech-hybrid", "spherical-leech"])
def test_round_trip_is_exact_and_thread_independent(quantizer: str, kind: str, lrp: bool,
                                                     image: torch.Tensor) -> None:
    model = context_model(quantizer, group_transform=kind, lrp=lrp, checkerboard=True)
    with torch.no_grad():
        coded = model.compress(image, Q)
        one, two = decoded(model, coded, 1), decoded(model, coded, 2)
        reference = encoder_side(model, image, Q)
        x_hat = model.decompress(coded["strings"], coded["shape"], Q)["x_hat"]
    assert one.dtype == torch.float64 and one.shape == (48, 4, 8)
    assert torch.equal(one, two) and torch.equal(one, reference)
    assert one.abs().sum() > 0 and x_hat.shape == image.shape
    # the non-anchors depend on the spatial context; the first group's anchors (before LRP,
    # which reads the whole group) on nothing of it
    for spatial in model.latent_codec.spatial:
        torch.nn.init.zeros_(spatial[0].weight)
    with torch.no_grad():
        other = model.compress(image, Q)
    without = decoded(model, other, 2)
    board = Checkerboard(4, 8)
    same_points = quantizer == "spherical-leech"  # its points do not move with the parameters
    assert other["strings"][0] != coded["strings"][0]
    assert torch.equal(without, one) == same_points
    assert torch.equal(board.split(without[:24])[0], board.split(one[:24])[0]) == (
        same_points or not lrp)


@pytest.mark.parametrize(("quantizer", "kind", "lrp"), [("scalar", "separable", False),
                                                        ("leech", "full", True)])
def test_untrained_checkerboard_codes_as_the_model_without_it(quantizer: str, kind: str,
                                                              lrp: bool, image: torch.Tensor
                                                              ) -> None:
    """With its spatial networks at zero (as built) the checkerboard model warm-started from
    the model without it codes the same symbols under the same tables, so the latents decode
    identical; the bytes differ because each group's anchors go first, the symbols' order."""
    plain = context_model(quantizer, group_transform=kind, lrp=lrp)
    board = build_model(quantizer, N=16, M=48, lrp=lrp, group_transform=kind,
                        checkerboard=True, **CONTEXT).eval()
    assert warm_start(board, plain.state_dict()) == ["latent_codec.spatial.0",
                                                     "latent_codec.spatial.1"]
    board.update(force=True)
    with torch.no_grad():
        a, b = plain.compress(image, Q), board.compress(image, Q)
        assert torch.equal(decoded(plain, a, 2), decoded(board, b, 2))
    assert a["strings"][1] == b["strings"][1]  # the hyper-latent
    (y_plain,), (y_board,) = a["strings"][0], b["strings"][0]
    assert y_plain != y_board and abs(len(y_plain) - len(y_board)) <= 4


@pytest.mark.parametrize("quantizer", ["scalar", "leech"])
def test_training_forward_reaches_the_spatial_context(quantizer: str,
                                                     image: torch.Tensor) -> None:
    model = context_model(quantizer, group_transform="full", checkerboard=True).train()
    out = model(image[:, :, :, :64].expand(2, -1, -1, -1), torch.tensor([1.5, 7.25]))
    plain = build_model(quantizer, N=16, M=48, **CONTEXT)(image[:, :, :, :64], 3.0)
    assert {k: v.shape[1:] for k, v in out["likelihoods"].items()} == {
        k: v.shape[1:] for k, v in plain["likelihoods"].items()}
    bits = sum(-torch.log2(lik).sum() for lik in out["likelihoods"].values())
    assert torch.isfinite(bits) and bits > 0
    (bits + ((out["x_hat"] - image[:, :, :, :64]) ** 2).mean()).backward()
    for spatial in model.latent_codec.spatial:
        assert torch.isfinite(spatial[0].weight.grad).all()
        assert spatial[0].weight.grad.abs().sum() > 0


def test_spec_option_and_presets() -> None:
    spec = ModelSpec("leech", context="channel-groups", codec_options={"checkerboard": True})
    assert spec.codec_options == {"checkerboard": True}
    assert ModelSpec("leech", context="channel-groups",
                     codec_options={"checkerboard": False}) == preset("leech-cg")
    with pytest.raises(SpecError, match="checkerboard: 'yes' is not of type bool"):
        ModelSpec("leech", context="channel-groups", codec_options={"checkerboard": "yes"})
    with pytest.raises(SpecError, match="takes no option 'checkerboard'"):
        ModelSpec("leech", codec_options={"checkerboard": True})
    for name in ("flagship-leech", "flagship-scalar"):
        ckbd = preset(f"{name}-ckbd")
        assert ckbd == dataclasses.replace(
            preset(name), codec_options={**preset(name).codec_options, "checkerboard": True})
    assert dataclasses.replace(preset("flagship-leech-ckbd"), latent_codec="scalar") == preset(
        "flagship-scalar-ckbd")


def save_tiny(folder: Path, model, name: str) -> Path:
    """``model`` as the default model of a weights folder, its config from its spec."""
    config = dict(name=name, default_quality=4, command="tests/test_checkerboard.py",
                  **model.spec.weights_config())
    path = weights_file.save(model.state_dict(), folder / f"{name}.safetensors", config)
    (folder / "registry.json").write_text(json.dumps({"default": name}))
    return path


def test_spec_round_trips_through_a_weights_file(tmp_path: Path, image: torch.Tensor,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    trained = context_model("leech", group_transform="full", lrp=True, checkerboard=True)
    path = save_tiny(tmp_path, trained, "tiny-leech-ckbd")
    assert ModelSpec.from_weights_config(weights_file.read_config(path)) == trained.spec
    monkeypatch.setenv(registry.WEIGHTS_ENV, str(tmp_path))
    coding = registry.load("tiny-leech-ckbd")
    assert coding.spec == trained.spec and coding.latent_codec.spatial is not None
    reference = trained.spec.build().eval()
    reference.load_state_dict(weights_file.load_state(path))  # the same fp16-rounded weights
    with torch.no_grad():
        a, b = reference.compress(image, Q), coding.compress(image, Q)
        assert a["strings"] == b["strings"]
        assert torch.equal(decoded(reference, a, 2), decoded(coding, b, 1))


def test_fuzzed_checkerboard_streams_decode_or_are_refused(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """fuzz_bitstream's mutations, in process (its forked decode worker can deadlock in a
    process whose torch thread pool already ran): each case decodes or raises one of the
    decoder's errors; half of them are garbage inside the coded y section."""
    save_tiny(tmp_path, context_model("leech", group_transform="full", lrp=True,
                                       checkerboard=True), "tiny-fuzz-ckbd")
    monkeypatch.setenv(registry.WEIGHTS_ENV, str(tmp_path))
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8), "RGB")
    stream = image_codec.encode_image(img)
    assert image_codec.decode_image(stream).size == (96, 64)
    header, sections = unpack(stream)
    counts: Counter = Counter()
    cases = random.Random(0)
    for i in range(30):
        if i % 2:
            mutated = list(sections)
            mutated[0] = mutate(sections[0], cases, sections)
            data = pack(header, mutated)
        else:
            data = fix_crc(mutate(stream, cases, [stream]))
        try:
            image_codec.decode_image(data)
            counts["ok"] += 1
        except (BitstreamError, registry.ModelMismatchError):
            counts["refused"] += 1
    assert counts["refused"] > 0 and counts["ok"] + counts["refused"] == 30
