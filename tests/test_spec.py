"""ModelSpec: validation, its JSON form, weights files, presets, and shipped models that code
byte for byte as they did before models were built from specs."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from lsq.cli import main as cli_main
from lsq.codec import bitstream
from lsq.models import registry, weights_file
from lsq.models.latent_codecs import ChannelGroupsLatentCodec
from lsq.models.spec import PRESETS, ModelSpec, SpecError, preset

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "weights"
SAMPLE = ROOT / "eval" / "sample" / "kodim23.png"

#: SHA-256 of the coded sections (every tile's y and z strings) of `lsq encode
#: eval/sample/kodim23.png` per shipped model and quality (None: the model's default),
#: computed with the code before models were built from specs (stream format 2; format 3
#: changed the header around the same sections). `spherical-leech`'s is the banded
#: analysis transform's: its float32 rounding moves near-tie first-shell choices (same size
#: and PSNR on this image; the spec change alone gave f558373b...). Models trained by
#: `lsq.training` (SPEC_FILES) store their spec; theirs are the streams of their release.
STREAMS = {
    ("flagship-leech-ckbd", None):
        "01f180b0ca7703f0cb3d1cca92a2b52ae90dd28a535669ac05c81933410e5b3a",
    ("bsq-m384-q6", None): "41b75de300dd8f0da76949ec2ea36a11d2195b48199f44d7c308d1cfcde981a3",
    ("bsq-m96-q1", None): "ade74f4f130a4e2fef6fab9b2926927919836fc387ca2b181d4f4ae6872ba848",
    ("bsq-q2", None): "2c70e51f177004c6a1da1f9e33f5891211dc08d2e25ebbd7f56c31dd3685a235",
    ("leech", None): "e1ed24011e22f38427f794eddf7e5193db6dc07dd2d82c7cd8bb9989a6cf973e",
    ("leech", 7): "12b73a1a827103e8c6861d7830b88f37da9d5914ecf381c6f83e2ea5fe11adfb",
    ("leech-cgf", None): "f564a5fdcd3cdcbc1e7bcc52f81311b44ea157dd98db8e8c7d3be08c76bff9ad",
    ("leech-hybrid", None): "112da2a1819633e3936271c47f83454b81f869103e236f5d24886e4fe08f55eb",
    ("leech-hybrid-cgf", None):
        "de93c646b963d445c6bddf73221653533d45e88006ba3d79d924b7261dabb047",
    ("scalar", None): "0af2961205793b0afbc386fd678e079da637ca989df0d55049cfcc2a769527f8",
    ("scalar-cgf", None): "8be455a31dd619213b780e8140181cba043e2f151ed4627fef7de192c832ce4d",
    ("spherical-leech", None):
        "65be9239ff8690f74532fb6bf066af696940b88c387bb5b0651249731ee328ce",
}

SPEC_FILES = {"flagship-leech-ckbd"}

TINY = ModelSpec("leech", N=16, M=48, qualities=(2, 6), context="channel-groups",
                 codec_options={"group_transform": "full", "groups": [24, 24]})


def test_every_shipped_model_is_in_the_stream_table() -> None:
    shipped = sorted(p.stem for p in SHIPPED.glob("*.safetensors"))
    assert shipped == sorted({name for name, _ in STREAMS})


@pytest.mark.parametrize(("name", "quality"), list(STREAMS))
def test_shipped_model_codes_the_sample_to_the_same_bytes(name: str, quality: int | None,
                                                          tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(registry.WEIGHTS_ENV, str(SHIPPED))  # the clone's, not the wheel's
    out = tmp_path / "out.lsq"
    args = ["encode", str(SAMPLE), "-o", str(out), "--model", name, "--quiet"]
    result = CliRunner().invoke(cli_main.main, args + ([] if quality is None else
                                                       ["--quality", str(quality)]))
    assert result.exit_code == 0, result.output
    _, sections = bitstream.unpack(out.read_bytes())
    assert hashlib.sha256(b"".join(sections)).hexdigest() == STREAMS[name, quality]


@pytest.mark.parametrize("name", sorted({name for name, _ in STREAMS}))
def test_shipped_file_reads_as_the_preset_of_its_name(name: str) -> None:
    config = weights_file.read_config(SHIPPED / f"{name}.safetensors")
    # the others predate specs: read from family, N, M, codec_options
    assert ("spec" in config) == (name in SPEC_FILES)
    assert ModelSpec.from_weights_config(config) == preset(name)


@pytest.mark.parametrize("half", [False, True])
def test_spec_round_trips_through_a_weights_file(half: bool, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TINY.build()
    with torch.no_grad():  # make the context transforms matter
        for transform in model.latent_codec.integer_transforms:
            transform[-1].weight.normal_(std=0.05)
    model.update(force=True)
    config = {"name": "tiny", "default_quality": 3, **TINY.weights_config()}
    path = weights_file.save(model.state_dict(), tmp_path / "tiny.safetensors", config,
                             half=half)
    read = weights_file.read_config(path)
    assert read["spec"] == TINY.to_dict()
    spec = ModelSpec.from_weights_config(read)
    assert spec == TINY and hash(spec) == hash(TINY)
    rebuilt = spec.build()
    stored = weights_file.load_state(path)
    rebuilt.load_state_dict(stored)
    original = model.state_dict()
    assert rebuilt.state_dict().keys() == original.keys() == stored.keys()
    for key, value in rebuilt.state_dict().items():
        assert torch.equal(value, stored[key]), key
        if not half:
            assert torch.equal(value, original[key]), key
    coding = spec.build(for_coding=True)
    coding.load_state_dict(stored)
    as_stored = weights_file.load_stored(path)  # what the registry loads: fp16 kept
    assert {t.dtype for t in as_stored.values() if t.is_floating_point()} == (
        {torch.float16, torch.float32} if half else {torch.float32})
    registry_net = spec.load(as_stored, for_coding=True)
    for key, value in registry_net.state_dict().items():
        assert value.dtype == coding.state_dict()[key].dtype, key
        assert torch.equal(value, coding.state_dict()[key]), key
    image = torch.rand(1, 3, 64, 64)
    strings = coding.compress(image, 3.5)["strings"]
    assert strings == rebuilt.compress(image, 3.5)["strings"]
    assert strings == registry_net.compress(image, 3.5)["strings"]
    if not half:  # the same weights code the same bytes
        assert strings == model.compress(image, 3.5)["strings"]


def test_registry_loads_a_file_with_a_spec(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(1)
    model = TINY.build()
    model.update(force=True)
    config = {"name": "tiny", "default_quality": 3, **TINY.weights_config()}
    weights_file.save(model.state_dict(), tmp_path / "tiny.safetensors", config)
    monkeypatch.setenv(registry.WEIGHTS_ENV, str(tmp_path))
    net = registry.load("tiny")
    assert net.spec == TINY and isinstance(net.latent_codec, ChannelGroupsLatentCodec)
    assert net.latent_codec.groups == (24, 24)


def test_a_spec_that_disagrees_with_its_file_is_refused(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    config = {"name": "tiny", "default_quality": 3, **TINY.weights_config(), "M": 72}
    with pytest.raises(SpecError, match="M: the config says 72") as err:
        weights_file.save({}, tmp_path / "tiny.safetensors", config)
    assert err.value.field == "M" and not (tmp_path / "tiny.safetensors").exists()
    for key, value in (("family", "scalar"), ("qualities", [1, 8]),
                       ("codec_options", {"context": "channel-groups"})):
        config = {"name": "tiny", "default_quality": 3, **TINY.weights_config(), key: value}
        with pytest.raises(SpecError, match=f"^model spec {key}: the config says"):
            weights_file.save({}, tmp_path / "tiny.safetensors", config)
    # options the config states at their defaults, in any order, describe the same model
    same = {"groups": [24, 24], "lrp": False, "group_transform": "full",
            "context": "channel-groups"}
    config = {"name": "tiny", "default_quality": 3, **TINY.weights_config(),
              "codec_options": same}
    assert ModelSpec.from_weights_config(config) == TINY
    bad = {**TINY.weights_config(), "spec": {**TINY.to_dict(), "proxy": "gumbel"}}
    with pytest.raises(SpecError, match="proxy"):
        weights_file.save({}, tmp_path / "tiny.safetensors", {**config, **bad})
    # a file written around the check: the registry names it, one line, no traceback
    from safetensors.torch import save_file

    save_file({}, str(tmp_path / "tiny.safetensors"),
              metadata={"config": json.dumps({**config, **bad})})
    monkeypatch.setenv(registry.WEIGHTS_ENV, str(tmp_path))
    with pytest.raises(registry.RegistryError, match=r"tiny.safetensors: .*proxy: unknown"):
        registry.load("tiny")


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds_and_round_trips(name: str) -> None:
    spec = preset(name)
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert ModelSpec.from_weights_config(spec.weights_config()) == spec
    legacy = {k: v for k, v in spec.weights_config().items() if k != "spec"}
    # files that predate the spec never recorded the proxy: they trained with "mixed"
    assert ModelSpec.from_weights_config(legacy) == dataclasses.replace(spec, proxy="mixed")
    model = spec.build(for_coding=True)
    assert model.spec is spec and (model.N, model.M) == (spec.N, spec.M)
    assert (model.gains.low, model.gains.high) == spec.qualities
    assert model.h_s[-1].out_channels == model.latent_codec.hyper_channels


def test_load_is_build_then_load_state_dict_without_drawing_random_values() -> None:
    """``load`` gives the model that ``build`` and ``load_state_dict`` give (the same
    tensors, the same streams) without drawing from torch's random generator."""
    source = TINY.build()
    source.update(force=True)
    state = source.state_dict()
    reference = TINY.build(for_coding=True)
    reference.load_state_dict(state)
    generator = torch.manual_seed(7)
    loaded = TINY.load(state, for_coding=True)
    after = torch.rand(8)
    generator.manual_seed(7)
    assert torch.equal(after, torch.rand(8))
    want, got = reference.state_dict(), loaded.state_dict()
    assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert all(torch.equal(a, b) for a, b in zip(reference.buffers(), loaded.buffers(),
                                                 strict=True))  # non-persistent ones too
    x = torch.rand(1, 3, 64, 64)
    assert loaded.compress(x, 3.5)["strings"] == reference.compress(x, 3.5)["strings"]


