"""The Python API: whole `.lsq` files in one call, and shipped models in CompressAI's shape.

Files, byte for byte what ``lsq encode`` and ``lsq decode`` write and read (both go through
``lsq.image_codec``)::

    >>> import lsq
    >>> data = lsq.encode("photo.png", quality=4)       # or a PIL image, or an HxWx3 uint8 array
    >>> lsq.decode(data).save("photo-decoded.png")

Tensors, like CompressAI's zoo (x in [0, 1], N x 3 x H x W, H and W multiples of 64)::

    >>> net = lsq.load_model("leech")
    >>> out = net.compress(x)                          # {"strings", "shape", "quality"}
    >>> x_hat = net.decompress(out["strings"], out["shape"])["x_hat"]

Errors are typed: ``ImageCodecError`` (an input that cannot be coded), ``UnknownModelError``
(a model, family or quality that is not shipped), ``BitstreamError`` (data that is not a
valid stream), ``ModelMismatchError`` (a stream made with other weights), ``DeviceError``.
"""

from __future__ import annotations

import copy
import io
import os
import warnings

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from lsq.codec.bitstream import DEFAULT_MAX_PIXELS, BitstreamError
from lsq.codec.entropy_coding import CorruptStreamError
from lsq.image_codec import (
    LATENT_STRIDE,
    ImageCodecError,
    check_device,
    decode_image,
    encode_image_report,
)
from lsq.models import registry

ImageInput = Image.Image | str | os.PathLike | np.ndarray


def _open(image: ImageInput) -> Image.Image:
    """A Pillow image from any accepted input, opened as ``lsq encode`` opens files."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (
            image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))
        ):
            raise ImageCodecError(
                f"array image must be uint8 HxW, HxWx3 or HxWx4, got {image.dtype} "
                f"{'x'.join(map(str, image.shape))}")
        return Image.fromarray(np.ascontiguousarray(image))
    if isinstance(image, str | os.PathLike):
        data = _read(image)
        with warnings.catch_warnings():  # large images are tiled: not a decompression bomb
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                return Image.open(io.BytesIO(data))
            except UnidentifiedImageError:
                raise ImageCodecError(f"{image}: not an image format Pillow can read") from None
            except (Image.DecompressionBombError, OSError, SyntaxError, ValueError,
                    EOFError) as e:
                raise ImageCodecError(f"{image}: cannot read image ({e})") from None
    raise TypeError(f"image must be a PIL image, a path or a uint8 array, not "
                    f"{type(image).__name__}")


def _read(path: str | os.PathLike) -> bytes:
    """A file's bytes; a folder is refused as clearly as a missing file."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path}: is a directory")
    with open(path, "rb") as f:
        return f.read()


def encode(image: ImageInput, quality: float | None = None, model: str | None = None,
           device: str = "cpu") -> bytes:
    """A whole `.lsq` file: the bytes ``lsq encode`` writes for the same image and options.

    ``image`` is a PIL image, a path to any format Pillow reads, or a uint8 array (HxWx3
    RGB; HxW grey and HxWx4 RGBA are accepted too). ``quality`` is 1 (smallest) to 8 (best),
    fractions allowed; None is the model's default. ``model`` is a model or family name
    (``lsq models``); None is the default model. A path that does not exist raises
    ``FileNotFoundError``, an input of another type ``TypeError``.

    >>> data = lsq.encode("eval/sample/kodim23.png", quality=3, model="leech")
    >>> open("kodim23.lsq", "wb").write(data)
    """
    img = _open(image)
    return encode_image_report(img, model, quality, device)[0]


