"""lsq: a learned image codec quantizing its latent on the Leech lattice.

The API (``lsq.api``) loads lazily, so ``import lsq`` and ``lsq --help`` stay free of torch::

    >>> import lsq
    >>> data = lsq.encode("photo.png", quality=4)
    >>> lsq.decode(data).save("decoded.png")
    >>> net = lsq.load_model("leech")

``lsq.LeechGaussianConditional`` puts Λ24 into CompressAI models
(``lsq.models.compressai_adapter``).
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

# Public name -> module that defines it; imported on first use.
_LAZY = {
    "encode": "lsq.api",
    "decode": "lsq.api",
    "load_model": "lsq.api",
    "Model": "lsq.api",
    "LeechConditionalLatentCodec": "lsq.models.compressai_adapter",
    "LeechGaussianConditional": "lsq.models.compressai_adapter",
    "BitstreamError": "lsq.codec.bitstream",
    "DeviceError": "lsq.image_codec",
    "ImageCodecError": "lsq.image_codec",
    "ModelMismatchError": "lsq.models.registry",
    "UnknownModelError": "lsq.models.registry",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'lsq' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
