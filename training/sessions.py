"""A run's history, one entry per training process: how it started (from scratch, from
exported weights, or exactly from a checkpoint), the steps and crops it trained and its GPU
time. It goes into every checkpoint and into the export's ``sessions``, so weights trained
over many GPU sessions say where each boundary was and whether it cost a fresh optimizer.

An entry is ``{"start", "from"?, "fp16"?, "codec_from"?, "steps": [first, last], "images",
"gpu_time", "batch", "world", "command"}``; ``start`` is scratch, init, init-transforms,
continue (exported weights of the same run, fresh optimizer; ``fp16``: whether the file held
fp16 tensors; ``codec_from``: the latent codec they were trained with, where this process
trains another of the same parameters), resume (its checkpoint: exact on the same world size
with float32 moments) or unrecorded (training before histories were kept: a file's or
checkpoint's steps so far, and its free-text ``history`` if it has one).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping


@dataclasses.dataclass
class Start:
    """Where a process takes a run up: how, from what, and the run's accounting so far."""

    how: str = "scratch"
    source: str | None = None
    step: int = 0
    images_seen: int = 0
    gpu_time: float = 0.0
    #: the step the optimizer started fresh at, where the warm-up counts from
    warmup_from: int = 0
    lr_scale: float = 1.0
    history: list[dict] = dataclasses.field(default_factory=list)
    #: a continue: whether the weights it starts from were stored as fp16
    fp16: bool | None = None
    #: a continue with another latent codec: the one the weights were trained with
    codec_from: str | None = None

    def sessions(self, step: int, images_seen: int, gpu_time: float, batch: int, world: int,
                 command: str) -> list[dict]:
        """The history with this process's entry, at ``step``."""
        entry = {"start": self.how, **({"from": self.source} if self.source else {}),
                 **({} if self.fp16 is None else {"fp16": self.fp16}),
                 **({"codec_from": self.codec_from} if self.codec_from else {}),
                 "steps": [self.step, step], "images": images_seen - self.images_seen,
                 "gpu_time": round(gpu_time - self.gpu_time, 1), "batch": batch,
                 "world": world, "command": command}
        return [*self.history, entry]


def _unrecorded(steps: int, images: int, gpu_time: float, note: str | None) -> list[dict]:
    if not steps:
        return []
    return [{"start": "unrecorded", "steps": [0, steps], "images": images,
             "gpu_time": round(gpu_time, 1), **({"history": note} if note else {})}]


def from_checkpoint(state: Mapping, folder: str) -> Start:
    """An exact resume of ``state``; checkpoints without the newer keys count their crops
    from the step and the batch."""
    step, cfg = state["step"], state["config"]
    images = state.get("images_seen", step * cfg["batch"] * state["world_size"])
    history = state.get("sessions")
    if history is None:
        history = _unrecorded(step, images, state["elapsed_s"], None)
    return Start("resume", folder, step, images, state["elapsed_s"],
                 state.get("warmup_from", 0), state["lr_scale"], list(history))


def from_weights(config: Mapping, path: str, fp16: bool) -> Start:
    """A continue from exported weights (config: ``read_config``): their steps, crops, GPU
    time, the learning-rate scale its rollbacks left and the history go on; the optimizer
    starts fresh here."""
    step = config["steps"]
    images, gpu_time = config.get("images_seen", 0), config.get("gpu_time", 0.0)
    history = config.get("sessions")
    if history is None:
        history = _unrecorded(step, images, gpu_time, config.get("history"))
    return Start("continue", path, step, images, gpu_time, step, config.get("lr_scale", 1.0),
                 list(history), fp16)
