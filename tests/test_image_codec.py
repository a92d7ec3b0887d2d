"""In-process tests of image <-> .lsq glue: every Pillow mode, tiling, validation."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from lsq import image_codec
from lsq.codec.bitstream import (
    FLAG_ALPHA,
    FLAG_COLOR_CONVERTED,
    FLAG_DEPTH_REDUCED,
    FLAG_FRAMES_DROPPED,
    FLAG_GRAY,
    FLAG_PALETTE,
    BitstreamError,
    Header,
    pack,
    unpack,
)
from lsq.eval.metrics import psnr
from lsq.models import registry, weights_file
from lsq.models.hyperprior import build_model
from lsq.models.latent_codecs import ScalarLatentCodec
from lsq.tools.bench_codec import seam_psnr

TESTS = Path(__file__).resolve().parent
REPO_WEIGHTS = TESTS.parent / "models" / "weights"  # every model, shipped in the wheel or not


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_cli import make_weights

    folder = tmp_path_factory.mktemp("weights")
    make_weights(folder)
    return folder


@pytest.fixture(autouse=True)
def use_weights(weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(registry.WEIGHTS_ENV, str(weights))


def noise(mode: str, size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], len(mode)), dtype=np.uint8)
    return Image.fromarray(arr[..., 0] if len(mode) == 1 else arr, mode)


def transparent_palette() -> Image.Image:
    img = noise("RGB", (9, 7)).quantize(8)
    img.info["transparency"] = 0
    return img


# source image -> (decoded mode, flags that must be set)
MODES = {
    "RGB": (lambda: noise("RGB", (13, 9)), "RGB", 0),
    "RGBA": (lambda: noise("RGBA", (13, 9)), "RGBA", FLAG_ALPHA),
    "L": (lambda: noise("L", (5, 3)), "L", FLAG_GRAY),
    "LA": (lambda: noise("LA", (5, 3)), "LA", FLAG_GRAY | FLAG_ALPHA),
    "1": (lambda: noise("L", (8, 8)).convert("1"), "L", FLAG_GRAY),
    "P": (lambda: noise("RGB", (9, 7)).quantize(8), "RGB", FLAG_PALETTE),
    "P+transparency": (transparent_palette, "RGBA", FLAG_PALETTE | FLAG_ALPHA),
    "PA": (lambda: noise("RGB", (9, 7)).quantize(8).convert("PA"), "RGBA",
           FLAG_PALETTE | FLAG_ALPHA),
    "I;16": (lambda: Image.fromarray(np.full((4, 6), 40000, np.uint16)), "L",
             FLAG_GRAY | FLAG_DEPTH_REDUCED),
    "I": (lambda: noise("L", (6, 4)).convert("I"), "L", FLAG_GRAY | FLAG_DEPTH_REDUCED),
    "F": (lambda: noise("L", (6, 4)).convert("F"), "L", FLAG_GRAY | FLAG_DEPTH_REDUCED),
    "CMYK": (lambda: noise("RGB", (6, 4)).convert("CMYK"), "RGB", FLAG_COLOR_CONVERTED),
    "YCbCr": (lambda: noise("RGB", (6, 4)).convert("YCbCr"), "RGB", FLAG_COLOR_CONVERTED),
    "RGBX": (lambda: noise("RGB", (6, 4)).convert("RGBX"), "RGB", 0),
}


@pytest.mark.parametrize("name", list(MODES))
def test_every_mode_round_trips(name: str) -> None:
    make, decoded_mode, flags = MODES[name]
    img = make()
    data, report = image_codec.encode_image_report(img)
    header, _ = unpack(data)
    assert header.flags & flags == flags and header.mode == img.mode
    assert report.nbytes == len(data) and report.bpp == len(data) * 8 / (img.width * img.height)
    out = image_codec.decode_image(data)
    assert out.size == img.size and out.mode == decoded_mode
    if FLAG_ALPHA & flags:
        src = img.convert("RGBA" if decoded_mode == "RGBA" else "LA")
        assert np.array_equal(np.asarray(out.getchannel("A")), np.asarray(src.getchannel("A")))


def test_16bit_scales_to_8bit() -> None:
    img = Image.fromarray(np.array([[0, 257, 32896, 65535]], np.uint16))
    rgb, alpha, flags, notes = image_codec.normalize(img)
    assert rgb[0, :, 0].tolist() == [0, 1, 128, 255] and alpha is None
    assert flags & FLAG_DEPTH_REDUCED and "16-bit reduced to 8-bit" in notes


def test_16bit_rgb_png_is_noted() -> None:
    """Pillow opens 48-bit PNGs as 8-bit RGB; the encoder still says depth was reduced."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    raw = b"".join(b"\x00" + bytes(range(18)) for _ in range(2))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 3, 2, 16, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    _, _, flags, notes = image_codec.normalize(Image.open(io.BytesIO(png)))
    assert flags & FLAG_DEPTH_REDUCED and "16-bit reduced to 8-bit" in notes


