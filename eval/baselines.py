"""Classical baseline codecs run in-process through Pillow.

Each codec is a small picklable object (so the RD engine can ship it to worker processes)
with a quality sweep chosen, by measurement on Kodak, to span roughly 0.1-2 bpp. Codecs
whose Pillow plugin is missing report ``available() == False`` with a reason instead of
failing at encode time.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, features


@dataclass(frozen=True)
class PillowCodec:
    """A Pillow image format with fixed save options and a swept quality parameter.

    ``quality_option`` names the Pillow save keyword the sweep value goes to; for JPEG 2000
    the value is a compression ratio and is wrapped into ``quality_layers``.
    """

    name: str
    description: str
    pil_format: str
    feature: str
    qualities: tuple[int, ...]
    options: dict[str, Any] = field(default_factory=dict)
    quality_option: str = "quality"

    def available(self) -> bool:
        """Whether this Pillow build can both encode and decode the format."""
        return bool(features.check(self.feature))

    @property
    def version(self) -> str:
        """What the measurements depend on besides the images: the library versions and the
        save options (the RD engine measures a codec afresh when this changes)."""
        return (f"Pillow {Image.__version__}, {self.feature} {features.version(self.feature)}, "
                f"{sorted(self.options.items())}")

    def unavailable_reason(self) -> str:
        """One line explaining why the codec is skipped."""
        return f"{self.name}: Pillow {Image.__version__} lacks the '{self.feature}' feature"

    def encode(self, rgb: np.ndarray, quality: int) -> bytes:
        """Encode an HxWx3 uint8 RGB array to the complete file bytes."""
        if quality not in self.qualities:
            raise ValueError(f"{self.name}: quality {quality} not in sweep {self.qualities}")
        value: Any = [quality] if self.quality_option == "quality_layers" else quality
        buf = io.BytesIO()
        Image.fromarray(rgb, mode="RGB").save(
            buf, format=self.pil_format, **{self.quality_option: value}, **self.options
        )
        return buf.getvalue()

    def decode(self, data: bytes) -> np.ndarray:
        """Decode file bytes back to an HxWx3 uint8 RGB array."""
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


#: JPEG quality points; dense at the low end where JPEG's rate changes fastest.
_JPEG_QUALITIES = (2, 5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 85, 90)

BASELINES: dict[str, PillowCodec] = {
    c.name: c
    for c in (
        PillowCodec(
            name="jpeg-420",
            description="JPEG (libjpeg via Pillow), 4:2:0, optimized Huffman tables",
            pil_format="JPEG",
            feature="jpg",
            qualities=_JPEG_QUALITIES,
            options={"subsampling": 2, "optimize": True},
        ),
        PillowCodec(
            name="jpeg-444",
            description="JPEG (libjpeg via Pillow), 4:4:4, optimized Huffman tables",
            pil_format="JPEG",
            feature="jpg",
            qualities=_JPEG_QUALITIES,
            options={"subsampling": 0, "optimize": True},
        ),
        PillowCodec(
            name="webp",
            description="WebP lossy (libwebp via Pillow), method=6",
            pil_format="WEBP",
            feature="webp",
            qualities=(0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95),
            options={"method": 6},
        ),
        PillowCodec(
            name="avif",
            description="AVIF (libavif via Pillow), 4:2:0, speed=6, single-threaded",
            pil_format="AVIF",
            feature="avif",
            qualities=(5, 15, 25, 35, 45, 55, 65, 75, 85, 90),
            options={"subsampling": "4:2:0", "speed": 6, "max_threads": 1},
        ),
        PillowCodec(
            name="avif-slow",
            description="AVIF (libavif with aom via Pillow), 4:4:4, speed=1, single-threaded",
            pil_format="AVIF",
            feature="avif",
            qualities=(5, 15, 25, 35, 45, 55, 65, 75, 85),
            options={"subsampling": "4:4:4", "speed": 1, "max_threads": 1},
        ),
        PillowCodec(
            name="jpeg2000",
            description=(
                "JPEG 2000 (OpenJPEG via Pillow), raw codestream, 9/7 wavelet + ICT; "
                "quality = compression ratio"
            ),
            pil_format="JPEG2000",
            feature="jpg_2000",
            qualities=(240, 160, 100, 64, 48, 32, 24, 16, 12),
            options={"quality_mode": "rates", "irreversible": True, "mct": 1, "no_jp2": True},
            quality_option="quality_layers",
        ),
    )
}