def test_load_refuses_a_state_that_leaves_random_tensors_unset(
        monkeypatch: pytest.MonkeyPatch) -> None:
    state = TINY.build().state_dict()
    with pytest.raises(RuntimeError, match="Missing key"):
        TINY.load({k: v for k, v in state.items() if k != "g_a.0.weight"})
    from lsq.models.hyperprior import LsqHyperprior

    built = LsqHyperprior.__init__

    def with_noise(self: LsqHyperprior, *args, **kwargs) -> None:
        built(self, *args, **kwargs)
        self.register_buffer("noise", torch.empty(5).normal_(), persistent=False)

    monkeypatch.setattr(LsqHyperprior, "__init__", with_noise)
    with pytest.raises(RuntimeError, match=r"tensors of shapes \[\(5,\)\] are random"):
        TINY.load(state)


def test_bsq_presets_are_the_shipped_curve_under_both_names() -> None:
    assert preset("bsq") == preset("bsq-q2") == ModelSpec("bsq", qualities=(2, 2))
    assert preset("bsq-m96") == preset("bsq-m96-q1") == ModelSpec("bsq", M=96, qualities=(1, 1))
    assert preset("bsq-m384") == preset("bsq-m384-q6") == ModelSpec("bsq", M=384,
                                                                    qualities=(6, 6))


