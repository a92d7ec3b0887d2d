"""A PNG written band by band of rows, so that a decoder never holds the whole image.

8-bit L, LA, RGB or RGBA. Each row takes the PNG filter (none, sub, up, average, Paeth) whose
output has the smallest sum of absolute values read as signed bytes, the heuristic of libpng
and Pillow, and all rows go through one zlib stream; the file is an ordinary PNG.
"""

from __future__ import annotations

import struct
import zlib
from typing import BinaryIO

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLOR_TYPES = {"L": 0, "RGB": 2, "LA": 4, "RGBA": 6}
FILTER_ROWS = 64  # rows filtered at a time (five candidates of int16 each)
IDAT_BYTES = 1 << 16  # compressed bytes gathered into one IDAT chunk


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The Paeth predictor of left a, up b, upper-left c (int16 arrays)."""
    pa, pb, pc = np.abs(b - c), np.abs(a - c), np.abs(a + b - 2 * c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def filter_rows(rows: np.ndarray, above: np.ndarray, bpp: int) -> np.ndarray:
    """Rows (n, width * bpp) uint8 as PNG filtered rows (n, 1 + width * bpp): the filter
    type, then the filtered bytes; ``above`` is the row before the first (zeros at the top)."""
    x = rows.astype(np.int16)
    up = np.concatenate([above[None].astype(np.int16), x[:-1]])
    left = np.zeros_like(x)
    left[:, bpp:] = x[:, :-bpp]
    upleft = np.zeros_like(x)
    upleft[:, bpp:] = up[:, :-bpp]
    candidates = np.stack([x, x - left, x - up, x - ((left + up) >> 1),
                           x - _paeth(left, up, upleft)]).astype(np.uint8)
    cost = np.abs(candidates.view(np.int8).astype(np.int32)).sum(axis=2)  # (5, n)
    best = cost.argmin(axis=0)  # the first of equal costs, as libpng
    out = np.empty((len(rows), 1 + rows.shape[1]), np.uint8)
    out[:, 0] = best
    out[:, 1:] = candidates[best, np.arange(len(rows))]
    return out


class PngWriter:
    """Writes an image of ``width`` x ``height`` in ``mode`` to ``file``, rows in order
    (:meth:`write` any number of them at a time), then :meth:`close`."""

    def __init__(self, file: BinaryIO, width: int, height: int, mode: str,
                 level: int = 6) -> None:
        if mode not in COLOR_TYPES:
            raise ValueError(f"PNG rows of mode {mode!r}: expected one of {', '.join(COLOR_TYPES)}")
        self.file, self.width, self.height = file, width, height
        self.bpp = len(mode)
        self.rows_written = 0
        self.above = np.zeros(width * self.bpp, np.uint8)
        self.zlib = zlib.compressobj(level)
        self.pending = bytearray()
        header = struct.pack(">IIBBBBB", width, height, 8, COLOR_TYPES[mode], 0, 0, 0)
        file.write(SIGNATURE + _chunk(b"IHDR", header))

    def write(self, rows: np.ndarray) -> None:
        """The next rows, (n, width) for L or (n, width, channels) uint8."""
        rows = np.ascontiguousarray(rows, np.uint8).reshape(len(rows), -1)
        if rows.shape[1] != self.width * self.bpp:
            raise ValueError(f"rows of {rows.shape[1]} bytes, expected {self.width * self.bpp}")
        if self.rows_written + len(rows) > self.height:
            raise ValueError(f"more than the image's {self.height} rows")
        for lo in range(0, len(rows), FILTER_ROWS):
            band = rows[lo : lo + FILTER_ROWS]
            self.pending += self.zlib.compress(filter_rows(band, self.above, self.bpp).tobytes())
            self.above = band[-1].copy()
            if len(self.pending) >= IDAT_BYTES:
                self.file.write(_chunk(b"IDAT", bytes(self.pending)))
                self.pending.clear()
        self.rows_written += len(rows)

    def close(self) -> None:
        """Finish the file; every row must have been written."""
        if self.rows_written != self.height:
            raise ValueError(f"{self.rows_written} of the image's {self.height} rows written")
        self.pending += self.zlib.flush()
        self.file.write(_chunk(b"IDAT", bytes(self.pending)) + _chunk(b"IEND", b""))
        self.pending.clear()
