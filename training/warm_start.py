"""Starting a run from exported weights instead of a checkpoint (a fresh optimizer): the
run's own weights, which it continues (``--continue-from``, the fallback when a run's
checkpoint is lost), the same model's from step 0 (``--init``), or another model's
transforms (``--init-transforms``)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lsq.models.spec import ModelSpec, SpecError

from .config import ConfigError


def _state(init: str | dict[str, torch.Tensor], flag: str) -> dict[str, torch.Tensor]:
    """The state dict of exported weights (a file, or a state dict already)."""
    from lsq.models.weights_file import WeightsFileError, load_state

    try:
        return load_state(init) if isinstance(init, str) else init
    except WeightsFileError as e:
        raise ConfigError(f"{flag}: {e}") from None


def warm_start(model: nn.Module, init: str | dict[str, torch.Tensor]) -> list[str]:
    """Load exported weights (a file or a state dict). A context model may start from its
    hyperprior version, whose weights lack only the latent codec's group transforms: those
    start fresh. Returns the modules that did, as parameter prefixes."""
    state = _state(init, "--init")
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # same names, other shapes
        raise ConfigError(f"--init does not fit this model: {str(e)[:300]}") from None
    if unexpected or any(not k.startswith("latent_codec.") for k in missing):
        raise ConfigError(f"--init does not fit this model: missing {missing[:4]}, "
                          f"unexpected {unexpected[:4]}")
    return sorted({".".join(k.split(".")[:3]) for k in missing})


def continue_weights(model: nn.Module, path: str) -> bool:
    """Load the run's own exported weights: every tensor, nothing more (the same spec).
    Returns whether the file held some as fp16 (the boundary then costs their rounding)."""
    from lsq.models.weights_file import WeightsFileError, load_stored

    try:
        stored = load_stored(path)
    except WeightsFileError as e:
        raise ConfigError(f"--continue-from: {e}") from None
    try:
        model.load_state_dict(stored)
    except RuntimeError as e:
        raise ConfigError(f"--continue-from {path} does not fit this model: {str(e)[:300]}"
                          ) from None
    return any(t.dtype == torch.float16 for t in stored.values())


def transplant(model: nn.Module, init: str | dict[str, torch.Tensor]) -> list[str]:
    """Start a model from another one's transforms, whatever its quantizer or M: every tensor
    with the same name and shape is copied, except the latent codec's (it is the quantizer).
    The rest keeps its fresh initialisation; returns those tensors' names. Refused unless
    the synthesis transform fits all but its input layer (not for another N)."""
    theirs = _state(init, "--init-transforms")
    own = model.state_dict()
    taken = {k: v for k, v in theirs.items()
             if not k.startswith("latent_codec.") and k in own and own[k].shape == v.shape}
    if any(k.startswith("g_s.") and not k.startswith("g_s.0.") and k not in taken
           for k in own):
        raise ConfigError("--init-transforms: its synthesis transform does not fit this "
                          "model's (another N?)")
    model.load_state_dict(taken, strict=False)
    return sorted(k for k in own if k not in taken)


def _extends(spec: ModelSpec, base: ModelSpec) -> int | None:
    """How many codec options ``spec`` adds to ``base`` if ``warm_start`` takes ``base``'s
    weights into ``spec``'s model (same codec, channels, qualities; base has no more
    options and the same or no context model), else None."""
    same = (spec.latent_codec, spec.N, spec.M, spec.qualities, spec.proxy) == (
        base.latent_codec, base.N, base.M, base.qualities, base.proxy)
    options = spec.codec_options.items() >= base.codec_options.items()
    if not (same and options and base.context in ("none", spec.context)):
        return None
    return len(spec.codec_options) - len(base.codec_options) + (base.context != spec.context)


def shipped_init(spec: ModelSpec, name: str | None, folder: Path) -> Path | None:
    """``--init auto``: the weights in ``folder`` called ``name`` if they fit ``spec``, else
    the fitting ones closest to it (fewest new parts: without LRP before without the
    context model); None if none fits."""
    from lsq.models.weights_file import WeightsFileError, read_config

    found = []
    for path in sorted(folder.glob("*.safetensors")):
        try:
            added = _extends(spec, ModelSpec.from_weights_config(read_config(path)))
        except (WeightsFileError, SpecError, KeyError):
            continue
        if added is not None:
            found.append((path.stem != name, added, path))
    return min(found)[2] if found else None