def test_flagship_presets_are_twins() -> None:
    leech, scalar = preset("flagship-leech"), preset("flagship-scalar")
    assert (leech.N, leech.M, leech.context) == (192, 336, "channel-groups")
    assert dataclasses.replace(leech, latent_codec="scalar") == scalar
    assert leech.codec_options["groups"] == (24, 24, 48, 96, 144)


def test_to_dict_is_json_safe_and_canonical() -> None:
    spec = ModelSpec("leech-hybrid", qualities=[1, 8], codec_options={"above": 2})
    assert spec.qualities == (1, 8) and spec.codec_options == {"above": 2.0}
    assert list(spec.to_dict()) == ["latent_codec", "N", "M", "qualities", "proxy", "context",
                                    "codec_options"]
    assert json.loads(json.dumps(spec.to_dict())) == spec.to_dict()
    # options given at their defaults are dropped: the same model, the same spec
    assert ModelSpec("leech", codec_options={"mean_shift": True}) == preset("leech")
    assert ModelSpec("leech", codec_options={"mean_shift": False}) != preset("leech")
    options = ModelSpec("scalar", context="channel-groups",
                        codec_options={"lrp": True, "group_transform": "full"}).codec_options
    assert list(options) == ["group_transform", "lrp"]
    with pytest.raises(TypeError):
        options["lrp"] = False  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.N = 64  # type: ignore[misc]


def test_replace_validates_too() -> None:
    assert dataclasses.replace(preset("leech"), N=192, M=312).M == 312
    with pytest.raises(SpecError, match="M: 100 is not a positive multiple of 24"):
        dataclasses.replace(preset("leech"), M=100)


