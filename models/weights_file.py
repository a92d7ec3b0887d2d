"""The weights file format: one safetensors file per model, its config embedded.

The file's metadata holds one key, "config": a JSON object with at least REQUIRED_KEYS
(name, family, qualities [low, high], default_quality, N, M), optionally codec_options,
the model's ``spec`` (``lsq.models.spec``; files that predate it have none), and how the
weights were trained: totals (steps, images_seen, gpu_time) and the last process's batch,
crop, data and command; newer files add ``sessions``, the run's history with one entry per
training process (``lsq.training.sessions``), older ones may have a free-text ``history``.
``ModelSpec.weights_config()`` gives the keys that come from the spec. Large float tensors
are stored as fp16 where fp16 holds them, the rest (biases, entropy-coder tables, integer
buffers) exactly. Training writes these files and the registry
reads them; nothing here unpickles, so loading never runs code from a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import SafetensorError, safe_open

if TYPE_CHECKING:  # torch loads only with tensors: reading a config stays fast
    import torch

REQUIRED_KEYS = ("name", "family", "qualities", "default_quality", "N", "M")


class WeightsFileError(ValueError):
    """A file that is not a readable weights file with a valid config."""


def _fp16_safe(t: torch.Tensor) -> bool:
    """Big float tensors whose values fp16 holds; small ones stay fp32."""
    if not t.is_floating_point() or t.numel() < 1024:
        return False
    return bool(t.abs().max() < 6e4)


def save(state: dict[str, torch.Tensor], path: str | os.PathLike, config: dict,
         half: bool = True) -> Path:
    """Write a state dict and its config atomically (temporary file, then rename); a
    config's spec must be valid and agree with its family, N, M and qualities (SpecError)."""
    from safetensors.torch import save as to_bytes

    from lsq.fileio import write_atomic

    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise ValueError(f"weights config lacks {missing}")
    if "spec" in config:
        from lsq.models.spec import ModelSpec

        ModelSpec.from_weights_config(config)
    tensors = {}
    for k, v in state.items():
        v = v.detach().cpu()
        tensors[k] = (v.half() if half and _fp16_safe(v) else v).contiguous().clone()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, to_bytes(tensors, metadata={"config": json.dumps(config)}))
    return out


def read_config(path: str | os.PathLike) -> dict:
    """The embedded config, checked for REQUIRED_KEYS."""
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise WeightsFileError(f"cannot read weights {path}: {e}") from None
    try:
        config = json.loads(meta["config"])
    except (KeyError, json.JSONDecodeError):
        raise WeightsFileError(f"{path}: metadata has no valid JSON 'config'") from None
    if not isinstance(config, dict) or any(k not in config for k in REQUIRED_KEYS):
        raise WeightsFileError(f"{path}: config lacks one of {', '.join(REQUIRED_KEYS)}")
    return config


def load_stored(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors as stored (fp16 where the file holds fp16): loading them into a model's
    float32 parameters converts them as it copies, with no float32 copy in between."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise WeightsFileError(f"cannot read weights {path}: {e}") from None


def load_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors, floats cast to float32."""
    return {k: t.float() if t.is_floating_point() else t for k, t in load_stored(path).items()}
