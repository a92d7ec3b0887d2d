"""Glue between Pillow images and the models: mode handling, padding, tiling, `.lsq` files.

Modes: the networks code 8-bit RGB only, so other inputs are mapped and the mapping is
recorded in the header flags (and in `EncodeReport.notes`):

- L and 1 are coded as RGB and restored as L (LA as LA).
- P (palette) is expanded to RGB (RGBA if it has transparency) and decoded as RGB(A):
  the palette itself is not restored.
- Alpha (RGBA, LA, PA, P with transparency) is kept losslessly: the 8-bit alpha plane,
  zlib-compressed, is an extra last section; decode restores RGBA or LA.
- 16-bit (I;16*, I, 16-bit RGB PNG) is reduced to 8 bits (v * 255 / 65535, rounded);
  F (float) is clipped to 0..255. Decoded as 8-bit L or RGB.
- CMYK, YCbCr, LAB, HSV and other modes are converted to RGB by Pillow.
- Animated images: only the first frame is coded. EXIF orientation is applied; ICC
  profile, EXIF and XMP metadata are not stored (the report says so).

Size: any image from 1x1 to 65535 per side. The image, padded to a multiple of 64 by
replicating its edge, is cut into tiles of `tile` pixels (default 1024, so Kodak-sized
images are one tile), each coded with its own y and z sections. Without seams (format
version 3): a tile's latent y is the analysis of the tile plus HALO latents (32 pixels) of
its neighbours, cropped (HALO covers the reach of g_a), and the decoder joins the tiles'
latents and synthesizes the whole image at once, streamed a few latent rows at a time
(``lsq.models.synthesis``): the pixels are those of the whole image's latent, whatever the
tile grid. Analysis runs in bands of rows (``LsqHyperprior.analyze``) and the decoder holds
the latents of one tile row, so memory grows with the tile width and the image width, not
with the image height; ``decode_to_png`` also writes the pixels out as their rows complete,
where ``decode_image`` returns the whole image. Version 2 streams synthesized each tile on
its own; they still decode as they did.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps

from lsq import allocator
from lsq.codec.bitstream import (
    DEFAULT_MAX_PIXELS,
    FLAG_ALPHA,
    FLAG_COLOR_CONVERTED,
    FLAG_DEPTH_REDUCED,
    FLAG_FRAMES_DROPPED,
    FLAG_GRAY,
    FLAG_PALETTE,
    MAX_SIDE,
    BitstreamError,
    Header,
    pack,
    unpack,
)
from lsq.codec.entropy_coding import CorruptStreamError
from lsq.models import registry
from lsq.png_stream import PngWriter

LATENT_STRIDE = 64  # total downsampling of the hyper-latent z: inputs pad to this multiple
Y_STRIDE = 16  # pixels per position of the latent y
HALO = 2  # latents of neighbouring tiles that a tile's analysis sees
Z_HALO = 2  # z positions of neighbouring tiles that a tile's h_a and h_s see
SYNTHESIS_POSITIONS = 256  # latent positions synthesized at a time (bounds decoder memory)
SYNTHESIS_BAND = 1024  # pixel columns synthesized together (at least one tile's)
ANALYSIS_BAND = 16  # latent rows analysed at a time (bounds the encoder's memory)
DEFAULT_TILE = 1024
EXIF_ORIENTATION = 0x0112

#: RGB pixels to code: an HxWx3 uint8 array, or an RGB Pillow image, cropped tile by tile
#: rather than copied whole.
Pixels = np.ndarray | Image.Image

#: Called after each tile with (tiles done, tiles in all): progress bars for large images.
TileCallback = Callable[[int, int], None]


class ImageCodecError(ValueError):
    """The input image cannot be coded (empty, too large, unsupported mode)."""


class DeviceError(ValueError):
    """The requested torch device does not exist on this machine."""


@dataclass
class EncodeReport:
    """What the encoder did, for the CLI to show: model, sizes and every lossy conversion."""

    model: str
    quality: float
    width: int
    height: int
    mode: str
    tiles: int
    nbytes: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def bpp(self) -> float:
        """Bits per pixel of the whole file, header included."""
        return self.nbytes * 8 / (self.width * self.height)


def check_device(device: str) -> torch.device:
    """Parse a device string; refuse CUDA when it is absent instead of failing mid-way."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise DeviceError(f"unknown device {device!r}; use cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda requested but CUDA is not available on this machine")
    if dev.type not in ("cpu", "cuda"):
        raise DeviceError(f"unsupported device {device!r}; use cpu or cuda")
    return dev


