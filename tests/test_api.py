"""The Python API against the command line, with the shipped `leech` model.

``lsq.encode`` must write the very bytes ``lsq encode`` writes, ``lsq.decode`` must give the
pixels ``lsq decode`` gives, and ``load_model``'s tensors must code the same streams.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import lsq
from lsq.cli import main as cli_main
from lsq.codec.bitstream import unpack
from lsq.codec.entropy_coding import Encoder
from lsq.models import latent_coding

SAMPLE = Path(__file__).resolve().parents[1] / "eval" / "sample" / "kodim23.png"


def run_cli(*args: str) -> None:
    result = CliRunner().invoke(cli_main.main, [*map(str, args), "--quiet"])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def cli_file(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """kodim23 as `lsq encode` writes it with the default model and quality."""
    out = tmp_path_factory.mktemp("cli") / "kodim23.lsq"
    run_cli("encode", SAMPLE, "-o", out)
    return out.read_bytes()


@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    """A 64 x 128 crop of kodim23: one tile, no padding, quick to code."""
    with Image.open(SAMPLE) as img:
        return np.asarray(img.convert("RGB"))[200:264, 300:428].copy()


def test_encode_writes_the_cli_bytes_from_a_path_an_image_and_an_array(cli_file: bytes) -> None:
    assert lsq.encode(SAMPLE) == cli_file
    assert lsq.encode(str(SAMPLE)) == cli_file
    with Image.open(SAMPLE) as img:
        assert lsq.encode(img) == cli_file
        assert lsq.encode(np.asarray(img)) == cli_file


def test_encode_options_match_the_cli(tmp_path: Path) -> None:
    run_cli("encode", SAMPLE, "-o", tmp_path / "q.lsq", "--model", "leech", "--quality", "1.5")
    data = lsq.encode(SAMPLE, quality=1.5, model="leech")
    assert data == (tmp_path / "q.lsq").read_bytes()
    assert unpack(data)[0].quality == 1.5


def test_decode_gives_the_cli_pixels(cli_file: bytes, tmp_path: Path) -> None:
    (tmp_path / "k.lsq").write_bytes(cli_file)
    run_cli("decode", tmp_path / "k.lsq", "-o", tmp_path / "k.png")
    img = lsq.decode(cli_file)
    assert (img.size, img.mode) == ((768, 512), "RGB")
    with Image.open(tmp_path / "k.png") as ref:
        assert np.array_equal(np.asarray(img), np.asarray(ref))
    assert np.array_equal(np.asarray(lsq.decode(tmp_path / "k.lsq")), np.asarray(img))
    assert np.array_equal(np.asarray(lsq.decode(bytearray(cli_file))), np.asarray(img))
    with Image.open(SAMPLE) as original:  # a real reconstruction, not a blank image
        err = np.abs(np.asarray(img, np.int16) - np.asarray(original, np.int16)).mean()
    assert err < 8


def test_decode_round_trips_grey_and_alpha() -> None:
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (40, 70, 4), dtype=np.uint8)
    img = lsq.decode(lsq.encode(rgba, quality=1))
    assert (img.size, img.mode) == ((70, 40), "RGBA")
    assert np.array_equal(np.asarray(img)[..., 3], rgba[..., 3])  # alpha is lossless
    grey = lsq.decode(lsq.encode(rgba[..., 0], quality=1))
    assert (grey.size, grey.mode) == ((70, 40), "L")


def test_load_model_codes_the_file_sections_and_their_latents(crop: np.ndarray) -> None:
    net = lsq.load_model("leech")
    data = lsq.encode(crop, model="leech")
    header, sections = unpack(data)
    assert net.quality == header.quality
    x = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255
    out = net.compress(x)
    assert out["shape"] == (1, 2) and out["quality"] == header.quality
    assert out["strings"] == [[sections[0]], [sections[1]]]
    x_hat = net.decompress(out["strings"], out["shape"])["x_hat"]
    assert x_hat.shape == x.shape
    pixels = x_hat[0].clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(pixels, np.asarray(lsq.decode(data)))
    assert torch.equal(net.decompress(**out)["x_hat"], x_hat)

    # The latent the encoder quantized is the one the decoder rebuilds, bit for bit.
    inner, q = net.net, out["quality"]
    with torch.no_grad():
        y = inner.g_a(x) * inner.gains.coding(q).float()
        _, z_hat = latent_coding.encode_z(inner.entropy_bottleneck, inner.h_a(y)[0])
        params = latent_coding.integer_hyper_decode(inner.h_s, z_hat[None])[0]
        coded = inner.latent_codec.code(params, enc=Encoder(), y=y[0].double())
    decoded = inner.decompress_latents(out["strings"], out["shape"], q)[0]
    assert torch.equal(decoded, coded * inner.gains.coding(q, inverse=True))


def test_load_model_batches_and_qualities(crop: np.ndarray) -> None:
    net = lsq.load_model("leech", quality=2)
    assert net.quality == 2 and repr(net) == (
        "lsq.Model('leech', qualities 1-8, quality 2, device cpu)")
    x = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255
    batch = torch.cat([x, x.flip(-1)])
    low, high = net.compress(batch), net.compress(batch, quality=6)
    assert len(low["strings"][0]) == len(low["strings"][1]) == 2
    assert sum(map(len, low["strings"][0])) < sum(map(len, high["strings"][0]))
    one = net.compress(x.flip(-1))
    assert one["strings"] == [[low["strings"][0][1]], [low["strings"][1][1]]]
    err_low, err_high = (
        (net.decompress(**out)["x_hat"] - batch).abs().mean() for out in (low, high))
    assert err_high < err_low < 0.1


def test_a_loaded_model_is_a_private_copy(crop: np.ndarray) -> None:
    before = lsq.encode(crop, model="leech")
    net = lsq.load_model("leech", quality=3.52734375)
    assert repr(net) == "lsq.Model('leech', qualities 1-8, quality 3.52734375, device cpu)"
    with torch.no_grad():
        net.net.g_a[0].weight.zero_()
    assert lsq.encode(crop, model="leech") == before
    assert lsq.load_model("leech").net.g_a[0].weight.abs().sum() > 0


def test_import_is_light_and_exposes_the_api() -> None:
    code = ("import sys, lsq; lsq.BitstreamError; lsq.UnknownModelError; "
            "print('torch' in sys.modules, sorted(set(lsq.__all__) - set(dir(lsq))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["False", "[]"]
    assert lsq.BitstreamError is __import__("lsq.codec.bitstream").codec.bitstream.BitstreamError
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        lsq.nope  # noqa: B018


def test_bad_images_raise_typed_errors(tmp_path: Path) -> None:
    with pytest.raises(lsq.ImageCodecError, match="uint8 HxW, HxWx3 or HxWx4, got float64"):
        lsq.encode(np.zeros((8, 8, 3)))
    with pytest.raises(lsq.ImageCodecError, match="got uint8 8x8x2"):
        lsq.encode(np.zeros((8, 8, 2), np.uint8))
    with pytest.raises(lsq.ImageCodecError, match="empty image"):
        lsq.encode(np.zeros((0, 8, 3), np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(lsq.ImageCodecError, match="not an image format Pillow can read"):
        lsq.encode(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError):
        lsq.encode(tmp_path / "missing.png")
    with pytest.raises(IsADirectoryError):
        lsq.encode(tmp_path)
    with pytest.raises(TypeError, match="not int"):
        lsq.encode(42)


def test_bad_options_raise_typed_errors(crop: np.ndarray) -> None:
    with pytest.raises(lsq.UnknownModelError, match="unknown model 'nope'"):
        lsq.encode(crop, model="nope")
    with pytest.raises(lsq.UnknownModelError, match="not 9"):
        lsq.encode(crop, model="leech", quality=9)
    with pytest.raises(lsq.UnknownModelError, match="unknown model 'nope'"):
        lsq.load_model("nope")
    with pytest.raises(lsq.UnknownModelError, match="not 0.5"):
        lsq.load_model("leech", quality=0.5)
    with pytest.raises(lsq.DeviceError, match="unknown device 'gpu0'"):
        lsq.load_model("leech", device="gpu0")
    with pytest.raises(lsq.DeviceError):
        lsq.encode(crop, device="tpu")


def test_bad_streams_raise_typed_errors(cli_file: bytes) -> None:
    with pytest.raises(lsq.BitstreamError):
        lsq.decode(b"not an lsq file")
    with pytest.raises(lsq.BitstreamError):
        lsq.decode(cli_file[:-10])
    with pytest.raises(lsq.ImageCodecError, match="exceeds the decoding limit"):
        lsq.decode(cli_file, max_pixels=1000)
    with pytest.raises(TypeError, match="not int"):
        lsq.decode(3)


def test_bad_tensors_raise_typed_errors() -> None:
    net = lsq.load_model("leech")
    with pytest.raises(TypeError, match="not ndarray"):
        net.compress(np.zeros((1, 3, 64, 64), np.float32))
    with pytest.raises(lsq.ImageCodecError, match="N x 3 x H x W, got torch.float32 3x64x64"):
        net.compress(torch.zeros(3, 64, 64))
    with pytest.raises(lsq.ImageCodecError, match="multiples of 64 \\(pad it\\), got 1x3x64x96"):
        net.compress(torch.zeros(1, 3, 64, 96))
    with pytest.raises(lsq.ImageCodecError, match="in \\[0, 1\\]"):
        net.compress(torch.full((1, 3, 64, 64), 255.0))
    with pytest.raises(lsq.UnknownModelError, match="not 8.5"):
        net.compress(torch.zeros(1, 3, 64, 64), quality=8.5)
    out = net.compress(torch.zeros(1, 3, 64, 64))
    with pytest.raises(lsq.BitstreamError, match="two equally long"):
        net.decompress([out["strings"][0]], out["shape"])
    with pytest.raises(lsq.BitstreamError, match="two equally long"):
        net.decompress([out["strings"][0], out["strings"][1] * 2], out["shape"])
    with pytest.raises(lsq.BitstreamError, match="two equally long"):
        net.decompress([["y"], ["z"]], out["shape"])
    with pytest.raises(lsq.BitstreamError, match="two positive integers"):
        net.decompress(out["strings"], (0, 1))