@pytest.mark.parametrize(("fields", "field", "words"), [
    ({"latent_codec": "hexagonal"}, "latent_codec", "unknown quantizer 'hexagonal'"),
    ({}, "latent_codec", "missing"),
    ({"latent_codec": ["leech"]}, "latent_codec", "unknown quantizer"),
    ({"latent_codec": "leech", "depth": 3}, "depth", "unknown field"),
    ({"latent_codec": "leech", "N": 0}, "N", "not positive"),
    ({"latent_codec": "leech", "N": 12.5}, "N", "not an integer"),
    ({"latent_codec": "leech", "M": 50}, "M", "multiple of 24"),
    ({"latent_codec": "leech", "M": True}, "M", "not an integer"),
    ({"latent_codec": "leech", "qualities": [0, 8]}, "qualities", "inside 1..8"),
    ({"latent_codec": "leech", "qualities": [5, 3]}, "qualities", "ordered"),
    ({"latent_codec": "leech", "qualities": [1, 4.5]}, "qualities", "not an integer"),
    ({"latent_codec": "leech", "qualities": 3}, "qualities", "pair"),
    ({"latent_codec": "bsq", "qualities": [1, 8]}, "qualities", "fixed-rate"),
    ({"latent_codec": "leech", "proxy": "gumbel"}, "proxy", "unknown 'gumbel'"),
    ({"latent_codec": "leech", "context": "checkerboard"}, "context", "unknown"),
    ({"latent_codec": "scalar", "codec_options": {"mean_shift": False}},
     "codec_options.mean_shift", "takes no option"),
    ({"latent_codec": "leech", "codec_options": {"mean_shift": "no"}},
     "codec_options.mean_shift", "not of type bool"),
    ({"latent_codec": "leech", "codec_options": {"group_transform": "full"}},
     "codec_options.group_transform", "takes no option"),
    ({"latent_codec": "leech", "codec_options": {"context": "channel-groups"}},
     "codec_options.context", "spec's own field"),
    ({"latent_codec": "leech", "codec_options": [("mean_shift", False)]},
     "codec_options", "not a mapping"),
    ({"latent_codec": "leech-hybrid", "codec_options": {"above": float("inf")}},
     "codec_options.above", "not of type float"),
    ({"latent_codec": "leech", "context": "channel-groups",
      "codec_options": {"groups": [96, "96"]}}, "codec_options.groups[1]", "not of type int"),
    ({"latent_codec": "leech", "context": "channel-groups", "codec_options": {"groups": 192}},
     "codec_options.groups", "list of int"),
])
def test_invalid_spec_names_the_field(fields: dict, field: str, words: str) -> None:
    with pytest.raises(SpecError, match=f"^model spec {re.escape(field)}: .*{words}") as err:
        ModelSpec.from_dict(fields)
    assert err.value.field == field and "\n" not in str(err.value)
    again = pickle.loads(pickle.dumps(err.value))  # crosses process boundaries intact
    assert (again.field, str(again)) == (field, str(err.value))


@pytest.mark.parametrize(("options", "words"), [
    ({"group_transform": "dense"}, "unknown group transform 'dense'"),
    ({"groups": [24, 48]}, "adding up to M = 192"),
])
def test_option_values_are_judged_by_the_codec_when_built(options: dict, words: str) -> None:
    spec = ModelSpec("leech", context="channel-groups", codec_options=options)
    with pytest.raises(SpecError, match=f"^model spec codec_options: .*{words}") as err:
        spec.build()
    assert err.value.field == "codec_options" and "\n" not in str(err.value)


def test_from_dict_and_weights_config_refuse_what_is_not_a_spec() -> None:
    with pytest.raises(SpecError, match="spec: .* not a mapping"):
        ModelSpec.from_dict(["leech"])  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="model spec M: missing"):
        ModelSpec.from_weights_config({"family": "leech", "N": 128, "qualities": [1, 8]})
    legacy = {"family": "leech", "N": 128, "M": 192, "qualities": [1.0, 8.0],
              "codec_options": {"context": "channel-groups", "group_transform": "full"}}
    assert ModelSpec.from_weights_config(legacy) == preset("leech-cgf")


def test_unknown_preset_names_the_valid_ones() -> None:
    with pytest.raises(SpecError, match="preset: unknown 'leech-xl'; expected one of leech, "):
        preset("leech-xl")


def test_spec_module_imports_no_compressai_compiler_or_training_code() -> None:
    """Building a coding model from a spec loads none of them: nothing at all of CompressAI
    or training, and no torch._dynamo module beyond what the latent codecs load already."""
    code = ("import sys; import lsq.models.latent_codecs; before = set(sys.modules); "
            "from lsq.models.spec import preset; preset('leech-cgf').build(for_coding=True); "
            "bad = ('compressai', 'lsq.training', 'lsq.models.train'); "
            "print(sorted(m for m in sys.modules if m.startswith(bad)), "
            "sorted(m for m in set(sys.modules) - before if m.startswith('torch._dynamo')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[] []"