def _is_16bit_rgb(img: Image.Image) -> bool:
    """Pillow silently opens 16-bit RGB PNGs as 8-bit RGB; its raw mode still tells."""
    for tile in getattr(img, "tile", None) or []:
        args = tile[3]
        rawmode = args if isinstance(args, str) else (args[0] if args else "")
        if isinstance(rawmode, str) and ";16" in rawmode:
            return True
    return False


def _to_8bit(img: Image.Image) -> np.ndarray:
    """High-bit-depth grayscale to 8 bits: integers scale 0..65535, floats clip 0..255."""
    arr = np.asarray(img)
    if img.mode == "F":
        return np.clip(np.nan_to_num(arr), 0, 255).round().astype(np.uint8)
    arr = np.clip(arr.astype(np.int64), 0, 65535)
    return ((arr * 255 + 32767) // 65535).astype(np.uint8)


def normalize(img: Image.Image) -> tuple[Pixels, np.ndarray | None, int, list[str]]:
    """Map any Pillow image to (RGB pixels, alpha uint8 HxW or None, flags, notes)."""
    flags = 0
    notes: list[str] = []
    if _is_16bit_rgb(img) and img.mode in ("RGB", "RGBA"):
        flags |= FLAG_DEPTH_REDUCED
        notes.append("16-bit reduced to 8-bit")
    try:
        img.load()
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageCodecError(f"cannot read image data ({e})") from None
    if getattr(img, "n_frames", 1) > 1:
        flags |= FLAG_FRAMES_DROPPED
        notes.append(f"animated image: only the first of {img.n_frames} frames coded")
    if img.getexif().get(EXIF_ORIENTATION, 1) != 1:
        img = ImageOps.exif_transpose(img)
        notes.append("EXIF orientation applied")
    dropped = [k for k in ("icc_profile", "exif", "xmp") if img.info.get(k)]
    if dropped:
        notes.append(f"metadata dropped: {', '.join(dropped)}")
    mode = img.mode
    alpha = None
    if mode in ("1", "L"):
        flags |= FLAG_GRAY
        gray = np.asarray(img.convert("L"))
    elif mode in ("LA", "La"):
        flags |= FLAG_GRAY
        la = np.asarray(img.convert("LA"))
        gray, alpha = la[..., 0], la[..., 1]
    elif mode.startswith("I") or mode == "F":
        flags |= FLAG_GRAY | FLAG_DEPTH_REDUCED
        notes.append(
            "16-bit reduced to 8-bit" if mode != "F" else "32-bit float clipped to 8-bit"
        )
        gray = _to_8bit(img)
    else:
        gray = None
    if gray is not None:
        rgb = np.repeat(gray[..., None], 3, axis=2)
        notes.append("grayscale coded as RGB, restored as grayscale")
    else:
        if mode in ("P", "PA"):
            flags |= FLAG_PALETTE
            notes.append("palette expanded to RGB; decoded as true color")
            has_alpha = mode == "PA" or "transparency" in img.info
            img = img.convert("RGBA" if has_alpha else "RGB")
        elif mode in ("RGBa", "RGBA"):
            img = img.convert("RGBA")
        elif mode not in ("RGB", "RGBX"):
            flags |= FLAG_COLOR_CONVERTED
            notes.append(f"{mode} converted to RGB")
            try:
                img = img.convert("RGB")
            except ValueError as e:
                raise ImageCodecError(f"cannot convert mode {mode} to RGB: {e}") from None
        if img.mode == "RGBA":
            rgb, alpha = img.convert("RGB"), np.asarray(img.getchannel("A"))
        else:
            rgb = img if img.mode == "RGB" else img.convert("RGB")
    if alpha is not None:
        flags |= FLAG_ALPHA
        notes.append("alpha kept losslessly")
    return rgb, alpha, flags, notes


def _tile_count(width: int, height: int, tile: int) -> int:
    return math.ceil(width / tile) * math.ceil(height / tile)


def _tiles(width: int, height: int, tile: int):
    """Yield (index, x0, y0, tile width, tile height) in raster order."""
    cols, rows = math.ceil(width / tile), math.ceil(height / tile)
    for r in range(rows):
        for c in range(cols):
            x0, y0 = c * tile, r * tile
            yield r * cols + c, x0, y0, min(tile, width - x0), min(tile, height - y0)


def _padded(n: int) -> int:
    return math.ceil(n / LATENT_STRIDE) * LATENT_STRIDE


def _latent_shape(tw: int, th: int) -> tuple[int, int]:
    return _padded(th) // LATENT_STRIDE, _padded(tw) // LATENT_STRIDE


def encode_image_report(
    img: Image.Image,
    model: str | None = None,
    quality: float | None = None,
    device: str = "cpu",
    tile: int = DEFAULT_TILE,
    on_tile: TileCallback | None = None,
) -> tuple[bytes, EncodeReport]:
    """Encode an image to `.lsq` bytes and report the conversions that were applied."""
    dev = check_device(device)
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageCodecError(f"empty image ({width}x{height})")
    if width > MAX_SIDE or height > MAX_SIDE:
        raise ImageCodecError(f"image {width}x{height} too large: at most {MAX_SIDE} per side")
    mode = img.mode
    rgb, alpha, flags, notes = normalize(img)  # bad image data fails before the model loads
    height, width = _size(rgb)  # EXIF orientation may have swapped the sides
    config = registry.resolve(model, quality)
    name = config["name"]
    net = registry.load(name, str(dev))
    q = net.gains.check(registry.pick_quality(config, quality))
    digest = registry.weights_hash(name)
    with torch.inference_mode():
        sections, shapes = _encode_tiles(net, rgb, q, tile, dev, on_tile)
    if alpha is not None:
        sections.append(zlib.compress(alpha.tobytes(), 9))
    header = Header(
        model=name,
        weights_hash=digest,
        width=width,
        height=height,
        mode=mode,
        flags=flags,
        quality=q,
        tile=tile,
        latent_shapes=tuple(shapes),
        model_version=registry.version_of(name, digest),
    )
    data = pack(header, sections)
    report = EncodeReport(
        model=name,
        quality=header.quality,
        width=width,
        height=height,
        mode=mode,
        tiles=len(shapes),
        nbytes=len(data),
        notes=notes,
    )
    return data, report


def _window(r0: int, r1: int, c0: int, c1: int, halo: int,
            rows: int, cols: int) -> tuple[int, int, int, int]:
    """Rows r0..r1 and columns c0..c1 grown by ``halo`` either side, within rows x cols."""
    return max(r0 - halo, 0), min(r1 + halo, rows), max(c0 - halo, 0), min(c1 + halo, cols)


def _tile_params(net: torch.nn.Module, z_hat: torch.Tensor, r0: int, r1: int, c0: int,
                 c1: int) -> torch.Tensor:
    """The latent codec's parameters of the tile whose z is z_hat[:, r0:r1, c0:c1], from the
    whole image's z_hat with Z_HALO positions of the neighbours' (as one hyper-decoding of
    the whole z gives them)."""
    a, b, c, d = _window(r0, r1, c0, c1, Z_HALO, *z_hat.shape[1:])
    params = net.hyper_params(z_hat[:, a:b, c:d])
    k = LATENT_STRIDE // Y_STRIDE
    return params[:, k * (r0 - a) : k * (r1 - a), k * (c0 - c) : k * (c1 - c)]


def _encode_tiles(net: torch.nn.Module, rgb: Pixels, q: float, tile: int,
                  dev: torch.device, on_tile: TileCallback | None
                  ) -> tuple[list[bytes], list[tuple[int, ...]]]:
    """Version 4: the y and z sections of every tile, and its z shape. Each tile's z is h_a
    of its scaled latent y plus Z_HALO z positions of the neighbours' y, cropped, and its y
    is coded under the parameters of the joined z_hat (``_tile_params``), as the decoder
    will make them. Streamed by tile rows: with ``reach`` the tile rows that Z_HALO z
    positions span, row r is analysed, then the z of row r - reach (which reads y down to
    row r) is coded, then the y of row r - 2 reach (whose parameters read z_hat down to
    row r - reach); so y is kept for 3 tile rows (for tiles of 128 pixels or more),
    whatever the image height."""
    height, width = _size(rgb)
    k = LATENT_STRIDE // Y_STRIDE
    rows, cols = _padded(height) // Y_STRIDE, _padded(width) // Y_STRIDE
    grid_cols, grid_rows = math.ceil(width / tile), math.ceil(height / tile)
    tiles = list(_tiles(width, height, tile))
    gain = net.gain(q).to(dev, torch.float32)
    per_row = tile // Y_STRIDE  # latent rows of a tile row
    reach = -(-Z_HALO * LATENT_STRIDE // tile)
    ys: dict[int, torch.Tensor] = {}  # the scaled y of the tile rows kept, all columns

    def y_rows(lo: int, hi: int) -> torch.Tensor:
        """Latent rows lo..hi-1 of y, all columns, from the tile rows kept."""
        return torch.cat([t[:, max(lo - r * per_row, 0) : hi - r * per_row]
                          for r, t in ys.items()
                          if r * per_row < hi and r * per_row + t.shape[1] > lo], dim=1)

    z_hat: torch.Tensor | None = None
    z_strings: dict[int, bytes] = {}
    shapes: list[tuple[int, ...]] = []
    sections: list[bytes] = []
    for step in range(grid_rows + 2 * reach):
        row = _row(tiles, step, grid_cols)
        if row:
            ys[step] = torch.cat([_analysis(net, rgb, x0, y0, tw, th, dev)[0] * gain
                                  for _, x0, y0, tw, th in row], dim=2)
        for i, x0, y0, tw, th in _row(tiles, step - reach, grid_cols):
            r0, c0 = y0 // LATENT_STRIDE, x0 // LATENT_STRIDE
            r1, c1 = r0 + _padded(th) // LATENT_STRIDE, c0 + _padded(tw) // LATENT_STRIDE
            a, b, c, d = _window(r0, r1, c0, c1, Z_HALO, rows // k, cols // k)
            window = y_rows(k * a, k * b)[None, :, :, k * c : k * d]
            z = net.h_a(window)[0, :, r0 - a : r1 - a, c0 - c : c1 - c]
            z_strings[i], part = net.compress_hyper(z)
            if z_hat is None:
                z_hat = part.new_empty((part.shape[0], rows // k, cols // k))
            z_hat[:, r0:r1, c0:c1] = part
            shapes.append(tuple(int(n) for n in part.shape[1:]))
        done = step - 2 * reach
        for i, x0, y0, _, _ in _row(tiles, done, grid_cols):
            r0, c0 = y0 // LATENT_STRIDE, x0 // LATENT_STRIDE
            r1, c1 = r0 + shapes[i][0], c0 + shapes[i][1]
            params = _tile_params(net, z_hat, r0, r1, c0, c1)
            sections += [net.compress_y(ys[done][:, :, k * c0 : k * c1], params),
                         z_strings.pop(i)]
            if on_tile is not None:
                on_tile(i + 1, len(tiles))
        ys.pop(done, None)
        allocator.release()
    return sections, shapes


def _row(tiles: list, r: int, cols: int) -> list:
    """The tiles of tile row r (none for r < 0 or past the last row)."""
    return tiles[r * cols : (r + 1) * cols] if r >= 0 else []


def _size(rgb: Pixels) -> tuple[int, int]:
    """(height, width) of RGB pixels."""
    return (rgb.height, rgb.width) if isinstance(rgb, Image.Image) else rgb.shape[:2]


def _edge_crop(rgb: Pixels, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """rgb[y0:y1, x0:x1] (HxWx3 uint8) of the image extended to the right and below by
    replicating its edge; (x0, y0) lies in the image."""
    height, width = _size(rgb)
    bottom, right = min(y1, height), min(x1, width)
    if isinstance(rgb, Image.Image):
        block = np.asarray(rgb.crop((x0, y0, right, bottom)))
    else:
        block = rgb[y0:bottom, x0:right]
    return np.pad(block, ((0, y1 - bottom), (0, x1 - right), (0, 0)), mode="edge")


def _analysis(net: torch.nn.Module, rgb: Pixels, x0: int, y0: int, tw: int, th: int,
              dev: torch.device) -> torch.Tensor:
    """g_a of one tile (1, M, h, w): run on the tile plus HALO latents of its neighbours in
    the edge-padded image, then cropped, so that the tile's latent is the whole image's."""
    height, width = (_padded(n) for n in _size(rgb))
    halo = HALO * Y_STRIDE
    top, left = max(y0 - halo, 0), max(x0 - halo, 0)
    bottom, right = min(y0 + _padded(th) + halo, height), min(x0 + _padded(tw) + halo, width)
    block = _edge_crop(rgb, top, bottom, left, right)
    x = torch.from_numpy(block).to(dev).permute(2, 0, 1)[None].float().div_(255)
    y = net.analyze(x, band=ANALYSIS_BAND)
    r, c = (y0 - top) // Y_STRIDE, (x0 - left) // Y_STRIDE
    return y[..., r : r + _padded(th) // Y_STRIDE, c : c + _padded(tw) // Y_STRIDE]


def encode_image(
    img: Image.Image,
    model: str | None = None,
    quality: float | None = None,
    device: str = "cpu",
) -> bytes:
    """Encode an image to `.lsq` bytes with the chosen (or default) shipped model."""
    return encode_image_report(img, model, quality, device)[0]


def _decode_alpha(section: bytes, width: int, height: int) -> np.ndarray:
    """Inflate the alpha plane, never past width * height bytes."""
    size = width * height
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(section, size)
    except zlib.error as e:
        raise BitstreamError(f"corrupt alpha section ({e})") from None
    if len(raw) != size or not inflater.eof or inflater.unconsumed_tail or inflater.unused_data:
        raise BitstreamError("corrupt alpha section (wrong size)")
    return np.frombuffer(raw, np.uint8).reshape(height, width)


def _tile_latent(net: torch.nn.Module, header: Header, sections: list[bytes], i: int,
                 z_hat: torch.Tensor | None) -> torch.Tensor:
    """The decoded latent y_hat (M, h, w) of tile i, float64 on the CPU: under the
    parameters of the joined z_hat (version 4) or of the tile's own z (version 3)."""
    shape = header.latent_shapes[i]
    try:
        if z_hat is None:
            strings = [[sections[2 * i]], [sections[2 * i + 1]]]
            y_hat = net.decompress_latents(strings, shape, header.quality)[0]
        else:
            cols = header.grid[0]
            r0 = i // cols * header.tile // LATENT_STRIDE
            c0 = i % cols * header.tile // LATENT_STRIDE
            params = _tile_params(net, z_hat, r0, r0 + shape[0], c0, c0 + shape[1])
            y_hat = net.decompress_y(sections[2 * i], params, header.quality)
    # Only the decoder's own verdict on the data means a corrupt stream (the integer
    # hyper-decoder refuses out-of-range latents too); any other exception is a bug
    # of lsq and must surface as one.
    except CorruptStreamError as e:
        raise BitstreamError(f"corrupt: tile {i} does not decode ({e})") from None
    expected = tuple(LATENT_STRIDE // Y_STRIDE * d for d in shape)
    if tuple(y_hat.shape[1:]) != expected:
        raise BitstreamError(f"corrupt: tile {i} decodes to latent shape {tuple(y_hat.shape)}")
    return y_hat


def _joined_z(net: torch.nn.Module, header: Header, sections: list[bytes]) -> torch.Tensor:
    """Version 4: the z_hat of every tile, joined into the whole image's."""
    rows, cols = (_padded(n) // LATENT_STRIDE for n in (header.height, header.width))
    z_hat: torch.Tensor | None = None
    for i, x0, y0, _, _ in _tiles(header.width, header.height, header.tile):
        shape = header.latent_shapes[i]
        try:
            part = net.decompress_hyper(sections[2 * i + 1], shape)
        except CorruptStreamError as e:
            raise BitstreamError(f"corrupt: tile {i} does not decode ({e})") from None
        if z_hat is None:
            z_hat = part.new_empty((part.shape[0], rows, cols))
        r0, c0 = y0 // LATENT_STRIDE, x0 // LATENT_STRIDE
        z_hat[:, r0 : r0 + shape[0], c0 : c0 + shape[1]] = part
    return z_hat


def _decode_tiles(net: torch.nn.Module, header: Header, sections: list[bytes],
                  out: _Output, on_tile: TileCallback | None) -> None:
    """Versions 3 and 4: one synthesis of the whole image's latent, made band by band of
    SYNTHESIS_BAND pixel columns (``Synthesis.band``), each streamed a few latent rows at
    a time: no seams, and each output value is the one a single synthesis of all latents
    gives. A tile row is decoded tile by tile as the bands reach it, so the decoder holds
    the latents of a band's tiles and of its two neighbours, whatever the image's size."""
    cols, rows = header.grid
    per_tile = header.tile // Y_STRIDE  # latent columns of a tile
    tiles_per_band = max(1, SYNTHESIS_BAND // header.tile)
    width = _padded(header.width) // Y_STRIDE
    synthesis = net.synthesis()
    span = tiles_per_band * per_tile  # latent columns of a band
    bands = [synthesis.band(width, lo, min(lo + span, width)) for lo in range(0, width, span)]
    chunk = max(1, SYNTHESIS_POSITIONS // (bands[0].window[1] - bands[0].window[0]))
    z_hat = _joined_z(net, header, sections) if header.version >= 4 else None
    done = [0] * len(bands)  # output rows pasted, per band

    def paste(b: int, block: torch.Tensor) -> None:
        n = min(block.shape[1], header.height - done[b])
        x0 = b * span * Y_STRIDE
        if n > 0 and x0 < header.width:
            out.paste(block[:, :n, : header.width - x0].clamp(0, 1).mul(255).round(),
                      x0, done[b])
        done[b] += block.shape[1]

    for r in range(rows):
        latents: dict[int, torch.Tensor] = {}  # by tile column, this tile row's
        for b, band in enumerate(bands):
            first, last = band.window
            for c in range(first // per_tile, (last - 1) // per_tile + 1):
                if c not in latents:
                    latents[c] = _tile_latent(net, header, sections, r * cols + c, z_hat)
            window = torch.cat([t[:, :, max(first - c * per_tile, 0) : last - c * per_tile]
                                for c, t in latents.items()
                                if c * per_tile < last and c * per_tile + t.shape[2] > first],
                               dim=2)
            for lo in range(0, window.shape[1], chunk):
                paste(b, band.push(window[:, lo : lo + chunk]))
            del window
            for c in [c for c in latents if (c + 1) * per_tile < (b + 1) * span]:
                del latents[c]  # the next band's window starts one column before it
            allocator.release()
            if on_tile is not None:
                for c in range(b * tiles_per_band, min((b + 1) * tiles_per_band, cols)):
                    on_tile(r * cols + c + 1, len(header.latent_shapes))
        out.rows_done(min(min(done), header.height))
    for b, band in enumerate(bands):
        paste(b, band.close())
    out.rows_done(header.height)


def _pixels(pixels: torch.Tensor) -> np.ndarray:
    """Pixel values (3, h, w), already rounded to 0..255, as an (h, w, 3) uint8 array."""
    return np.ascontiguousarray(pixels.to(torch.uint8).permute(1, 2, 0).cpu().numpy())


class _Output:
    """Where the decoder puts its RGB pixels: blocks at (x0, y0), then word that every row
    above some row is complete (rows complete from the top, whatever the block order)."""

    def paste(self, pixels: torch.Tensor, x0: int, y0: int) -> None:
        raise NotImplementedError

    def rows_done(self, rows: int) -> None:
        """Rows 0..rows-1 are complete."""


class _ImageOutput(_Output):
    """The whole image, as a Pillow image: the decoder holds it and a block, never a
    second copy of the image."""

    def __init__(self, width: int, height: int) -> None:
        self.img = Image.new("RGB", (width, height))

    def paste(self, pixels: torch.Tensor, x0: int, y0: int) -> None:
        self.img.paste(Image.fromarray(_pixels(pixels)), (x0, y0))


class _RowsOutput(_Output):
    """Complete rows handed to ``emit`` (rows (n, width, 3) uint8, first row index) as soon
    as they are complete: only the rows not yet complete are held."""

    def __init__(self, width: int, emit: Callable[[np.ndarray, int], None]) -> None:
        self.emit, self.first = emit, 0
        self.rows = np.zeros((0, width, 3), np.uint8)  # from row self.first on

    def paste(self, pixels: torch.Tensor, x0: int, y0: int) -> None:
        block = _pixels(pixels)
        top, bottom = y0 - self.first, y0 - self.first + block.shape[0]
        if bottom > len(self.rows):  # grow, at least doubling, so pastes copy rarely
            grown = np.zeros((max(bottom, 2 * len(self.rows)), *self.rows.shape[1:]), np.uint8)
            grown[: len(self.rows)] = self.rows
            self.rows = grown
        self.rows[top:bottom, x0 : x0 + block.shape[1]] = block

    def rows_done(self, rows: int) -> None:
        n = rows - self.first
        if n <= 0:
            return
        self.emit(self.rows[:n], self.first)
        self.rows, self.first = self.rows[n:], rows  # a view: the next growth copies it


def _decode_tiles_v2(net: torch.nn.Module, header: Header, sections: list[bytes],
                     out: _Output, on_tile: TileCallback | None) -> None:
    """Version 2: every tile synthesized on its own (as version 2 decoders did)."""
    for i, x0, y0, tw, th in _tiles(header.width, header.height, header.tile):
        strings = [[sections[2 * i]], [sections[2 * i + 1]]]
        try:
            x_hat = net.decompress(strings, header.latent_shapes[i], header.quality)["x_hat"]
        except CorruptStreamError as e:
            raise BitstreamError(f"corrupt: tile {i} does not decode ({e})") from None
        if tuple(x_hat.shape) != (1, 3, _padded(th), _padded(tw)):
            raise BitstreamError(f"corrupt: tile {i} decodes to shape {tuple(x_hat.shape)}")
        out.paste(x_hat[0, :, :th, :tw].clamp(0, 1).mul(255).round(), x0, y0)
        if x0 + tw == header.width:
            out.rows_done(y0 + th)
        if on_tile is not None:
            on_tile(i + 1, len(header.latent_shapes))


def _open(data: bytes, device: str, max_pixels: int
          ) -> tuple[Header, list[bytes], torch.nn.Module, np.ndarray | None]:
    """The stream checked against its model: header, sections, the model, the alpha plane."""
    dev = check_device(device)
    header, sections = unpack(data)
    if header.width * header.height > max_pixels:
        raise ImageCodecError(
            f"image {header.width}x{header.height} exceeds the decoding limit of "
            f"{max_pixels} pixels (raise it with --max-pixels)"
        )
    for i, _, _, tw, th in _tiles(header.width, header.height, header.tile):
        if tuple(header.latent_shapes[i]) != _latent_shape(tw, th):
            raise BitstreamError(
                f"corrupt: tile {i} latent shape {header.latent_shapes[i]} "
                f"does not fit its {tw}x{th} pixels"
            )
    path = registry.find_weights(header.model, header.weights_hash,
                                 header.model_version if header.version >= 3 else None)
    if not registry.covers(registry.config_of(path), header.quality):
        raise BitstreamError(f"corrupt: quality {header.quality:g} is outside the qualities "
                             f"of model {header.model!r}")
    alpha = None
    if header.flags & FLAG_ALPHA:
        alpha = _decode_alpha(sections[-1], header.width, header.height)
    return header, sections, registry.load_file(path, str(dev)), alpha


def _decode_into(out: _Output, net: torch.nn.Module, header: Header, sections: list[bytes],
                 on_tile: TileCallback | None) -> None:
    with torch.inference_mode():
        if header.version >= 3:
            _decode_tiles(net, header, sections, out, on_tile)
        else:
            _decode_tiles_v2(net, header, sections, out, on_tile)


def decoded_mode(header: Header) -> str:
    """The mode a stream decodes to: L, LA, RGB or RGBA."""
    return ("L" if header.flags & FLAG_GRAY else "RGB") + ("A" if header.flags & FLAG_ALPHA
                                                           else "")


def decode_image(
    data: bytes,
    device: str = "cpu",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    on_tile: TileCallback | None = None,
) -> Image.Image:
    """Decode `.lsq` bytes to a Pillow image of the original size (L, LA, RGB or RGBA)."""
    header, sections, net, alpha = _open(data, device, max_pixels)
    out = _ImageOutput(header.width, header.height)
    _decode_into(out, net, header, sections, on_tile)
    img = out.img
    if header.flags & FLAG_GRAY:
        img = img.convert("L")
    if alpha is not None:
        img.putalpha(Image.fromarray(alpha))
    return img


def decode_to_png(
    data: bytes,
    file: BinaryIO,
    device: str = "cpu",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    on_tile: TileCallback | None = None,
) -> Header:
    """Decode `.lsq` bytes as a PNG written to ``file`` row band by row band (the pixels of
    :func:`decode_image`), never holding the whole image; returns the stream's header."""
    header, sections, net, alpha = _open(data, device, max_pixels)
    writer = PngWriter(file, header.width, header.height, decoded_mode(header))

    def emit(rows: np.ndarray, first: int) -> None:
        if header.flags & FLAG_GRAY:  # as decode_image converts
            rows = np.asarray(Image.fromarray(rows).convert("L"))[..., None]
        if alpha is not None:
            rows = np.concatenate([rows, alpha[first : first + len(rows), :, None]], axis=2)
        writer.write(rows)

    _decode_into(_RowsOutput(header.width, emit), net, header, sections, on_tile)
    writer.close()
    return header
