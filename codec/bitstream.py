"""The `.lsq` container: a versioned header, opaque coded sections and a CRC32.

Byte layout of format versions 4 and 3 (all integers unsigned, big-endian)::

    offset  size  field
    0       4     magic b"\\x89LSQ" (the high first byte catches text-mode transfers)
    4       1     format version (4, 3 or 2; version 1 streams, from fixed-rate models, are refused)
    5       1     L = length of the model name
    6       L     model name (UTF-8)
    ..      2     model version (1, 2, ... as released; 0 = weights never released)
    ..      8     weights hash (first 8 bytes of the SHA-256 of the weights file)
    ..      2+2   image width, height (1..65535)
    ..      1     K = length of the original mode string
    ..      K     original Pillow mode (ASCII, e.g. "RGB", "I;16", "P")
    ..      2     conversion flags (FLAG_*; unknown bits must be zero)
    ..      2     quality in 1/256 steps (1.0 .. 8.0 -> 256 .. 2048; 0 is invalid)
    ..      2     tile size in pixels (multiple of 64, 64..4096)
    ..      2+2   tile grid: columns, rows (must equal ceil(width / tile), ceil(height / tile))
    ..            per tile, in raster order: D (1 byte, 1..4) then D x 2-byte latent dims
    ..      4     S = number of sections (= 2 per tile, + 1 if FLAG_ALPHA)
    ..      4*S   section lengths
    ..      sum   the sections, concatenated: per tile its y then z string; then the alpha plane
    end-4   4     CRC32 of every byte before it

Version 2 is the same without the model version field. The versions also differ in how a
decoder joins tiles (``lsq.image_codec``): version 2 synthesizes every tile on its own,
version 3 synthesizes the tiles' latents joined; version 4 also joins the tiles' z before
the hyper-decoder, so that a tile's y is coded under the parameters the whole image's z
gives, not those of its own z alone.

The parser never trusts a length before checking it against the bytes actually present, so
any input either unpacks or raises `BitstreamError` in time and memory linear in its size.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass, field

MAGIC = b"\x89LSQ"
VERSION = 4
VERSIONS = (2, 3, 4)  # the format versions this lsq reads (and can write)
QUALITY_STEPS = 256  # the stream holds the quality in steps of 1/256
MAX_SIDE = 65535
MIN_TILE = 64
MAX_TILE = 4096
MAX_LATENT_NDIM = 4
MAX_NAME_BYTES = 255
MAX_MODE_BYTES = 16
HASH_BYTES = 8
# A tiny crafted file may claim 65535 x 65535 pixels (13 GB, hours of decoding); like
# Pillow's decompression-bomb limit, decoders refuse more unless the caller raises it.
DEFAULT_MAX_PIXELS = 1 << 28

FLAG_ALPHA = 1 << 0  # an extra, last section holds the alpha plane (zlib of raw 8-bit bytes)
FLAG_GRAY = 1 << 1  # coded as RGB from a grayscale image; decode restores L (or LA)
FLAG_PALETTE = 1 << 2  # palette image expanded to RGB; decoded as RGB
FLAG_DEPTH_REDUCED = 1 << 3  # 16/32-bit samples reduced to 8 bits
FLAG_COLOR_CONVERTED = 1 << 4  # CMYK, YCbCr, LAB, HSV... converted to RGB
FLAG_FRAMES_DROPPED = 1 << 5  # animated input: only the first frame is coded
KNOWN_FLAGS = (
    FLAG_ALPHA
    | FLAG_GRAY
    | FLAG_PALETTE
    | FLAG_DEPTH_REDUCED
    | FLAG_COLOR_CONVERTED
    | FLAG_FRAMES_DROPPED
)
FLAG_NAMES = {
    FLAG_ALPHA: "alpha",
    FLAG_GRAY: "gray",
    FLAG_PALETTE: "palette",
    FLAG_DEPTH_REDUCED: "depth-reduced",
    FLAG_COLOR_CONVERTED: "color-converted",
    FLAG_FRAMES_DROPPED: "frames-dropped",
}

_CRC_BYTES = 4
_FIXED_PREFIX = len(MAGIC) + 1


class BitstreamError(ValueError):
    """Raised for any byte string that is not a valid `.lsq` stream of a supported version."""


@dataclass(frozen=True)
class Header:
    """Everything a decoder needs besides the coded sections (see the module docstring)."""

    model: str
    weights_hash: bytes
    width: int
    height: int
    mode: str
    flags: int
    quality: float
    tile: int
    latent_shapes: tuple[tuple[int, ...], ...]
    section_lengths: tuple[int, ...] = field(default=())
    model_version: int = 0
    version: int = VERSION

    @property
    def grid(self) -> tuple[int, int]:
        """Tile columns and rows implied by the image size and tile size."""
        return math.ceil(self.width / self.tile), math.ceil(self.height / self.tile)

    @property
    def num_sections(self) -> int:
        """Sections the flags and tile grid require: y and z per tile, plus alpha."""
        cols, rows = self.grid
        return 2 * cols * rows + (1 if self.flags & FLAG_ALPHA else 0)

    def flag_names(self) -> list[str]:
        """Human-readable names of the set flags, for `lsq info`."""
        return [name for bit, name in FLAG_NAMES.items() if self.flags & bit]

    def validate(self, grid: tuple[int, int] | None = None) -> None:
        """Check field ranges and consistency (with a stored tile `grid` if given)."""
        if self.version not in VERSIONS:
            raise BitstreamError(f"format version {self.version} cannot be written")
        if not 0 <= self.model_version <= 0xFFFF or (self.version < 3 and self.model_version):
            raise BitstreamError(
                f"model version {self.model_version} does not fit format {self.version}")
        try:
            name = self.model.encode("utf-8")
        except UnicodeEncodeError:
            raise BitstreamError("model name is not encodable as UTF-8") from None
        if not 1 <= len(name) <= MAX_NAME_BYTES:
            raise BitstreamError(f"model name must be 1..{MAX_NAME_BYTES} bytes")
        if len(self.weights_hash) != HASH_BYTES:
            raise BitstreamError(f"weights hash must be {HASH_BYTES} bytes")
        if not (1 <= self.width <= MAX_SIDE and 1 <= self.height <= MAX_SIDE):
            raise BitstreamError(
                f"image size {self.width}x{self.height} outside 1..{MAX_SIDE} per side"
            )
        if not (1 <= len(self.mode) <= MAX_MODE_BYTES and self.mode.isascii()):
            raise BitstreamError(f"mode must be 1..{MAX_MODE_BYTES} ASCII characters")
        if not 0 <= self.flags <= 0xFFFF or self.flags & ~KNOWN_FLAGS:
            raise BitstreamError(f"unknown flag bits 0x{self.flags & ~KNOWN_FLAGS:04x}")
        steps = self.quality * QUALITY_STEPS
        if not (isinstance(self.quality, int | float) and 1 <= steps <= 0xFFFF
                and steps == int(steps)):
            raise BitstreamError(
                f"quality {self.quality} is not a positive multiple of 1/{QUALITY_STEPS}")
        if not (MIN_TILE <= self.tile <= MAX_TILE and self.tile % MIN_TILE == 0):
            raise BitstreamError(
                f"tile size {self.tile} must be a multiple of {MIN_TILE} in {MIN_TILE}..{MAX_TILE}"
            )
        cols, rows = self.grid
        if grid is not None and tuple(grid) != (cols, rows):
            raise BitstreamError(
                f"tile grid {grid[0]}x{grid[1]} does not match "
                f"{self.width}x{self.height} with tile {self.tile}"
            )
        if len(self.latent_shapes) != cols * rows:
            raise BitstreamError(
                f"{len(self.latent_shapes)} latent shapes for a {cols}x{rows} tile grid"
            )
        for shape in self.latent_shapes:
            if not 1 <= len(shape) <= MAX_LATENT_NDIM or not all(0 <= d <= 0xFFFF for d in shape):
                raise BitstreamError(f"invalid latent shape {shape}")
        if len(self.section_lengths) != self.num_sections:
            raise BitstreamError(
                f"{len(self.section_lengths)} sections, expected {self.num_sections}"
            )
        if not all(0 <= n <= 0xFFFFFFFF for n in self.section_lengths):
            raise BitstreamError("section length out of range")


def pack(header: Header, sections: list[bytes]) -> bytes:
    """Serialize a header and its sections; section lengths are taken from `sections`."""
    header = Header(
        **{**header.__dict__, "section_lengths": tuple(len(s) for s in sections)}
    )
    header.validate()
    name = header.model.encode("utf-8")
    mode = header.mode.encode("ascii")
    cols, rows = header.grid
    parts = [
        MAGIC,
        struct.pack(">BB", header.version, len(name)),
        name,
        struct.pack(">H", header.model_version) if header.version >= 3 else b"",
        header.weights_hash,
        struct.pack(">HHB", header.width, header.height, len(mode)),
        mode,
        struct.pack(">HHHHH", header.flags, int(header.quality * QUALITY_STEPS), header.tile,
                    cols, rows),
    ]
    for shape in header.latent_shapes:
        parts.append(struct.pack(f">B{len(shape)}H", len(shape), *shape))
    parts.append(struct.pack(f">I{len(sections)}I", len(sections), *header.section_lengths))
    parts.extend(bytes(s) for s in sections)
    body = b"".join(parts)
    return body + struct.pack(">I", zlib.crc32(body))


class _Reader:
    """Bounds-checked cursor: every read is checked against the real buffer first."""

    def __init__(self, data: bytes, end: int) -> None:
        self.data = data
        self.pos = 0
        self.end = end

    def take(self, n: int, what: str) -> bytes:
        if n > self.end - self.pos:
            raise BitstreamError(f"truncated: stream ends inside the {what}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str, what: str) -> tuple[int, ...]:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))


def unpack(data: bytes) -> tuple[Header, list[bytes]]:
    """Parse and verify a stream; raise BitstreamError unless it is entirely valid."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise BitstreamError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        raise BitstreamError("not an lsq file (bad magic number)")
    if len(data) < _FIXED_PREFIX:
        raise BitstreamError("truncated: stream ends before the format version")
    version = data[len(MAGIC)]
    if version not in VERSIONS:
        raise BitstreamError(
            f"format version {version} not supported (this lsq reads versions "
            f"{', '.join(map(str, VERSIONS))})"
        )
    # The CRC sits at the very end; parse up to it so a short file reads as "truncated".
    r = _Reader(data, max(len(data) - _CRC_BYTES, 0))
    r.pos = _FIXED_PREFIX
    (name_len,) = r.unpack(">B", "model name length")
    try:
        model = r.take(name_len, "model name").decode("utf-8")
    except UnicodeDecodeError as e:
        raise BitstreamError(f"model name is not valid UTF-8 ({e.reason})") from None
    (model_version,) = r.unpack(">H", "model version") if version >= 3 else (0,)
    weights_hash = r.take(HASH_BYTES, "weights hash")
    width, height, mode_len = r.unpack(">HHB", "image size")
    try:
        mode = r.take(mode_len, "image mode").decode("ascii")
    except UnicodeDecodeError:
        raise BitstreamError("image mode is not ASCII") from None
    flags, quality_steps, tile, cols, rows = r.unpack(">HHHHH", "coding parameters")
    if cols * rows > r.end - r.pos:  # each latent shape takes at least one byte
        raise BitstreamError(f"truncated: tile grid {cols}x{rows} exceeds the stream")
    shapes = []
    for _ in range(cols * rows):
        (ndim,) = r.unpack(">B", "latent shapes")
        if not 1 <= ndim <= MAX_LATENT_NDIM:
            raise BitstreamError(f"latent shape with {ndim} dimensions")
        shapes.append(r.unpack(f">{ndim}H", "latent shapes"))
    (count,) = r.unpack(">I", "section count")
    if 4 * count > r.end - r.pos:
        raise BitstreamError(f"truncated: {count} section lengths exceed the stream")
    lengths = r.unpack(f">{count}I", "section lengths")
    header = Header(
        model=model,
        weights_hash=weights_hash,
        width=width,
        height=height,
        mode=mode,
        flags=flags,
        quality=quality_steps / QUALITY_STEPS,
        tile=tile,
        latent_shapes=tuple(shapes),
        section_lengths=lengths,
        model_version=model_version,
        version=version,
    )
    header.validate(grid=(cols, rows))
    expected = r.pos + sum(lengths) + _CRC_BYTES
    if len(data) < expected:
        raise BitstreamError(f"truncated: {len(data)} bytes, header announces {expected}")
    if len(data) > expected:
        raise BitstreamError(f"{len(data) - expected} trailing bytes after the checksum")
    (crc,) = struct.unpack(">I", data[-_CRC_BYTES:])
    if crc != zlib.crc32(memoryview(data)[:-_CRC_BYTES]):
        raise BitstreamError("corrupt: checksum mismatch")
    sections = []
    for n in lengths:
        sections.append(r.take(n, "sections"))
    return header, sections
