"""PNGs written row band by row band: every mode round-trips through Pillow whatever the
bands, the files compress like Pillow's, and misuse is refused."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lsq.png_stream import PngWriter, filter_rows


def written(rows: np.ndarray, mode: str, bands: list[int]) -> bytes:
    buf = io.BytesIO()
    writer = PngWriter(buf, rows.shape[1], rows.shape[0], mode)
    start = 0
    for n in bands:
        writer.write(rows[start : start + n])
        start += n
    writer.close()
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
def test_every_mode_round_trips_in_any_bands(mode: str) -> None:
    rng = np.random.default_rng(len(mode))
    shape = (150, 37) + ((len(mode),) if len(mode) > 1 else ())
    noise = rng.integers(0, 256, shape, dtype=np.uint8)
    smooth = np.cumsum(rng.integers(-3, 4, shape), axis=1).astype(np.uint8)
    for pixels in (noise, smooth):
        data = written(pixels, mode, [1, 63, 64, 22])  # across FILTER_ROWS
        with Image.open(io.BytesIO(data)) as img:
            assert img.mode == mode and np.array_equal(np.asarray(img), pixels)


def test_each_row_takes_the_filter_with_the_smallest_signed_sum() -> None:
    ramp = np.tile(np.arange(0, 240, 8, dtype=np.uint8), (3, 1))  # left neighbour + 8
    out = filter_rows(ramp, np.zeros(30, np.uint8), 1)
    assert out[0, 0] == 1 and (out[0, 2:] == 8).all()  # sub: 8 everywhere
    assert (out[1:, 0] == 2).all() and (out[1:, 1:] == 0).all()  # up: the row above, zeros


def test_photographs_compress_like_pillows(kodak: Path) -> None:
    with Image.open(kodak / "kodim01.png") as img:
        rgb = np.asarray(img.convert("RGB"))
    ours = written(rgb, "RGB", [100] * 5 + [12])
    pillows = io.BytesIO()
    Image.fromarray(rgb).save(pillows, format="PNG")
    assert len(ours) < 1.02 * len(pillows.getvalue())


def test_misuse_is_refused() -> None:
    writer = PngWriter(io.BytesIO(), 4, 2, "RGB")
    with pytest.raises(ValueError, match="rows of 8 bytes, expected 12"):
        writer.write(np.zeros((1, 4, 2), np.uint8))
    writer.write(np.zeros((1, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="1 of the image's 2 rows written"):
        writer.close()
    with pytest.raises(ValueError, match="more than the image's 2 rows"):
        writer.write(np.zeros((2, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="PNG rows of mode 'P'"):
        PngWriter(io.BytesIO(), 4, 2, "P")