def test_animated_gif_codes_first_frame() -> None:
    frames = [noise("RGB", (8, 8), seed=s).quantize(4) for s in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    data, report = image_codec.encode_image_report(Image.open(buf))
    assert unpack(data)[0].flags & FLAG_FRAMES_DROPPED
    assert any("first of 3 frames" in n for n in report.notes)


@pytest.mark.parametrize(("orientation", "size"), [(1, (16, 8)), (3, (16, 8)), (6, (8, 16))])
def test_exif_orientation_is_applied(orientation: int, size: tuple[int, int]) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    noise("RGB", (16, 8)).save(buf, "JPEG", exif=exif)
    data, report = image_codec.encode_image_report(Image.open(buf))
    assert image_codec.decode_image(data).size == size
    assert ("EXIF orientation applied" in report.notes) == (orientation != 1)


def test_tiles_cover_the_image_and_coding_is_deterministic() -> None:
    img = noise("RGB", (150, 100))
    data, report = image_codec.encode_image_report(img, tile=64)
    header, sections = unpack(data)
    assert header.grid == (3, 2) and report.tiles == 6 and len(sections) == 12
    assert header.latent_shapes == ((1, 1),) * 6
    assert image_codec.encode_image_report(img, tile=64)[0] == data
    first, second = image_codec.decode_image(data), image_codec.decode_image(data)
    assert first.size == (150, 100) and first.tobytes() == second.tobytes()


def test_quality_and_family_selection() -> None:
    img = noise("RGB", (8, 8))
    assert unpack(image_codec.encode_image(img, "scalar", 6))[0].model == "tiny-scalar-q6"
    assert unpack(image_codec.encode_image(img, quality=2.3))[0].quality == round(2.3 * 256) / 256
    assert unpack(image_codec.encode_image(img))[0].quality == 1  # the model's default
    with pytest.raises(registry.UnknownModelError, match="no quality 7"):
        image_codec.encode_image(img, quality=7)


def test_empty_and_oversized_images_are_refused() -> None:
    with pytest.raises(image_codec.ImageCodecError, match="empty"):
        image_codec.encode_image(Image.new("RGB", (0, 5)))
    with pytest.raises(image_codec.ImageCodecError, match="too large"):
        image_codec.encode_image(Image.new("1", (70000, 1)))


def test_cuda_refused_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(image_codec.DeviceError, match="CUDA is not available"):
        image_codec.decode_image(b"", device="cuda")
    with pytest.raises(image_codec.DeviceError, match="unknown device"):
        image_codec.check_device("tpu:x")


def repacked(data: bytes, **changes) -> bytes:
    """Re-pack a stream with header fields or sections changed (the CRC stays valid)."""
    header, sections = unpack(data)
    sections = changes.pop("sections", sections)
    return pack(type(header)(**{**header.__dict__, **changes}), sections)


def test_crafted_streams_with_valid_crc_are_refused() -> None:
    data = image_codec.encode_image_report(noise("RGBA", (70, 10)), tile=64)[0]
    header, sections = unpack(data)
    with pytest.raises(BitstreamError, match="latent shape"):
        image_codec.decode_image(repacked(data, latent_shapes=((1, 1), (2, 1))))
    with pytest.raises(BitstreamError, match="alpha"):
        image_codec.decode_image(repacked(data, sections=[*sections[:-1], b"junk"]))
    short_alpha = zlib.compress(b"\x00" * 10)
    with pytest.raises(BitstreamError, match="alpha"):
        image_codec.decode_image(repacked(data, sections=[*sections[:-1], short_alpha]))
    with pytest.raises(registry.ModelMismatchError, match="weights differ: tiny-scalar-q1"):
        image_codec.decode_image(repacked(data, weights_hash=b"\x00" * 8))
    with pytest.raises(registry.ModelMismatchError, match="not installed"):
        image_codec.decode_image(repacked(data, model="elsewhere"))
    with pytest.raises(image_codec.ImageCodecError, match="decoding limit of 699 pixels"):
        image_codec.decode_image(data, max_pixels=699)


def test_garbage_sections_decode_to_an_image_or_a_bitstream_error() -> None:
    """Entropy-coded garbage (with a valid CRC) must not crash the decoder."""
    data = image_codec.encode_image(noise("RGB", (64, 64)))
    rng = np.random.default_rng(5)
    for n in (0, 1, 7, 100):
        garbage = [rng.bytes(n), rng.bytes(n)]
        try:
            out = image_codec.decode_image(repacked(data, sections=garbage))
        except BitstreamError:
            continue
        assert out.size == (64, 64)


def test_a_bug_in_the_decoder_is_not_reported_as_a_corrupt_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only the decoder's verdict on the data is a BitstreamError; a bug stays a bug."""
    data = image_codec.encode_image(noise("RGB", (16, 16)))

    def buggy(*args, **kwargs):
        raise IndexError("index 7 is out of bounds")

    monkeypatch.setattr(ScalarLatentCodec, "decompress", buggy)
    with pytest.raises(IndexError, match="out of bounds"):
        image_codec.decode_image(data)


def test_tile_callback_counts_every_tile() -> None:
    calls: list[tuple[int, int]] = []
    data, report = image_codec.encode_image_report(
        noise("RGB", (130, 70)), tile=64, on_tile=lambda *a: calls.append(a))
    assert report.tiles == 6 and calls == [(i, 6) for i in range(1, 7)]
    calls.clear()
    image_codec.decode_image(data, on_tile=lambda *a: calls.append(a))
    assert calls == [(i, 6) for i in range(1, 7)]


SHIPPED = sorted(p.stem for p in REPO_WEIGHTS.glob("*.safetensors"))


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_round_trip(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every shipped model loads from its metadata alone, codes at its default quality far
    better than random weights do (about 5 dB on this image), and spends more bytes for a
    better picture at its highest quality than at its lowest. Barely trained models ship
    too (a first `spherical-leech` gives 24 dB here), so the bar is 20 dB; a rate capped by M
    (`spherical-leech`: 1.0 dB from quality 1 to 8 here) sets the 0.5 dB step."""
    monkeypatch.setenv(registry.WEIGHTS_ENV, str(REPO_WEIGHTS))
    config = registry.get_config(name)
    y, x = np.mgrid[0:64, 0:64]
    arr = np.stack([x * 4, y * 4, (x + y) * 2], axis=-1).astype(np.uint8)

    def psnr_and_size(quality: float | None) -> tuple[float, int]:
        data = image_codec.encode_image(Image.fromarray(arr), model=name, quality=quality)
        assert unpack(data)[0].quality == (quality or config["default_quality"])
        out = np.asarray(image_codec.decode_image(data), dtype=np.float64)
        return 10 * np.log10(255**2 / np.mean((out - arr) ** 2)), len(data)

    default_psnr, _ = psnr_and_size(None)
    low, high = (psnr_and_size(float(q)) for q in config["qualities"])
    assert default_psnr > 20, f"{name}: {default_psnr:.1f} dB at the default quality"
    if config["qualities"][0] < config["qualities"][1]:
        assert high[0] > low[0] + 0.5 and high[1] > low[1], f"{name}: {low} vs {high}"


def test_version_2_stream_decodes_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    """A version-2 stream (tiles synthesized on their own, no model version) made by the
    version-2 encoder with `leech` version 1, tile 64: the same pixels as that decoder gave."""
    monkeypatch.setenv(registry.WEIGHTS_ENV, str(REPO_WEIGHTS))
    data = (TESTS / "data" / "v2-leech-tile64.lsq").read_bytes()
    header = unpack(data)[0]
    assert (header.version, header.model_version, header.grid) == (2, 0, (2, 2))
    img = image_codec.decode_image(data)
    assert img.size == (128, 96)
    assert hashlib.sha256(img.tobytes()).hexdigest() == (
        "274662e483c425de33c16493e613b1e9d6a5de64ab6e8aefafdbf5e3d1dc4b61")


def test_version_3_stream_decodes_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    """A version-3 stream (per-tile z, tiles joined through their latents) made by the
    version-3 encoder with `leech` version 1, tile 64, from a crop of kodim23: the same
    pixels as the version-3 decoder (tiles synthesized with a border of latents) gave."""
    monkeypatch.setenv(registry.WEIGHTS_ENV, str(REPO_WEIGHTS))
    data = (TESTS / "data" / "v3-leech-tile64.lsq").read_bytes()
    header = unpack(data)[0]
    assert (header.version, header.model_version, header.grid) == (3, 1, (2, 2))
    img = image_codec.decode_image(data)
    assert img.size == (128, 96)
    assert hashlib.sha256(img.tobytes()).hexdigest() == (
        "89350c7c6b459b2d5dc3bbcb7084d604d13020b6913dfd15c8f072da80780116")


@pytest.mark.parametrize("band", [64, 128, 1024])
def test_tiles_decode_as_one_synthesis_of_all_latents(monkeypatch: pytest.MonkeyPatch,
                                                      band: int) -> None:
    """Version 3: joining tiles through their latents' borders gives the pixels that one
    synthesis of the whole latent gives, whatever the tile grid and however many columns
    are synthesized together."""
    monkeypatch.setattr(image_codec, "SYNTHESIS_BAND", band)
    data = image_codec.encode_image_report(noise("RGB", (150, 100)), tile=64)[0]
    header, sections = unpack(data)
    assert header.version == 4 and header.grid == (3, 2)
    net = registry.load(header.model)
    z_hat = image_codec._joined_z(net, header, sections)
    latents = [image_codec._tile_latent(net, header, sections, i, z_hat) for i in range(6)]
    rows = [torch.cat(latents[3 * r : 3 * r + 3], dim=2) for r in range(2)]
    whole = net.synthesize(torch.cat(rows, dim=1)[None])[0, :, :100, :150]
    expected = whole.clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(image_codec.decode_image(data)), expected)


@pytest.mark.parametrize("mode", ["RGB", "L", "LA", "RGBA"])
def test_a_png_streamed_by_rows_holds_the_decoded_pixels(monkeypatch: pytest.MonkeyPatch,
                                                         mode: str) -> None:
    """decode_to_png writes rows as every column band has made them (bands of 64 pixels on
    tiles of 64 here, so rows complete band by band out of step): the file holds the pixels
    and mode of decode_image, for the current format and for version-2 and -3 streams."""
    def check(data: bytes) -> None:
        expected = image_codec.decode_image(data)
        out = io.BytesIO()
        header = image_codec.decode_to_png(data, out)
        with Image.open(io.BytesIO(out.getvalue())) as png:
            assert png.format == "PNG" and png.mode == expected.mode == mode
            assert (png.width, png.height) == (header.width, header.height) == expected.size
            assert np.array_equal(np.asarray(png), np.asarray(expected))

    monkeypatch.setattr(image_codec, "SYNTHESIS_BAND", 64)
    check(image_codec.encode_image_report(noise(mode, (150, 100)), tile=64)[0])
    if mode == "RGB":
        monkeypatch.setenv(registry.WEIGHTS_ENV, str(REPO_WEIGHTS))
        for version in (2, 3):
            check((TESTS / "data" / f"v{version}-leech-tile64.lsq").read_bytes())


@pytest.mark.parametrize("model", ["leech", "leech-hybrid-cgf"])
def test_no_seams_at_tile_borders(kodak: Path, monkeypatch: pytest.MonkeyPatch,
                                  model: str) -> None:
    """A 256x256 crop of kodim23 in 4x4 tiles of 64 pixels against the same crop in one
    tile: the 2-pixel bands either side of the tile borders lose less than 0.1 dB (format
    3, whose tiles had their own z, lost 0.4-0.5 dB here; format 2 1.5-2 dB), so what
    seams remain are the content's, not the tiling's."""
    monkeypatch.setenv(registry.WEIGHTS_ENV, str(REPO_WEIGHTS))
    img = Image.open(kodak / "kodim23.png").convert("RGB").crop((200, 100, 456, 356))
    psnrs = []
    for tile in (64, 256):
        data = image_codec.encode_image_report(img, model=model, tile=tile)[0]
        assert unpack(data)[0].grid == (256 // tile,) * 2
        decoded = np.asarray(image_codec.decode_image(data))
        psnrs.append((psnr(np.asarray(img), decoded), seam_psnr(np.asarray(img), decoded, 64)))
    (whole, seams), (whole_one_tile, seams_one_tile) = psnrs
    assert whole > 30 and seams > whole - 0.5, (whole, seams)
    assert abs(whole - whole_one_tile) < 0.1 and seams > seams_one_tile - 0.1, psnrs


def test_stream_of_an_older_model_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream names its model version; after the model is retrained (version 2), it decodes
    when version 1 is installed beside it and, when not, says which version and where."""
    folder = tmp_path / "weights"
    folder.mkdir()
    monkeypatch.setenv(registry.WEIGHTS_ENV, str(folder))
    config = dict(name="tiny", family="scalar", qualities=[1, 5], default_quality=1, N=8, M=24)
    digests = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        net = build_model("scalar", N=8, M=24, qualities=(1, 5))
        net.update(force=True)
        path = weights_file.save(net.state_dict(), tmp_path / f"v{seed}.safetensors", config)
        digests.append(hashlib.sha256(path.read_bytes()).hexdigest()[:16])
    table = {"tiny": [{"version": v, "hash": d, "where": f"release R{v}"}
                      for v, d in zip((1, 2), digests, strict=True)]}
    (folder / "registry.json").write_text(json.dumps({"default": "tiny", "versions": table}))
    shutil.copy(tmp_path / "v1.safetensors", folder / "tiny.safetensors")
    img = noise("RGB", (40, 30))
    data = image_codec.encode_image(img)
    header = unpack(data)[0]
    assert (header.model, header.model_version, header.weights_hash.hex()) == (
        "tiny", 1, digests[0])
    before = image_codec.decode_image(data).tobytes()

    shutil.copy(tmp_path / "v2.safetensors", folder / "tiny.safetensors")  # retrained
    assert unpack(image_codec.encode_image(img))[0].model_version == 2
    with pytest.raises(registry.ModelMismatchError) as err:
        image_codec.decode_image(data)
    message = str(err.value)
    assert f"needs model 'tiny' version 1 (weights {digests[0]})" in message
    assert f"installed weights differ: tiny version 2 (weights {digests[1]})" in message
    assert "get it from release R1" in message and "tiny@1.safetensors" in message

    shutil.copy(tmp_path / "v1.safetensors", folder / "tiny@1.safetensors")
    assert image_codec.decode_image(data).tobytes() == before


def test_edge_crop_of_an_image_and_of_its_array_replicate_the_edge() -> None:
    """The encoder crops tiles from a Pillow image (not copied whole) or from an array: the
    same pixels, the image extended by its last row and column."""
    img = noise("RGB", (13, 7))
    arr = np.asarray(img)
    for box in ((0, 7, 0, 13), (2, 16, 5, 20), (6, 7, 12, 13), (3, 5, 0, 64)):
        rows = np.clip(np.arange(box[0], box[1]), 0, 6)
        cols = np.clip(np.arange(box[2], box[3]), 0, 12)
        expected = arr[rows[:, None], cols[None, :]]
        assert np.array_equal(image_codec._edge_crop(img, *box), expected)
        assert np.array_equal(image_codec._edge_crop(arr, *box), expected)


@pytest.mark.parametrize("tile", [64, 128])
def test_streamed_encoder_codes_the_whole_images_latent(tile: int) -> None:
    """The encoder keeps y for a few tile rows only (tiles of 64 pixels: the z halo spans
    two tile rows); its sections are those of the whole image's y, each tile's z being h_a
    of y with Z_HALO neighbours and its y coded under the joined z_hat."""
    img = noise("RGB", (150, 330)).filter(ImageFilter.GaussianBlur(3))
    data = image_codec.encode_image_report(img, tile=tile)[0]
    header, sections = unpack(data)
    net = registry.load(header.model)
    tiles = list(image_codec._tiles(150, 330, tile))
    with torch.inference_mode():
        _check_sections(net, img, tiles, tile, header, sections)


def _check_sections(net: torch.nn.Module, img: Image.Image, tiles: list, tile: int,
                    header: Header, sections: list[bytes]) -> None:
    """The sections that the whole image's y gives (the encoder before it was streamed)."""
    k = image_codec.LATENT_STRIDE // image_codec.Y_STRIDE
    rgb = np.asarray(img)
    y = torch.cat([torch.cat([image_codec._analysis(net, rgb, x0, y0, tw, th, "cpu")[0]
                              for _, x0, y0, tw, th in tiles if y0 == top], dim=2)
                   for top in range(0, 330, tile)], dim=1) * net.gain(header.quality).float()
    zr, zc = y.shape[1] // k, y.shape[2] // k
    z_hat = torch.empty((net.N, zr, zc))
    for i, x0, y0, _, _ in tiles:
        r0, c0 = y0 // image_codec.LATENT_STRIDE, x0 // image_codec.LATENT_STRIDE
        r1, c1 = r0 + header.latent_shapes[i][0], c0 + header.latent_shapes[i][1]
        a, b, c, d = image_codec._window(r0, r1, c0, c1, image_codec.Z_HALO, zr, zc)
        z = net.h_a(y[None, :, k * a : k * b, k * c : k * d])[0, :, r0 - a : r1 - a,
                                                               c0 - c : c1 - c]
        z_string, z_hat[:, r0:r1, c0:c1] = net.compress_hyper(z)
        assert sections[2 * i + 1] == z_string
    for i, x0, y0, _, _ in tiles:
        r0, c0 = y0 // image_codec.LATENT_STRIDE, x0 // image_codec.LATENT_STRIDE
        r1, c1 = r0 + header.latent_shapes[i][0], c0 + header.latent_shapes[i][1]
        params = image_codec._tile_params(net, z_hat, r0, r1, c0, c1)
        assert sections[2 * i] == net.compress_y(y[:, k * r0 : k * r1, k * c0 : k * c1], params)