def decode(data: bytes | str | os.PathLike, device: str = "cpu",
           max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The image of a whole `.lsq` file (its bytes or its path), as ``lsq decode`` gives it.

    The result has the original size and mode family (L, LA, RGB or RGBA). Streams larger
    than ``max_pixels`` are refused before any work (a guard against crafted files).

    >>> img = lsq.decode(open("kodim23.lsq", "rb").read())
    >>> img.save("kodim23-decoded.png")
    """
    if isinstance(data, str | os.PathLike):
        data = _read(data)
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"data must be bytes or a path, not {type(data).__name__}")
    return decode_image(bytes(data), device, max_pixels)


class Model:
    """A shipped model with CompressAI's ``compress``/``decompress``, at a default quality.

    ``quality`` (settable) is used when a call gives none; ``net`` is the torch module, a
    private copy: changing it never changes what ``lsq.encode`` codes. Coding is exact:
    ``decompress`` gives the same pixels on any machine, CPU or GPU.
    """

    def __init__(self, net: torch.nn.Module, config: dict) -> None:
        self.net = net
        self.config = config
        self.name: str = config["name"]
        self.quality = float(config["default_quality"])

    def __repr__(self) -> str:
        return (f"lsq.Model({self.name!r}, qualities {registry.describe_qualities(self.config)}"
                f", quality {self.quality:.10g}, device {self.device})")

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def _quality(self, quality: float | None) -> float:
        q = registry.pick_quality(self.config, self.quality if quality is None else quality)
        return self.net.gains.check(q)

    def compress(self, x: torch.Tensor, quality: float | None = None) -> dict:
        """{"strings": [y_strings, z_strings], "shape": z's (h, w), "quality": q}.

        ``x``: N x 3 x H x W in [0, 1], H and W multiples of 64 (pad first, for example with
        ``torch.nn.functional.pad(x, (0, pw, 0, ph), mode="replicate")``). One y and one z
        string per image. ``decompress(**out)`` decodes at the quality it was coded at.

        >>> net = lsq.load_model("leech")
        >>> out = net.compress(torch.rand(1, 3, 64, 128))
        >>> out["shape"], len(out["strings"][0])
        ((1, 2), 1)
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, not {type(x).__name__}")
        if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
            raise ImageCodecError(f"x must be a float tensor N x 3 x H x W, got {x.dtype} "
                                  f"{'x'.join(map(str, x.shape))}")
        n, _, h, w = x.shape
        if n == 0 or h == 0 or w == 0 or h % LATENT_STRIDE or w % LATENT_STRIDE:
            raise ImageCodecError(f"x must hold at least one image with height and width "
                                  f"multiples of {LATENT_STRIDE} (pad it), got {n}x3x{h}x{w}")
        if not (torch.isfinite(x).all() and x.min() >= 0 and x.max() <= 1):
            raise ImageCodecError("x must hold values in [0, 1]")
        q = self._quality(quality)
        out = self.net.compress(x.to(self.device, torch.float32), q)
        return {"strings": out["strings"], "shape": out["shape"], "quality": q}

    def decompress(self, strings: list[list[bytes]], shape: tuple[int, int],
                   quality: float | None = None) -> dict:
        """{"x_hat": N x 3 x 64h x 64w in [0, 1]}: the inverse of :meth:`compress`, which
        must have used the same quality.

        >>> x_hat = net.decompress(out["strings"], out["shape"])["x_hat"]
        """
        try:
            y_strings, z_strings = strings
            ok = len(y_strings) == len(z_strings) > 0 and all(
                isinstance(s, bytes) for s in (*y_strings, *z_strings))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise BitstreamError("strings must be [y_strings, z_strings]: two equally long, "
                                 "non-empty lists of bytes, as compress returns them")
        try:
            h, w = (int(s) for s in shape)
        except (TypeError, ValueError):
            h = w = 0
        if h < 1 or w < 1:
            raise BitstreamError(f"shape must be two positive integers, got {shape!r}")
        q = self._quality(quality)
        try:
            return self.net.decompress([list(y_strings), list(z_strings)], (h, w), q)
        except CorruptStreamError as e:
            raise BitstreamError(f"corrupt: strings do not decode ({e})") from None


def load_model(name: str | None = None, device: str = "cpu",
               quality: float | None = None) -> Model:
    """A shipped model (by model or family name, see ``lsq models``; None: the default, the
    one ``lsq encode`` uses) ready to code tensors.

    ``quality`` sets the model's default quality (None: the one it ships with).

    >>> net = lsq.load_model("leech", quality=3)
    >>> net
    lsq.Model('leech', qualities 1-8, quality 3, device cpu)
    """
    config = registry.resolve(name, quality)
    dev = check_device(device)
    model = Model(copy.deepcopy(registry.load(config["name"], str(dev))), config)
    if quality is not None:
        model.quality = model._quality(quality)
    return model
