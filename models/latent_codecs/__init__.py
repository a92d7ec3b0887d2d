"""Latent codecs: one module per way of quantizing and coding the latent (see ``base``).

``LATENT_CODECS`` is the one registry of names; adding a quantizer means one new module
here and one line below.
"""

from __future__ import annotations

from lsq.models.latent_codecs.base import LatentCodec
from lsq.models.latent_codecs.bsq import BSQLatentCodec
from lsq.models.latent_codecs.leech import LeechLatentCodec
from lsq.models.latent_codecs.scalar import ScalarLatentCodec
from lsq.models.latent_codecs.spherical_leech import SphericalLeechLatentCodec

LATENT_CODECS: dict[str, type[LatentCodec]] = {
    codec.name: codec
    for codec in (ScalarLatentCodec, BSQLatentCodec, LeechLatentCodec, SphericalLeechLatentCodec)
}

__all__ = ["LATENT_CODECS", "LatentCodec", "BSQLatentCodec", "LeechLatentCodec",
           "ScalarLatentCodec", "SphericalLeechLatentCodec"]
