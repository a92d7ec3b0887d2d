"""Registry of shipped models: safetensors weights plus the config needed to rebuild them.

A model NAME is the file `NAME.safetensors` in the weights folder; its safetensors metadata
holds a JSON string "config" (the format of ``lsq.models.weights_file``: name,
family, qualities [low, high], default_quality, codec_options, N, M and how it was trained).
A variable-rate model covers every quality in [low, high]; a fixed-rate one has low == high.
`registry.json` in the same folder names the default model, {"default": NAME}, and what
each model is for, {"purposes": {NAME: TEXT}}.
The folder is `models/weights/` of the installed package unless the
environment variable `LSQ_WEIGHTS_DIR` points elsewhere (tests, experiments).

Versions: released weights are frozen; a retrained model is a new version of its name.
`registry.json` lists them under "versions": {NAME: [{"version": V, "hash": HEX16,
"where": TEXT}]}, version 0 marking weights that were never released (earlier states of
the repository). The packaged table is always read; a `LSQ_WEIGHTS_DIR` registry.json
adds to it. `NAME.safetensors` is the version encoders use; other versions of NAME may be
installed beside it as `NAME@LABEL.safetensors` (LABEL free, e.g. the version number) for
decoding old streams, which find their weights by name and hash.

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
VERSION_MARK = "@"  # NAME@LABEL.safetensors: another installed version of NAME
PACKAGED_WEIGHTS = Path(__file__).resolve().parent / "weights"


class UnknownModelError(LookupError):
    """The requested model, family or quality is not shipped."""


class ModelMismatchError(ValueError):
    """A stream needs a model that is not shipped here, or weights that differ from ours."""


class RegistryError(RuntimeError):
    """A weights file or registry.json is malformed: a packaging problem, not a user one."""


def weights_dir() -> Path:
    """The folder searched for weights (`LSQ_WEIGHTS_DIR` overrides the packaged one)."""
    env = os.environ.get(WEIGHTS_ENV)
    return Path(env) if env else PACKAGED_WEIGHTS


def _model_name(path: Path) -> str:
    """NAME of NAME.safetensors or NAME@LABEL.safetensors."""
    return path.stem.split(VERSION_MARK, 1)[0]


def _read_config(path: Path) -> dict:
    try:
        config = weights_file.read_config(path)
    except weights_file.WeightsFileError as e:
        raise RegistryError(str(e)) from None
    if config["name"] != _model_name(path):
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


def _registry_json(folder: Path) -> dict:
    reg = folder / "registry.json"
    if not reg.is_file():
        return {}
    try:
        content = json.loads(reg.read_text("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RegistryError(f"{reg}: not a JSON object") from None
    if not isinstance(content, dict):
        raise RegistryError(f"{reg}: not a JSON object")
    return content


def _version_table(folder: Path) -> dict[str, list[dict]]:
    """{NAME: [{"version", "hash", "where"}]} of one registry.json, checked."""
    table = _registry_json(folder).get("versions", {})
    try:
        for entries in table.values():
            for e in entries:
                if not (isinstance(e["version"], int) and e["version"] >= 0
                        and len(bytes.fromhex(e["hash"])) == 8 and isinstance(e["where"], str)):
                    raise ValueError
    except (AttributeError, KeyError, TypeError, ValueError):
        raise RegistryError(f"{folder / 'registry.json'}: malformed \"versions\" table") from None
    return table


@functools.lru_cache(maxsize=8)
def _scan(folder: Path, mtime_ns: int) -> tuple[dict[str, dict], str | None]:
    """Configs of the NAME.safetensors files by name and the default name; cached per folder
    state (other versions, NAME@LABEL.safetensors, are read only to decode)."""
    configs = {}
    if folder.is_dir():
        for path in sorted(folder.glob("*.safetensors")):
            if VERSION_MARK not in path.stem:
                configs[path.stem] = _read_config(path)
    default = _registry_json(folder).get("default")
    if default is not None and default not in configs:
        raise RegistryError(f"{folder / 'registry.json'}: default {default!r} is not shipped")
    _version_table(folder)
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


@functools.lru_cache(maxsize=64)
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


def purposes() -> dict[str, str]:
    """What each model is for, from the packaged registry.json's "purposes"."""
    table = _registry_json(PACKAGED_WEIGHTS).get("purposes", {})
    return {k: v for k, v in table.items() if isinstance(v, str)} if isinstance(table, dict) else {}


