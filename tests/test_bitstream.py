"""The .lsq container: round trips, every validation error, and a fuzz test."""

from __future__ import annotations

import random
import struct
import time
import zlib

import pytest

from lsq.codec.bitstream import (
    FLAG_ALPHA,
    FLAG_GRAY,
    MAGIC,
    MAX_SIDE,
    BitstreamError,
    Header,
    pack,
    unpack,
)


def make_header(**overrides) -> Header:
    fields = dict(
        model="leech-q3",
        weights_hash=bytes(range(8)),
        width=100,
        height=70,
        mode="RGBA",
        flags=FLAG_ALPHA | FLAG_GRAY,
        quality=3.25,
        tile=64,
        latent_shapes=((1, 1), (1, 1), (1, 1), (1, 1)),
    )
    fields.update(overrides)
    return Header(**fields)


SECTIONS = [b"y0", b"z0", b"", b"z1", b"y2" * 50, b"z2", b"y3", b"z3", b"alpha"]


def raw_stream(
    *,
    version: int = 3,
    name: bytes = b"m",
    model_version: int = 1,
    size: tuple[int, int] = (64, 64),
    mode: bytes = b"RGB",
    flags: int = 0,
    tile: int = 64,
    grid: tuple[int, int] = (1, 1),
    shapes: bytes = b"\x02\x00\x01\x00\x01",
    sections: list[bytes] | None = None,
    count: int | None = None,
    fix_crc: bool = True,
) -> bytes:
    """Hand-built stream, bypassing pack's validation, to reach each parser check."""
    sections = [b"y", b"z"] if sections is None else sections
    count = len(sections) if count is None else count
    body = (
        MAGIC
        + struct.pack(">BB", version, len(name))
        + name
        + (struct.pack(">H", model_version) if version >= 3 else b"")
        + b"h" * 8
        + struct.pack(">HHB", *size, len(mode))
        + mode
        + struct.pack(">HHHHH", flags, 256, tile, *grid)
        + shapes
        + struct.pack(f">I{len(sections)}I", count, *map(len, sections))
        + b"".join(sections)
    )
    crc = zlib.crc32(body) if fix_crc else zlib.crc32(body) ^ 1
    return body + struct.pack(">I", crc)


def test_round_trip() -> None:
    header = make_header()
    data = pack(header, SECTIONS)
    got, sections = unpack(data)
    assert sections == SECTIONS
    assert got == make_header(section_lengths=tuple(map(len, SECTIONS)))
    assert got.grid == (2, 2)
    assert got.flag_names() == ["alpha", "gray"]
    assert pack(got, sections) == data  # the encoding is canonical


def test_round_trip_unicode_name_and_limits() -> None:
    header = make_header(
        model="lëech-∞",
        width=MAX_SIDE,
        height=1,
        flags=0,
        tile=4096,
        latent_shapes=tuple((64, 1) for _ in range(16)),
    )
    sections = [bytes([i]) * i for i in range(32)]
    got, out = unpack(pack(header, sections))
    assert got.model == "lëech-∞" and got.width == MAX_SIDE and out == sections


def test_hand_built_stream_is_valid() -> None:
    header, sections = unpack(raw_stream())
    assert header.model == "m" and sections == [b"y", b"z"]
    assert (header.version, header.model_version) == (3, 1)


def test_version_2_streams_still_parse_and_pack() -> None:
    """Version 2 has no model version field; unpack reads it and pack writes it back."""
    data = raw_stream(version=2)
    header, sections = unpack(data)
    assert (header.version, header.model_version, header.model) == (2, 0, "m")
    assert pack(header, sections) == data
    with pytest.raises(BitstreamError, match="model version 1 does not fit format 2"):
        pack(make_header(version=2, model_version=1), SECTIONS)


@pytest.mark.parametrize("version", [3, 4])
def test_model_version_round_trips(version: int) -> None:
    header = make_header(model_version=65535, version=version)
    got, _ = unpack(pack(header, SECTIONS))
    assert got.model_version == 65535 and got.version == version
    assert make_header().version == 4
    assert unpack(raw_stream(model_version=0))[0].model_version == 0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not an lsq file"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not an lsq file"),
        (MAGIC, "truncated"),
        (raw_stream(version=1), "version 1 not supported"),
        (raw_stream(version=5), "version 5 not supported"),
        (raw_stream(version=0), "version 0 not supported"),
        (raw_stream(fix_crc=False), "corrupt: checksum mismatch"),
        (raw_stream()[:-1], "truncated"),
        (raw_stream()[:12], "truncated"),
        (raw_stream()[:12], "truncated: stream ends inside the model version"),
        (raw_stream() + b"\x00", "1 trailing bytes"),
        (raw_stream(name=b"\xff\xfe"), "not valid UTF-8"),
        (raw_stream(name=b""), "model name must be"),
        (raw_stream(mode=b"R\xc3\xa9"), "not ASCII"),
        (raw_stream(mode=b""), "mode must be"),
        (raw_stream(size=(0, 64)), "outside 1..65535"),
        (raw_stream(flags=0x8000), "unknown flag bits"),
        (raw_stream(tile=100), "tile size 100"),
        (raw_stream(tile=8192), "tile size 8192"),
        (raw_stream(grid=(2, 1), shapes=b"\x02\x00\x01\x00\x01" * 2), "does not match"),
        (raw_stream(grid=(60000, 60000)), "exceeds the stream"),
        (raw_stream(shapes=b"\x00"), "latent shape with 0 dimensions"),
        (raw_stream(shapes=b"\x09" + b"\x00" * 18), "latent shape with 9 dimensions"),
        (raw_stream(sections=[b"y"]), "1 sections, expected 2"),
        (raw_stream(flags=FLAG_ALPHA), "2 sections, expected 3"),
        (raw_stream(count=0xFFFFFFFF), "section lengths exceed the stream"),
    ],
)
def test_invalid_streams(data: bytes, message: str) -> None:
    with pytest.raises(BitstreamError, match=message):
        unpack(data)


