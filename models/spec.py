"""ModelSpec: the one serialisable description of a model, and the one way to build it.

A spec names the latent codec, the transforms' widths N and M, the integer qualities the
model covers, the training proxy, the context model and every other latent-codec option.
Its constructor validates it, so a spec that exists builds; ``to_dict``/``from_dict`` give
the JSON form stored verbatim in every new weights file (key ``spec`` of the config), and
``from_weights_config`` also reads the files that predate it (family, N, M, qualities,
codec_options). Named presets live here, not in shell name parsing.

The options a codec accepts are its constructor's keyword arguments (and the context
model's), with their type hints: a new option needs no change here. Coding-time module:
it imports no CompressAI, no compiler and no training code.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import typing
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from types import MappingProxyType, NoneType, UnionType
from typing import Any

import torch

from lsq.codec.quantizers import BLOCK, PROXIES
from lsq.models.latent_codecs import CONTEXTS, LATENT_CODECS
from lsq.models.latent_codecs.channel_groups import ChannelGroupsLatentCodec
from lsq.models.quality import MAX_QUALITY, MIN_QUALITY

#: Constructor arguments that are spec fields, not codec options.
_NOT_OPTIONS = frozenset({"self", "codec", "M", "proxy"})


class SpecError(ValueError):
    """An invalid model spec; ``field`` names what is wrong and the message is one line."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"model spec {field}: {message}")
        self.field, self.message = field, message

    def __reduce__(self) -> tuple[type[SpecError], tuple[str, str]]:
        return SpecError, (self.field, self.message)  # pickles (worker processes)


class FrozenOptions(Mapping[str, Any]):
    """Codec options sorted by name, immutable and hashable (values are scalars or tuples)."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        self._items = dict(sorted(options.items()))

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(tuple(self._items.items()))

    def __repr__(self) -> str:
        return repr(self._items)


def _accepted_options(latent_codec: str, context: str) -> dict[str, inspect.Parameter]:
    """The keyword arguments the codec's constructor (and the context model's) takes."""
    classes = [LATENT_CODECS[latent_codec]]
    if context == "channel-groups":
        classes.append(ChannelGroupsLatentCodec)
    accepted = {}
    for cls in classes:
        hints = typing.get_type_hints(cls.__init__)
        for name, param in inspect.signature(cls).parameters.items():
            if name not in _NOT_OPTIONS and param.kind is not param.VAR_KEYWORD:
                accepted[name] = param.replace(annotation=hints[name])
    return accepted


def _typed(value: Any, hint: Any, field: str) -> Any:
    """``value`` as the canonical JSON-safe value of type ``hint`` (tuples for sequences)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (UnionType, typing.Union) and NoneType in args:
        rest = [a for a in args if a is not NoneType]
        return None if value is None else _typed(value, rest[0], field)
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if (hint is float and isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value)):
        return float(value)
    if hint is str and isinstance(value, str):
        return value
    if origin is Sequence and isinstance(value, list | tuple):
        return tuple(_typed(v, args[0], f"{field}[{i}]") for i, v in enumerate(value))
    name = f"list of {args[0].__name__}" if origin is Sequence else getattr(
        hint, "__name__", str(hint))
    raise SpecError(field, f"{value!r} is not of type {name}")


def _plain_int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(field, f"{value!r} is not an integer")
    return value


def _integral(qualities: Any) -> Any:
    """Qualities with integral floats as ints: JSON may give 6.0 for 6."""
    if not isinstance(qualities, list | tuple):
        return qualities
    return tuple(int(q) if isinstance(q, float) and q.is_integer() else q for q in qualities)


def _file_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """context and codec_options from a weights config's codec_options, which hold both."""
    options = config.get("codec_options") or {}
    if not isinstance(options, Mapping):
        raise SpecError("codec_options", f"{options!r} is not a mapping")
    options = dict(options)
    return {"context": options.pop("context", "none"), "codec_options": options}