def versions(name: str) -> list[dict]:
    """The known versions of a model name, newest first: {"version", "hash", "where"} each
    (version 0: weights that were never released), from the packaged registry.json and
    the weights folder's."""
    entries: dict[str, dict] = {}
    folders = dict.fromkeys([PACKAGED_WEIGHTS, weights_dir()])
    for folder in folders:
        for e in _version_table(folder).get(name, []):
            entries[e["hash"]] = e
    return sorted(entries.values(), key=lambda e: -e["version"])


def _release(name: str, digest: bytes) -> dict | None:
    return next((e for e in versions(name) if e["hash"] == digest.hex()), None)


def version_of(name: str, digest: bytes) -> int:
    """Released version of the weights of ``name`` with this hash; 0 if never released."""
    entry = _release(name, digest)
    return entry["version"] if entry else 0


def describe_version(name: str, digest: bytes) -> str:
    """'leech version 1 (weights 7646badc17e5fdff)', for messages and listings."""
    version = version_of(name, digest)
    label = f"version {version}" if version else "an unreleased version"
    return f"{name} {label} (weights {digest.hex()})"


def installed(name: str | None = None) -> list[tuple[str, Path, bytes]]:
    """(name, path, weights hash) of every installed weights file, NAME@LABEL ones included,
    of one model name or of all."""
    folder = weights_dir()
    _configs()  # a malformed folder fails here as everywhere
    files = []
    for path in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
        if name is None or _model_name(path) == name:
            if VERSION_MARK in path.stem:
                _read_config(path)
            files.append((_model_name(path), path, _hash_file(path, path.stat().st_mtime_ns)))
    return files


def find_weights(name: str, stream_hash: bytes, version: int | None = None) -> Path:
    """The installed weights file of model ``name`` with this hash, or ModelMismatchError
    naming the version the stream needs and where that version is published."""
    files = installed(name)
    for _, path, digest in files:
        if digest == stream_hash:
            return path
    entry = _release(name, stream_hash)
    if version is None:
        version = entry["version"] if entry else 0
    needed = f"model {name!r} " + (f"version {version}" if version else "in an unreleased version")
    needed += f" (weights {stream_hash.hex()})"
    if files:
        have = (", but the installed weights differ: "
                + ", ".join(describe_version(n, d) for n, _, d in files))
    else:
        shipped = ", ".join(c["name"] for c in list_models()) or "none"
        have = f", which is not installed (installed models: {shipped})"
    if entry is None:
        hint = "; no known release has these weights"
    else:
        label = version if version else stream_hash.hex()[:8]
        file = f"{name}{VERSION_MARK}{label}.safetensors" if files else f"{name}.safetensors"
        hint = (f"; get it from {entry['where']} and save it as {weights_dir() / file} "
                f"(or point {WEIGHTS_ENV} at a folder holding it)")
    raise ModelMismatchError(f"stream needs {needed}{have}{hint}")


def verify(name: str, stream_hash: bytes, version: int | None = None) -> None:
    """Refuse, before any model loads, a stream whose exact weights are not installed."""
    find_weights(name, stream_hash, version)


def not_installed() -> list[tuple[str, dict]]:
    """(name, newest known version) of the models the version tables know but no installed
    file provides (models kept in the repository, not in the wheel)."""
    names = {n for folder in dict.fromkeys([PACKAGED_WEIGHTS, weights_dir()])
             for n in _version_table(folder)}
    have = {n for n, _, _ in installed()}
    return [(n, versions(n)[0]) for n in sorted(names - have)]


def config_of(path: Path) -> dict:
    """The config of an installed weights file (one that ``find_weights`` returned)."""
    return _read_config(path)


@functools.lru_cache(maxsize=4)
def _load(path: Path, mtime_ns: int, device: str) -> torch.nn.Module:
    from lsq.models.spec import ModelSpec

    config = _read_config(path)
    try:
        spec = ModelSpec.from_weights_config(config)
        # Entropy tables are buffers of the state dict: never call update() here, it would
        # rebuild them from floats and break bit-exact decoding across machines.
        net = spec.load(weights_file.load_stored(path), for_coding=True)
    except (ValueError, TypeError, KeyError, RuntimeError) as e:
        raise RegistryError(f"{path}: weights do not fit the model of its config ({e})") from None
    return net.to(device).eval()


def load(name: str, device: str = "cpu") -> torch.nn.Module:
    """Build the model, load its weights (floats cast to float32) and cache it per device."""
    get_config(name)
    return load_file(weights_dir() / f"{name}.safetensors", device)


def load_file(path: Path, device: str = "cpu") -> torch.nn.Module:
    """As :func:`load`, for a file that ``find_weights`` returned (any installed version)."""
    return _load(path, path.stat().st_mtime_ns, device)
