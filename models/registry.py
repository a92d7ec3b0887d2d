"""Registry of shipped models: safetensors weights plus the config needed to rebuild them.

A model NAME is the file `NAME.safetensors` in the weights folder; its safetensors metadata
holds a JSON string "config" (the format of ``lsq.models.weights_file``: name,
family, qualities [low, high], default_quality, codec_options, N, M and how it was trained).
A variable-rate model covers every quality in [low, high]; a fixed-rate one has low == high.
`registry.json` in the same folder names the default model: {"default": NAME}.
The folder is `models/weights/` of the installed package unless the
environment variable `LSQ_WEIGHTS_DIR` points elsewhere (tests, experiments).

Only safetensors files are read, so loading a model never unpickles anything.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from lsq.models import weights_file

if TYPE_CHECKING:  # torch is imported only when a model is loaded: listing stays fast
    import torch

WEIGHTS_ENV = "LSQ_WEIGHTS_DIR"


class UnknownModelError(LookupError):
    """The requested model, family or quality is not shipped."""


class ModelMismatchError(ValueError):
    """A stream needs a model that is not shipped here, or weights that differ from ours."""


class RegistryError(RuntimeError):
    """A weights file or registry.json is malformed: a packaging problem, not a user one."""


def weights_dir() -> Path:
    """The folder searched for weights (`LSQ_WEIGHTS_DIR` overrides the packaged one)."""
    env = os.environ.get(WEIGHTS_ENV)
    return Path(env) if env else Path(__file__).resolve().parent / "weights"


def _read_config(path: Path) -> dict:
    try:
        config = weights_file.read_config(path)
    except weights_file.WeightsFileError as e:
        raise RegistryError(str(e)) from None
    if config["name"] != path.stem:
        raise RegistryError(f"{path}: config name {config['name']!r} differs from the file name")
    low, high = _range(config, path)
    default = config["default_quality"]
    if not (isinstance(default, int | float) and low <= default <= high):
        raise RegistryError(f"{path}: default quality outside its range {low}..{high}")
    return config


def _range(config: dict, path: Path | None = None) -> tuple[float, float]:
    try:
        low, high = (float(q) for q in config["qualities"])
    except (TypeError, ValueError):
        raise RegistryError(f"{path}: qualities must be [low, high]") from None
    if not low <= high:
        raise RegistryError(f"{path}: qualities must be [low, high]")
    return low, high


@functools.lru_cache(maxsize=8)
def _scan(folder: Path, mtime_ns: int) -> tuple[dict[str, dict], str | None]:
    """Configs by name and the default name; cached per folder state."""
    configs = {}
    if folder.is_dir():
        for path in sorted(folder.glob("*.safetensors")):
            configs[path.stem] = _read_config(path)
    default = None
    reg = folder / "registry.json"
    if reg.is_file():
        try:
            default = json.loads(reg.read_text("utf-8")).get("default")
        except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
            raise RegistryError(f"{reg}: not a JSON object") from None
        if default is not None and default not in configs:
            raise RegistryError(f"{reg}: default {default!r} is not shipped")
    return configs, default


def _configs() -> tuple[dict[str, dict], str | None]:
    folder = weights_dir()
    try:
        mtime_ns = folder.stat().st_mtime_ns  # changes when weights are added or removed
    except OSError:
        mtime_ns = 0
    return _scan(folder, mtime_ns)


def default_name() -> str | None:
    """Name of the default model, or None when the registry names none."""
    return _configs()[1]


def list_models() -> list[dict]:
    """Configs of all shipped models, sorted by family then quality."""
    configs = _configs()[0].values()
    return sorted(configs, key=lambda c: (c["family"], _range(c), c["name"]))


def covers(config: dict, quality: float) -> bool:
    low, high = _range(config)
    return low <= quality <= high


def describe_qualities(config: dict) -> str:
    """'1-8' for a variable-rate model, '4' for a fixed-rate one."""
    low, high = _range(config)
    return f"{low:g}" if low == high else f"{low:g}-{high:g}"


def _valid_choices() -> str:
    names = [c["name"] for c in list_models()]
    families = sorted({c["family"] for c in list_models()})
    if not names:
        return f"no models are shipped in {weights_dir()}"
    return f"valid models: {', '.join(names)}; families: {', '.join(families)}"


def resolve(model: str | None = None, quality: float | None = None) -> dict:
    """Pick a config from a name or a family plus an optional quality.

    None means the default model (or the default's family when only a quality is given).
    A family picks the default model if it is of that family, else the family's model with
    the highest qualities; with a quality, the first model of the family that covers it.
    """
    configs, default = _configs()
    if model is None:
        if default is None:
            raise UnknownModelError(f"no default model configured; {_valid_choices()}")
        if quality is None:
            return configs[default]
        model = configs[default]["family"]
    if model in configs:
        config = configs[model]
        if quality is not None and not covers(config, quality):
            raise UnknownModelError(
                f"model {model!r} has qualities {describe_qualities(config)}, not {quality:g}"
            )
        return config
    family = [c for c in list_models() if c["family"] == model]
    if not family:
        raise UnknownModelError(f"unknown model {model!r}; {_valid_choices()}")
    if default is not None and configs[default]["family"] == model:  # the default first
        family = [configs[default], *(c for c in family if c["name"] != default)]
    else:  # the highest qualities first
        family.reverse()
    for config in family:
        if quality is None or covers(config, quality):
            return config
    qualities = ", ".join(describe_qualities(c) for c in family)
    raise UnknownModelError(f"family {model!r} has no quality {quality:g}; it has {qualities}")


def pick_quality(config: dict, quality: float | None) -> float:
    """The quality a model codes at: the asked one (checked) or the model's default."""
    q = config["default_quality"] if quality is None else quality
    if not covers(config, q):
        raise UnknownModelError(
            f"model {config['name']!r} has qualities {describe_qualities(config)}, not {q:g}")
    return float(q)


def get_config(name: str) -> dict:
    """Config of a shipped model by exact name (never builds a path from `name`)."""
    configs = _configs()[0]
    if name not in configs:
        raise UnknownModelError(f"model {name!r} is not shipped; {_valid_choices()}")
    return configs[name]


@functools.lru_cache(maxsize=8)
def _hash_file(path: Path, mtime_ns: int) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.digest()[:8]


def weights_hash(name: str) -> bytes:
    """First 8 bytes of the SHA-256 of the weights file: ties a stream to exact weights."""
    get_config(name)
    path = weights_dir() / f"{name}.safetensors"
    return _hash_file(path, path.stat().st_mtime_ns)


def verify(name: str, stream_hash: bytes) -> None:
    """Refuse to decode a stream made with a model or weights that are not the shipped ones."""
    if name not in _configs()[0]:
        shipped = ", ".join(c["name"] for c in list_models()) or "none"
        raise ModelMismatchError(
            f"stream needs model {name!r}, which is not installed (installed: {shipped})"
        )
    ours = weights_hash(name)
    if ours != stream_hash:
        raise ModelMismatchError(
            f"weights of model {name!r} differ from those the stream was encoded with "
            f"(stream {stream_hash.hex()}, installed {ours.hex()})"
        )


@functools.lru_cache(maxsize=4)
def _load(path: Path, mtime_ns: int, device: str) -> torch.nn.Module:
    from lsq.models.spec import ModelSpec

    config = _read_config(path)
    try:
        net = ModelSpec.from_weights_config(config).build(for_coding=True)
        state = weights_file.load_state(path)
        # Entropy tables are buffers of the state dict: never call update() here, it would
        # rebuild them from floats and break bit-exact decoding across machines.
        net.load_state_dict(state)
    except (ValueError, TypeError, KeyError, RuntimeError) as e:
        raise RegistryError(f"{path}: weights do not fit the model of its config ({e})") from None
    return net.to(device).eval()


def load(name: str, device: str = "cpu") -> torch.nn.Module:
    """Build the model, load its weights (floats cast to float32) and cache it per device."""
    get_config(name)
    path = weights_dir() / f"{name}.safetensors"
    return _load(path, path.stat().st_mtime_ns, device)
