"""Latent codecs: one module per way of quantizing and coding the latent (see ``base``).

``LATENT_CODECS`` is the one registry of names; adding a quantizer means one new module
here and one line below. Models build their codec with ``make_latent_codec``, which also
wraps it in a context model when the codec options ask for one (``context``), so that a
model never dispatches on names.
"""

from __future__ import annotations

from lsq.models.latent_codecs.base import LatentCodec
from lsq.models.latent_codecs.bsq import BSQLatentCodec
from lsq.models.latent_codecs.channel_groups import ChannelGroupsLatentCodec
from lsq.models.latent_codecs.leech import LeechLatentCodec
from lsq.models.latent_codecs.leech_hybrid import LeechHybridLatentCodec
from lsq.models.latent_codecs.scalar import ScalarLatentCodec
from lsq.models.latent_codecs.spherical_leech import SphericalLeechLatentCodec

LATENT_CODECS: dict[str, type[LatentCodec]] = {
    codec.name: codec
    for codec in (ScalarLatentCodec, BSQLatentCodec, LeechLatentCodec, SphericalLeechLatentCodec,
                  LeechHybridLatentCodec)
}

#: Context models: "none" (the hyperprior alone) or "channel-groups" (options: ``groups``).
CONTEXTS = ("none", "channel-groups")


def make_latent_codec(name: str, M: int, proxy: str = "mixed", context: str = "none",
                      **options) -> LatentCodec:
    """The latent codec ``name`` for M channels, conditioned on earlier channel groups when
    ``context`` is "channel-groups"; the other options go to the codec (or the wrapper)."""
    if name not in LATENT_CODECS:
        raise ValueError(f"unknown quantizer {name!r}; expected one of {tuple(LATENT_CODECS)}")
    if context == "none":
        return LATENT_CODECS[name](M, proxy, **options)
    if context == "channel-groups":
        return ChannelGroupsLatentCodec(LATENT_CODECS[name], M, proxy, **options)
    raise ValueError(f"unknown context model {context!r}; expected one of {CONTEXTS}")


__all__ = ["CONTEXTS", "LATENT_CODECS", "LatentCodec", "BSQLatentCodec",
           "ChannelGroupsLatentCodec", "LeechHybridLatentCodec", "LeechLatentCodec",
           "ScalarLatentCodec", "SphericalLeechLatentCodec", "make_latent_codec"]