def _same_options(spec: ModelSpec, config: Mapping[str, Any]) -> bool:
    """Whether a config's codec_options give the spec's context and options (up to
    defaults and order)."""
    try:
        return dataclasses.replace(spec, **_file_options(config)) == spec
    except SpecError:
        return False


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model: latent codec, widths, qualities low..high, training proxy, context model and
    the codec's other options. Options equal to their default are dropped, so two specs of
    the same model compare equal."""

    latent_codec: str
    N: int = 128
    M: int = 192
    qualities: tuple[int, int] = (MIN_QUALITY, MAX_QUALITY)
    proxy: str = "mixed"
    context: str = "none"
    codec_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.latent_codec, str) or self.latent_codec not in LATENT_CODECS:
            raise SpecError("latent_codec", f"unknown quantizer {self.latent_codec!r}; "
                                            f"expected one of {', '.join(LATENT_CODECS)}")
        if _plain_int(self.N, "N") <= 0:
            raise SpecError("N", f"{self.N} is not positive")
        if _plain_int(self.M, "M") <= 0 or self.M % BLOCK:
            raise SpecError("M", f"{self.M} is not a positive multiple of {BLOCK}")
        object.__setattr__(self, "qualities", self._checked_qualities())
        if self.proxy not in PROXIES:
            raise SpecError("proxy", f"unknown {self.proxy!r}; expected one of "
                                     f"{', '.join(PROXIES)}")
        takes = LATENT_CODECS[self.latent_codec].proxies
        if self.proxy not in takes:
            raise SpecError("proxy", f"{self.latent_codec} takes no {self.proxy!r} (not a "
                                     f"lattice); expected one of {', '.join(takes)}")
        if self.context not in CONTEXTS:
            raise SpecError("context", f"unknown {self.context!r}; expected one of "
                                       f"{', '.join(CONTEXTS)}")
        object.__setattr__(self, "codec_options", FrozenOptions(self._checked_options()))

    def _checked_qualities(self) -> tuple[int, int]:
        q = self.qualities
        if not (isinstance(q, list | tuple) and len(q) == 2):
            raise SpecError("qualities", f"{q!r} is not a pair [low, high]")
        low, high = (_plain_int(v, "qualities") for v in q)
        if not MIN_QUALITY <= low <= high <= MAX_QUALITY:
            raise SpecError("qualities", f"{low}..{high} is not an ordered range inside "
                                         f"{MIN_QUALITY}..{MAX_QUALITY}")
        if not LATENT_CODECS[self.latent_codec].variable_rate and low != high:
            raise SpecError("qualities", f"{self.latent_codec} is fixed-rate: low and high "
                                         f"must be equal, got {low}..{high}")
        return low, high

    def _checked_options(self) -> dict[str, Any]:
        if not isinstance(self.codec_options, Mapping):
            raise SpecError("codec_options", f"{self.codec_options!r} is not a mapping")
        accepted = _accepted_options(self.latent_codec, self.context)
        options = {}
        for key, value in self.codec_options.items():
            field = f"codec_options.{key}"
            if key in ("context", "proxy"):
                raise SpecError(field, f"give {key} as the spec's own field")
            if key not in accepted:
                takes = ", ".join(sorted(accepted)) or "none"
                raise SpecError(field, f"{self.latent_codec} with context {self.context!r} "
                                       f"takes no option {key!r} (it takes: {takes})")
            value = _typed(value, accepted[key].annotation, field)
            if value != accepted[key].default:
                options[key] = value
        return options

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: every field, in declaration order, options sorted, lists for tuples."""
        return {
            "latent_codec": self.latent_codec, "N": self.N, "M": self.M,
            "qualities": list(self.qualities), "proxy": self.proxy, "context": self.context,
            "codec_options": {k: list(v) if isinstance(v, tuple) else v
                              for k, v in self.codec_options.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelSpec:
        """The spec of a ``to_dict`` form; SpecError on unknown or missing fields."""
        if not isinstance(d, Mapping):
            raise SpecError("spec", f"{d!r} is not a mapping")
        fields = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in d if k not in fields]
        if unknown:
            raise SpecError(str(unknown[0]), f"unknown field; expected {', '.join(fields)}")
        if "latent_codec" not in d:
            raise SpecError("latent_codec", "missing")
        return cls(**d)

    @classmethod
    def from_weights_config(cls, config: Mapping[str, Any]) -> ModelSpec:
        """The spec of a weights file's config: its ``spec``, which must agree with the
        file's family, N, M, qualities and codec_options; in files that predate it, those
        fields (codec_options then holds ``context``; the proxy, never recorded, is the
        default)."""
        if "spec" not in config:
            missing = [k for k in ("family", "N", "M", "qualities") if k not in config]
            if missing:
                raise SpecError(missing[0], "missing from the weights config")
            return cls(config["family"], N=config["N"], M=config["M"],
                       qualities=_integral(config["qualities"]), **_file_options(config))
        spec = cls.from_dict(config["spec"])
        ours = spec.weights_config()
        for key in ("family", "N", "M", "qualities", "codec_options"):
            if key in config and config[key] != ours[key] and not (
                    key == "codec_options" and _same_options(spec, config)):
                raise SpecError(key, f"the config says {config[key]!r}, its spec {ours[key]!r}")
        return spec

    def weights_config(self) -> dict[str, Any]:
        """The keys of a weights file's config that come from the spec: the spec itself and
        the fields the registry and older tools read (codec_options with ``context``)."""
        options = self.to_dict()["codec_options"]
        if self.context != "none":
            options = {"context": self.context, **options}
        return {"family": self.latent_codec, "N": self.N, "M": self.M,
                "qualities": list(self.qualities), "codec_options": options,
                "spec": self.to_dict()}

    def build(self, for_coding: bool = False) -> torch.nn.Module:
        """The model, freshly initialised (``for_coding``: without CompressAI, cannot train).

        The codec's own constructor judges the option values here (building on the meta
        device at construction instead would load torch's compiler stack into every encode).
        """
        from lsq.models.hyperprior import LsqHyperprior

        try:
            return LsqHyperprior(self, for_coding=for_coding)
        except ValueError as e:
            raise SpecError("codec_options", str(e)) from None

    def load(self, state: Mapping[str, torch.Tensor], for_coding: bool = False
             ) -> torch.nn.Module:
        """The model holding ``state`` (strictly: every parameter and persistent buffer),
        built without the random initialisation that ``state`` replaces: drawing it is most
        of the time a build takes. RuntimeError if a randomly initialised tensor is not one
        that ``state`` sets."""
        with _SkipRandomInit() as skipping:
            net = self.build(for_coding=for_coding)
        net.load_state_dict(state)
        loaded = {t.untyped_storage().data_ptr() for t in net.state_dict().values()}
        unset = [tuple(t.shape) for t in skipping.tensors
                 if t.untyped_storage().data_ptr() not in loaded]
        if unset:
            raise RuntimeError(f"tensors of shapes {unset} are random and not in the state")
        return net


class _SkipRandomInit(torch.overrides.TorchFunctionMode):
    """Leaves the tensors that initialisers would fill with random values as allocated, and
    collects them (the caller overwrites them all)."""

    RANDOM = frozenset({
        torch.Tensor.uniform_, torch.Tensor.normal_, torch.nn.init.uniform_,
        torch.nn.init.normal_, torch.nn.init.trunc_normal_, torch.nn.init.kaiming_uniform_,
        torch.nn.init.kaiming_normal_, torch.nn.init.xavier_uniform_,
        torch.nn.init.xavier_normal_, torch.nn.init.orthogonal_,
    })

    def __init__(self) -> None:
        super().__init__()
        self.tensors: list[torch.Tensor] = []

    def __torch_function__(self, func: Callable, types: Collection[type],
                           args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in self.RANDOM:  # nn.init passes the tensor by keyword, Tensor methods first
            tensor = args[0] if args else kwargs["tensor"]
            self.tensors.append(tensor)
            return tensor
        return func(*args, **kwargs)


_FULL = {"group_transform": "full"}
#: ELIC's uneven groups in whole blocks for M = 336: each as large as the ones before.
_FLAGSHIP = {"group_transform": "full", "groups": (24, 24, 48, 96, 144)}
#: The flagship's groups with a checkerboard spatial context inside each (ELIC's space-channel
#: context).
_FLAGSHIP_CKBD = {**_FLAGSHIP, "checkerboard": True}

#: Named models: the shipped ones, under their weights files' names too (bsq's name its
#: fixed quality), the dithered training proxies of `leech`, the separable channel-groups
#: models, and the flagship's Λ24 model and rounding twin, without and with the checkerboard,
#: and its hybrid (Λ24 on the active blocks, rounding on the rest).
PRESETS: Mapping[str, ModelSpec] = MappingProxyType({
    "leech": ModelSpec("leech"),
    "leech-dither": ModelSpec("leech", proxy="dither"),
    "leech-dither-rate": ModelSpec("leech", proxy="dither-rate"),
    "scalar": ModelSpec("scalar"),
    "leech-hybrid": ModelSpec("leech-hybrid"),
    "leech-compand": ModelSpec("leech", codec_options={"compand": "block"}),
    "leech-compand-coord": ModelSpec("leech", codec_options={"compand": "coordinate"}),
    "spherical-leech": ModelSpec("spherical-leech"),
    "bsq-m96": ModelSpec("bsq", M=96, qualities=(1, 1)),
    "bsq": ModelSpec("bsq", qualities=(2, 2)),
    "bsq-m384": ModelSpec("bsq", M=384, qualities=(6, 6)),
    "bsq-m96-q1": ModelSpec("bsq", M=96, qualities=(1, 1)),
    "bsq-q2": ModelSpec("bsq", qualities=(2, 2)),
    "bsq-m384-q6": ModelSpec("bsq", M=384, qualities=(6, 6)),
    "leech-cg": ModelSpec("leech", context="channel-groups"),
    "scalar-cg": ModelSpec("scalar", context="channel-groups"),
    "leech-cgf": ModelSpec("leech", context="channel-groups", codec_options=_FULL),
    "scalar-cgf": ModelSpec("scalar", context="channel-groups", codec_options=_FULL),
    "leech-hybrid-cgf": ModelSpec("leech-hybrid", context="channel-groups",
                                  codec_options=_FULL),
    "flagship-leech": ModelSpec("leech", N=192, M=336, context="channel-groups",
                                codec_options=_FLAGSHIP),
    "flagship-scalar": ModelSpec("scalar", N=192, M=336, context="channel-groups",
                                 codec_options=_FLAGSHIP),
    "flagship-leech-ckbd": ModelSpec("leech", N=192, M=336, context="channel-groups",
                                     codec_options=_FLAGSHIP_CKBD),
    "flagship-scalar-ckbd": ModelSpec("scalar", N=192, M=336, context="channel-groups",
                                      codec_options=_FLAGSHIP_CKBD),
    "flagship-hybrid-ckbd": ModelSpec("leech-hybrid", N=192, M=336, context="channel-groups",
                                      codec_options=_FLAGSHIP_CKBD),
})


def preset(name: str) -> ModelSpec:
    """The preset ``name``; SpecError naming the valid ones."""
    if name not in PRESETS:
        raise SpecError("preset", f"unknown {name!r}; expected one of {', '.join(PRESETS)}")
    return PRESETS[name]
