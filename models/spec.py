"""Stand-in for the model spec (the real one comes from the spec branch): one serialisable
description of a model, the only way the trainer builds one."""

from __future__ import annotations

import dataclasses

from torch import nn


class SpecError(ValueError):
    """A model description that does not describe a buildable model."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Latent codec, channels, qualities, training proxy, context model and codec options."""

    latent_codec: str
    N: int = 128
    M: int = 192
    qualities: tuple[int, int] = (1, 8)
    proxy: str = "mixed"
    context: str = "none"
    codec_options: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        from lsq.codec.quantizers import BLOCK, PROXIES

        from .latent_codecs import CONTEXTS, LATENT_CODECS
        from .quality import MAX_QUALITY, MIN_QUALITY

        object.__setattr__(self, "qualities", tuple(self.qualities))
        low, high = self.qualities
        if self.latent_codec not in LATENT_CODECS:
            raise SpecError(f"unknown latent codec {self.latent_codec!r}")
        if not LATENT_CODECS[self.latent_codec].variable_rate and low != high:
            raise SpecError(f"{self.latent_codec} is fixed-rate: give one quality")
        if not MIN_QUALITY <= low <= high <= MAX_QUALITY:
            raise SpecError(f"qualities {low}..{high} outside {MIN_QUALITY}..{MAX_QUALITY}")
        if self.context not in CONTEXTS:
            raise SpecError(f"unknown context {self.context!r}")
        if self.proxy not in PROXIES:
            raise SpecError(f"unknown proxy {self.proxy!r}")
        if self.M % BLOCK or self.M <= 0 or self.N <= 0:
            raise SpecError(f"M must be a positive multiple of {BLOCK} and N positive")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "qualities": list(self.qualities)}

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        return cls(**d)

    @classmethod
    def from_weights_config(cls, cfg: dict) -> ModelSpec:
        options = dict(cfg.get("codec_options", {}))
        return cls(cfg["family"], cfg["N"], cfg["M"], tuple(cfg["qualities"]),
                   context=options.pop("context", "none"), codec_options=options)

    def build(self, for_coding: bool = False) -> nn.Module:
        from .hyperprior import build_model

        context = {} if self.context == "none" else {"context": self.context}
        try:
            return build_model(self.latent_codec, self.N, self.M, self.qualities,
                               proxy=self.proxy, for_coding=for_coding, **context,
                               **self.codec_options)
        except (ValueError, TypeError) as e:
            raise SpecError(str(e)) from None


PRESETS: dict[str, ModelSpec] = {
    "leech": ModelSpec("leech"),
    "scalar": ModelSpec("scalar"),
    "spherical-leech": ModelSpec("spherical-leech"),
    "leech-hybrid": ModelSpec("leech-hybrid"),
    "leech-cg": ModelSpec("leech", context="channel-groups"),
    "leech-cgf": ModelSpec("leech", context="channel-groups",
                           codec_options={"group_transform": "full"}),
    "scalar-cgf": ModelSpec("scalar", context="channel-groups",
                            codec_options={"group_transform": "full"}),
    "bsq-q2": ModelSpec("bsq", qualities=(2, 2)),
}


def preset(name: str) -> ModelSpec:
    try:
        return PRESETS[name]
    except KeyError:
        raise SpecError(f"unknown preset {name!r} (one of {', '.join(PRESETS)})") from None