def test_huge_section_length_is_not_allocated() -> None:
    data = bytearray(raw_stream())
    # first section length sits 12 bytes before the sections and the CRC
    struct.pack_into(">I", data, len(data) - 4 - 2 - 8, 0xFFFFFFF0)
    with pytest.raises(BitstreamError, match="truncated"):
        unpack(bytes(data))


def test_not_bytes() -> None:
    with pytest.raises(BitstreamError, match="expected bytes"):
        unpack("LSQ")  # type: ignore[arg-type]


def test_bitstream_error_is_value_error() -> None:
    assert issubclass(BitstreamError, ValueError)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model": ""}, "model name"),
        ({"model": "x" * 256}, "model name"),
        ({"weights_hash": b"short"}, "weights hash"),
        ({"width": MAX_SIDE + 1}, "outside"),
        ({"mode": "RGB\u00e9"}, "ASCII"),
        ({"flags": 1 << 12}, "unknown flag"),
        ({"quality": 256}, "quality"),
        ({"quality": 0}, "quality"),
        ({"quality": 3.001}, "multiple of 1/256"),
        ({"tile": 65}, "tile size"),
        ({"latent_shapes": ((1, 1),)}, "latent shapes"),
        ({"latent_shapes": ((),) * 4}, "invalid latent shape"),
        ({"latent_shapes": ((1, 70000),) * 4}, "invalid latent shape"),
        ({"model_version": 70000}, "model version 70000"),
        ({"version": 1}, "format version 1 cannot be written"),
    ],
)
def test_pack_refuses_invalid_headers(overrides: dict, message: str) -> None:
    with pytest.raises(BitstreamError, match=message):
        pack(make_header(**overrides), SECTIONS)


def test_pack_refuses_wrong_section_count() -> None:
    with pytest.raises(BitstreamError, match="sections, expected"):
        pack(make_header(), SECTIONS[:-1])


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One random mutation: flip, overwrite, insert, delete, truncate, extend or splice."""
    buf = bytearray(data)
    kind = rng.randrange(7)
    pos = rng.randrange(len(buf)) if buf else 0
    if kind == 0 and buf:
        buf[pos] ^= 1 << rng.randrange(8)
    elif kind == 1 and buf:
        buf[pos] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)])
    elif kind == 2:
        buf[pos:pos] = rng.randbytes(rng.randrange(1, 9))
    elif kind == 3:
        del buf[pos : pos + rng.randrange(1, 9)]
    elif kind == 4:
        del buf[pos:]
    elif kind == 5:
        buf += rng.randbytes(rng.randrange(1, 64))
    elif buf:
        value = rng.choice([0, 0xFF, 0xFFFF, 0xFFFFFFFF, rng.randrange(1 << 32)])
        buf[pos : pos + 4] = value.to_bytes(4, "big")
    return bytes(buf)


def fix_crc(data: bytes) -> bytes:
    """Recompute the trailing CRC so mutations reach the structural checks."""
    if len(data) < 4:
        return data
    return data[:-4] + struct.pack(">I", zlib.crc32(data[:-4]))


def test_fuzz_every_stream_unpacks_or_raises_bitstream_error() -> None:
    rng = random.Random(1234)
    seeds = [pack(make_header(), SECTIONS), raw_stream(), pack(make_header(flags=0), SECTIONS[:-1])]
    outcomes = {"ok": 0, "error": 0}
    start = time.perf_counter()
    for i in range(3000):
        data = rng.choice(seeds)
        for _ in range(rng.randrange(1, 4)):
            data = mutate(data, rng)
        if i % 2:
            data = fix_crc(data)
        t0 = time.perf_counter()
        try:
            header, sections = unpack(data)
        except BitstreamError as e:
            assert str(e)
            outcomes["error"] += 1
        else:
            assert pack(header, sections) == data
            outcomes["ok"] += 1
        assert time.perf_counter() - t0 < 0.5, f"case {i} took too long"
    assert time.perf_counter() - start < 20
    assert outcomes["error"] > 1000 and outcomes["ok"] > 0
