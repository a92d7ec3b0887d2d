"""Training loop for the lsq hyperprior models (DESIGN.md, section 8).

Built for a GPU machine that has PyTorch but no network and may be taken away after half an
hour: the decoded training set lives on the GPU as uint8 and is cropped there, checkpoints
(each file at most 16 MiB) are written every few minutes and picked up again automatically,
and several GPUs go through torchrun (DDP). This module imports only torch, numpy, Pillow
(through ``shards``) and, lazily, the model builder and safetensors, so that
``python -m lsq.models.train`` runs there with nothing but ``PYTHONPATH`` set.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
import os
import random
import shlex
import sys
import time
import types
import typing
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from lsq.fileio import write_atomic

from .quality import lmbda
from .shards import DEFAULT_VAL_EVERY, load_folder_images, load_images

ModelBuilder = Callable[[dict], nn.Module]

CKPT_PART_BYTES = 16_000_000  # < 16 MiB, the most one file may hold on its way back
CKPT_MANIFEST = "checkpoint.json"
EXPORT_NAME = "final.safetensors"
MAX_ROLLBACKS = 3  # a run that diverges again after this many halvings of lr stops
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
EXPORT_META_KEYS = (
    "name", "family", "qualities", "default_quality", "codec_options", "N", "M", "steps",
    "images_seen", "batch", "crop", "data", "gpu_time", "command",
)


@dataclasses.dataclass
class TrainConfig:
    """Everything a run depends on; saved in every checkpoint."""

    quantizer: str = dataclasses.field(
        default="scalar",
        metadata={"help": "scalar | bsq | leech | spherical-leech | leech-hybrid"})
    quality_min: int = dataclasses.field(
        default=1, metadata={"help": "lowest integer quality (lambda 0.0018 ... 0.18 for 1..8)"})
    quality_max: int = dataclasses.field(
        default=8, metadata={"help": "highest quality; = quality_min for a fixed-rate model"})
    origin: bool = dataclasses.field(
        default=False, metadata={"help": "leech: lattice anchored at the origin, not the mean"})
    proxy: str = dataclasses.field(
        default="mixed", metadata={"help": "training proxy: ste | noise | mixed"})
    context: str = dataclasses.field(
        default="none", metadata={"help": "context model: none | channel-groups"})
    lrp: bool = dataclasses.field(
        default=False, metadata={"help": "latent residual prediction (channel-groups only)"})
    group_transform: str = dataclasses.field(
        default="separable",
        metadata={"help": "channel-groups transforms: separable | full (3x3 convolutions)"})
    steps: int = dataclasses.field(default=100_000, metadata={"help": "total optimizer steps"})
    out: str = dataclasses.field(
        default="runs/train", metadata={"help": "run folder: log, checkpoint, final weights"})
    data: str | None = dataclasses.field(
        default=None, metadata={"help": "shard folder (from pack-shards)"})
    images: list[str] = dataclasses.field(
        default_factory=list, metadata={"help": "image folders, instead of --data"})
    N: int = dataclasses.field(default=128, metadata={"help": "hyperprior channels"})
    M: int = dataclasses.field(default=192, metadata={"help": "latent channels"})
    batch: int = dataclasses.field(default=16, metadata={"help": "crops per step and GPU"})
    crop: int = dataclasses.field(default=256, metadata={"help": "crop side in pixels"})
    min_scale: float = dataclasses.field(
        default=0.5, metadata={"help": "smallest random downscale before cropping"})
    lr: float = dataclasses.field(default=1e-4, metadata={"help": "main Adam learning rate"})
    aux_lr: float = dataclasses.field(
        default=1e-3, metadata={"help": "Adam learning rate of the '.quantiles' parameters"})
    lr_drop_at: float = dataclasses.field(
        default=0.9, metadata={"help": "fraction of steps after which lr is divided by 10"})
    lr_drop_minutes: float | None = dataclasses.field(
        default=None, metadata={"help": "also divide lr by 10 after this many minutes of this "
                                        "process (time-bounded GPU sessions)"})
    warmup_steps: int = dataclasses.field(
        default=0, metadata={"help": "raise lr linearly over this many steps of this process "
                                     "(a fresh optimizer on --init weights)"})
    clip: float = dataclasses.field(default=1.0, metadata={"help": "gradient-norm clip, 0: off"})
    seed: int = dataclasses.field(default=0, metadata={"help": "random seed"})
    log_every: int = dataclasses.field(default=100, metadata={"help": "steps per log line"})
    val_every: int = dataclasses.field(
        default=5000, metadata={"help": "steps between validations, 0: only at the end"})
    ckpt_minutes: float = dataclasses.field(
        default=5.0, metadata={"help": "minutes between checkpoints"})
    max_minutes: float | None = dataclasses.field(
        default=None, metadata={"help": "stop with a checkpoint after this many minutes"})
    stop_step: int | None = dataclasses.field(
        default=None, metadata={"help": "stop with a checkpoint at this step (chunked runs)"})
    init: str | None = dataclasses.field(
        default=None, metadata={"help": "start from these exported weights (fresh optimizer) "
                                        "when OUT has no checkpoint"})
    init_transforms: str | None = dataclasses.field(
        default=None, metadata={"help": "start the transforms from another model's exported "
                                        "weights, any quantizer (what differs in shape, and "
                                        "the latent codec, start fresh) when OUT has no "
                                        "checkpoint"})
    resume: bool = dataclasses.field(
        default=True, metadata={"help": "continue from OUT's checkpoint if there is one"})
    ckpt_moments: str = dataclasses.field(
        default="bfloat16",
        metadata={"help": "dtype of Adam moments in checkpoints (float32: exact resume)"})
    bf16: bool = dataclasses.field(default=False, metadata={"help": "bf16 autocast"})
    compile: str = dataclasses.field(
        default="", metadata={"help": "torch.compile backend for the latent codec's training "
                                      "rate (inductor fuses the exact priors); empty: eager"})
    compile_transforms: str = dataclasses.field(
        default="", metadata={"help": "torch.compile mode (inductor) for g_a, g_s, h_a and h_s: "
                                      "default, reduce-overhead (CUDA graphs), max-autotune; "
                                      "empty: eager"})
    channels_last: bool = dataclasses.field(
        default=False, metadata={"help": "channels_last memory format"})
    device: str = dataclasses.field(default="auto", metadata={"help": "auto | cuda | cpu"})
    name: str | None = dataclasses.field(
        default=None, metadata={"help": "model name in the export (default: OUT's name)"})
    default_quality: float | None = dataclasses.field(
        default=None, metadata={"help": "quality `lsq encode` uses by default (export)"})


class ConfigError(ValueError):
    """A training configuration that cannot run: the user's input, reported in one line."""


class TrainingDiverged(RuntimeError):
    """The loss stayed non-finite after MAX_ROLLBACKS rollbacks; the last checkpoint is the last
    finite state."""


def check_config(cfg: TrainConfig, data_given: bool = False) -> None:
    """Refuse a configuration before any data is loaded or any GPU time is spent
    (``data_given``: the caller hands the images over itself)."""
    from lsq.codec.bitstream import QUALITY_STEPS
    from lsq.codec.quantizers import BLOCK, PROXIES

    from .latent_codecs import CONTEXTS, LATENT_CODECS
    from .latent_codecs.channel_groups import GROUP_TRANSFORMS
    from .quality import MAX_QUALITY, MIN_QUALITY, snap_quality

    problems = []
    if cfg.quantizer not in LATENT_CODECS:
        names = ", ".join(LATENT_CODECS)
        problems.append(f"unknown --quantizer {cfg.quantizer!r} (one of {names})")
    elif not LATENT_CODECS[cfg.quantizer].variable_rate and cfg.quality_min != cfg.quality_max:
        problems.append(f"{cfg.quantizer} is fixed-rate: give --quality-min = --quality-max")
    if not MIN_QUALITY <= cfg.quality_min <= cfg.quality_max <= MAX_QUALITY:
        problems.append(f"qualities must satisfy {MIN_QUALITY} <= --quality-min <= --quality-max "
                        f"<= {MAX_QUALITY}")
    if cfg.default_quality is not None and not (
            cfg.quality_min <= cfg.default_quality <= cfg.quality_max):
        problems.append("--default-quality must lie between --quality-min and --quality-max")
    if cfg.default_quality is not None and snap_quality(cfg.default_quality) != cfg.default_quality:
        problems.append(f"--default-quality must be a multiple of 1/{QUALITY_STEPS} (the "
                        f"stream's quality step), e.g. {snap_quality(cfg.default_quality)}")
    if cfg.origin and cfg.quantizer != "leech":
        problems.append("--origin applies to the leech quantizer only")
    if cfg.context not in CONTEXTS:
        problems.append(f"unknown --context {cfg.context!r} (one of {', '.join(CONTEXTS)})")
    if cfg.lrp and cfg.context != "channel-groups":
        problems.append("--lrp needs --context channel-groups")
    if cfg.group_transform not in GROUP_TRANSFORMS:
        problems.append(f"unknown --group-transform {cfg.group_transform!r} (one of "
                        f"{', '.join(GROUP_TRANSFORMS)})")
    elif cfg.group_transform != "separable" and cfg.context != "channel-groups":
        problems.append("--group-transform needs --context channel-groups")
    if cfg.proxy not in PROXIES:
        problems.append(f"unknown --proxy {cfg.proxy!r} (one of {', '.join(PROXIES)})")
    if cfg.M % BLOCK or cfg.M <= 0 or cfg.N <= 0:
        problems.append(f"--M must be a positive multiple of {BLOCK} and --N positive")
    if cfg.crop % 64 or cfg.crop <= 0 or cfg.batch <= 0 or cfg.steps <= 0:
        problems.append("--crop must be a positive multiple of 64; --batch and --steps positive")
    if cfg.warmup_steps < 0:
        problems.append("--warmup-steps must be >= 0")
    if cfg.compile and cfg.compile not in torch.compiler.list_backends(exclude_tags=()):
        problems.append(f"unknown --compile backend {cfg.compile!r}; e.g. inductor")
    if cfg.compile_transforms and cfg.compile_transforms not in COMPILE_MODES:
        problems.append(f"unknown --compile-transforms mode {cfg.compile_transforms!r} (one of "
                        f"{', '.join(COMPILE_MODES)})")
    if not (cfg.data or cfg.images or data_given):
        problems.append("give --data (a shard folder) or --images (image folders)")
    if cfg.init and cfg.init_transforms:
        problems.append("give --init or --init-transforms, not both")
    for flag, path in (("--init", cfg.init), ("--init-transforms", cfg.init_transforms)):
        if path and not Path(path).is_file():
            problems.append(f"{flag} {path}: no such file")
        elif path:
            from .weights_file import WeightsFileError, read_config

            try:
                family = read_config(path)["family"]
            except WeightsFileError as e:
                problems.append(f"{flag}: {e}")
            else:
                if flag == "--init" and family != cfg.quantizer:
                    problems.append(f"--init {path} holds a {family} model, this run trains "
                                    f"{cfg.quantizer} (--init-transforms takes another "
                                    "quantizer's transforms)")
    if problems:
        raise ConfigError("; ".join(problems))


# ----------------------------------------------------------------------------- data


class CropSampler:
    """Random crops of GPU-resident uint8 images, so that training is never data-bound.

    Per sample: a random image, a random downscale in [min_scale, 1] (limited so that the
    scaled image still holds a crop), an antialiased resize of just the region that becomes
    the crop, a random position and a random horizontal flip. The random draws come from a
    numpy generator whose state goes into checkpoints.
    """

    def __init__(
        self, images: Sequence[np.ndarray], crop: int, device: torch.device,
        min_scale: float, seed: Sequence[int],
    ) -> None:
        kept = [im for im in images if min(im.shape[:2]) >= crop]
        if not kept:
            raise ValueError(f"no training image has both sides >= {crop}")
        self.skipped = len(images) - len(kept)
        self.images = [
            torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1))).to(device) for im in kept
        ]
        self.sizes = np.array([im.shape[:2] for im in kept], dtype=np.int64)
        self.crop = crop
        self.min_scale = min_scale
        self.device = device
        self.rng = np.random.default_rng(np.random.SeedSequence(list(seed)))

    def sample(self, batch: int) -> torch.Tensor:
        """A (batch, 3, crop, crop) float tensor in [0, 1]."""
        c = self.crop
        idx = self.rng.integers(len(self.images), size=batch)
        u = self.rng.random((batch, 4))
        h, w = self.sizes[idx, 0], self.sizes[idx, 1]
        lowest = np.maximum(self.min_scale, c / np.minimum(h, w))
        scale = lowest + (1.0 - lowest) * u[:, 0]
        region = np.minimum(np.rint(c / scale).astype(np.int64), np.minimum(h, w))
        top = (u[:, 1] * (h - region + 1)).astype(np.int64)
        left = (u[:, 2] * (w - region + 1)).astype(np.int64)
        flip = u[:, 3] < 0.5
        out = torch.empty((batch, 3, c, c), device=self.device)
        for k in range(batch):
            r, t, l_ = int(region[k]), int(top[k]), int(left[k])
            patch = self.images[idx[k]][:, t : t + r, l_ : l_ + r]
            if flip[k]:
                patch = patch.flip(-1)
            if r == c:
                out[k].copy_(patch)
            else:
                out[k] = F.interpolate(
                    patch[None].float(), size=(c, c), mode="bilinear", antialias=True,
                    align_corners=False,
                )[0]
        return out.div_(255.0).clamp_(0.0, 1.0)

    def get_state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state


def center_crops(images: Sequence[np.ndarray], crop: int, device: torch.device) -> torch.Tensor:
    """(n, 3, crop, crop) uint8 centre crops of the images large enough for one."""
    crops = []
    for im in images:
        h, w = im.shape[:2]
        if min(h, w) >= crop:
            t, l_ = (h - crop) // 2, (w - crop) // 2
            crops.append(torch.from_numpy(np.ascontiguousarray(
                im[t : t + crop, l_ : l_ + crop].transpose(2, 0, 1))))
    if not crops:
        return torch.empty((0, 3, crop, crop), dtype=torch.uint8, device=device)
    return torch.stack(crops).to(device)


def load_data(cfg: TrainConfig) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    """(train images, held-out images, description) from shards or image folders."""
    if cfg.data:
        train, val = load_images(cfg.data, "train"), load_images(cfg.data, "val")
        source = f"shards {cfg.data}"
    elif cfg.images:
        train = load_folder_images(cfg.images, "train")
        val = load_folder_images(cfg.images, "val")
        source = "folders " + ", ".join(cfg.images)
    else:
        raise ValueError("give --data (shard folder) or --images (image folders)")
    desc = f"{source}: {len(train)} train, {len(val)} held out (every {DEFAULT_VAL_EVERY}th)"
    return train, val, desc


# ----------------------------------------------------------------------------- model


def codec_options(cfg: dict) -> dict:
    """Latent-codec options a run's config asks for (stored in the export's metadata)."""
    options: dict = {"mean_shift": False} if cfg.get("origin") else {}
    if cfg.get("context", "none") != "none":  # older checkpoints have no context
        options["context"] = cfg["context"]
    if cfg.get("lrp"):
        options["lrp"] = True
    if cfg.get("group_transform", "separable") != "separable":
        options["group_transform"] = cfg["group_transform"]
    return options


def default_builder(cfg: dict) -> nn.Module:
    """The project's model for a run config; imported lazily so that tests can inject one."""
    from .hyperprior import build_model

    return build_model(cfg["quantizer"], cfg["N"], cfg["M"], proxy=cfg.get("proxy", "mixed"),
                       qualities=(cfg["quality_min"], cfg["quality_max"]), **codec_options(cfg))


def compile_transforms(model: nn.Module, mode: str) -> None:
    """torch.compile (inductor, ``mode``) the convolutional transforms in place, so their
    state_dict keys stay those of the eager model: fuses GDN's elementwise work and, with
    reduce-overhead, replays CUDA graphs for the launch-bound batch 16 (issue 11)."""
    for transform in (model.g_a, model.g_s, model.h_a, model.h_s):
        transform.compile(mode=mode)


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(main, aux) parameters, CompressAI's rule: names ending in '.quantiles' are aux."""
    main, aux = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (aux if name.endswith(".quantiles") else main).append(p)
    return main, aux


def rd_terms(out: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image (bpp, mse) of a forward pass, shapes (B,); bits = -sum(log2 likelihoods)."""
    bits = sum(torch.log2(lik.float()).flatten(1).sum(1) for lik in out["likelihoods"].values())
    bpp = -bits / (x.shape[2] * x.shape[3])
    mse = (out["x_hat"].float() - x).pow(2).flatten(1).mean(1)
    return bpp, mse


@torch.no_grad()
def evaluate(model: nn.Module, crops: torch.Tensor, batch: int, channels_last: bool) -> dict:
    """Mean bpp (likelihood estimate), PSNR and RD cost on the held-out centre crops, at
    each integer quality of the model: keys val_bpp_q3, val_psnr_q3, val_cost_q3, ..."""
    was_training = model.training
    model.eval()
    record: dict = {"val_images": len(crops)}
    for q in range(model.gains.low, model.gains.high + 1):
        bpps, mses = [], []
        for i in range(0, len(crops), batch):
            x = crops[i : i + batch].float().div_(255.0)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out = model(x, float(q))
            bpp, _ = rd_terms(out, x)
            bpps.append(bpp)
            mses.append((out["x_hat"].float().clamp(0, 1) - x).pow(2).flatten(1).mean(1))
        bpp, mse = torch.cat(bpps), torch.cat(mses)
        record[f"val_bpp_q{q}"] = float(bpp.mean())
        record[f"val_psnr_q{q}"] = float((-10.0 * torch.log10(mse)).mean())
        record[f"val_cost_q{q}"] = float((float(lmbda(q)) * 255.0**2 * mse + bpp).mean())
    model.train(was_training)
    return record


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(out_dir: str | os.PathLike, state: dict) -> list[Path]:
    """Write ``state`` as parts of at most 16 MB and then the manifest that commits them.

    Parts get fresh names, so a crash at any point leaves the previous checkpoint whole;
    parts of older checkpoints are removed once the new manifest is in place.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getbuffer()
    tag = f"ckpt-{state['step']:08d}-{uuid.uuid4().hex[:6]}"
    parts = []
    for i, start in enumerate(range(0, len(data), CKPT_PART_BYTES)):
        chunk = data[start : start + CKPT_PART_BYTES]
        name = f"{tag}-{i}.bin"
        write_atomic(out / name, chunk)
        digest = hashlib.sha256(chunk).hexdigest()
        parts.append({"file": name, "bytes": len(chunk), "sha256": digest})
    manifest = {"step": state["step"], "total_bytes": len(data), "parts": parts}
    write_atomic(out / CKPT_MANIFEST, json.dumps(manifest, indent=1).encode())
    live = {p["file"] for p in parts}
    for old in out.glob("ckpt-*.bin"):
        if old.name not in live:
            old.unlink()
    return [out / p["file"] for p in parts]


def checkpoint_exists(out_dir: str | os.PathLike) -> bool:
    return (Path(out_dir) / CKPT_MANIFEST).is_file()


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint from its run folder or manifest, checking every part's hash."""
    manifest_path = Path(path)
    if manifest_path.is_dir():
        manifest_path = manifest_path / CKPT_MANIFEST
    manifest = json.loads(manifest_path.read_text())
    chunks = []
    for part in manifest["parts"]:
        chunk = (manifest_path.parent / part["file"]).read_bytes()
        if len(chunk) != part["bytes"] or hashlib.sha256(chunk).hexdigest() != part["sha256"]:
            raise ValueError(f"checkpoint part {part['file']} is damaged")
        chunks.append(chunk)
    return torch.load(io.BytesIO(b"".join(chunks)), map_location="cpu", weights_only=True)


def _compact_optimizer_state(state: dict, dtype: torch.dtype) -> dict:
    """Adam's moments in ``dtype``; Optimizer.load_state_dict casts them back to fp32."""
    return {
        "state": {
            k: {n: (v.to(dtype) if n in ("exp_avg", "exp_avg_sq") else v) for n, v in s.items()}
            for k, s in state["state"].items()
        },
        "param_groups": state["param_groups"],
    }


def _numpy_state() -> tuple:
    """numpy's global state without arrays, which ``torch.load(weights_only=True)`` refuses."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return name, keys.tolist(), int(pos), int(has_gauss), float(cached)


def _rng_state(sampler: CropSampler, device: torch.device) -> dict:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": _numpy_state(),
        "python": random.getstate(),
        "sampler": sampler.get_state(),
    }


def _set_rng_state(rng: dict, sampler: CropSampler, device: torch.device) -> None:
    torch.set_rng_state(rng["torch"])
    if device.type == "cuda" and rng["cuda"] is not None:
        torch.cuda.set_rng_state(rng["cuda"], device)
    name, keys, *rest = rng["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    random.setstate(rng["python"])
    sampler.set_state(rng["sampler"])


def _seed_everything(seed: int, rank: int, step: int) -> None:
    """Seed torch/numpy/python per rank (and per resume step when states cannot be restored)."""
    ss = np.random.SeedSequence([seed, rank, step])
    torch.manual_seed(int(ss.generate_state(1, np.uint64)[0]) & (2**63 - 1))
    np.random.seed(ss.generate_state(1)[0])
    random.seed(int(ss.generate_state(1)[0]))


# ----------------------------------------------------------------------------- export


def export_weights(
    ckpt: str | os.PathLike | dict,
    out_path: str | os.PathLike,
    meta: dict,
    build_model: ModelBuilder | None = None,
    half: bool = True,
) -> Path:
    """Save the checkpoint's model, after ``update(force=True)``, as safetensors.

    Integer buffers (``_quantized_cdf``, ``_offset``, ``_cdf_length``) are stored exactly;
    with ``half`` the large float tensors are stored as fp16 (about halving the file) and
    everything else as fp32 (``lsq.models.weights_file``). ``meta`` overrides the defaults
    taken from the checkpoint.
    """
    from .weights_file import save

    state = ckpt if isinstance(ckpt, dict) else load_checkpoint(ckpt)
    cfg = state["config"]
    model = (build_model or default_builder)(cfg)
    model.load_state_dict(state["model"])
    model.update(force=True)
    qualities = [cfg["quality_min"], cfg["quality_max"]]
    full = {
        "name": cfg.get("name") or Path(cfg["out"]).name,
        "family": cfg["quantizer"], "qualities": qualities,
        "default_quality": cfg.get("default_quality") or qualities[0],
        "codec_options": codec_options(cfg), "N": cfg["N"], "M": cfg["M"],
        "steps": state["step"], "images_seen": state["step"] * cfg["batch"] *
        state.get("world_size", 1), "batch": cfg["batch"], "crop": cfg["crop"],
        "data": state.get("data"), "gpu_time": round(state.get("elapsed_s", 0.0), 1),
        "command": state.get("command"),
    }
    full.update(meta)
    missing = [k for k in EXPORT_META_KEYS if k not in full]
    if missing:
        raise ValueError(f"export metadata lacks {missing}")
    return save(model.state_dict(), out_path, full, half=half)


# ----------------------------------------------------------------------------- training


def train_step(
    net: nn.Module, model: nn.Module, x: torch.Tensor, opt: torch.optim.Optimizer,
    aux_opt: torch.optim.Optimizer, cfg: TrainConfig,
    autocast: contextlib.AbstractContextManager, distributed: bool = False,
) -> torch.Tensor:
    """One step of both optimizers; returns [loss, bpp, mse, psnr, aux] (no host sync).

    ``net`` is ``model`` or its DDP wrapper; the aux loss goes through ``model`` and its
    gradients are averaged by hand, since DDP ignores the '.quantiles' parameters.
    """
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    q = model.gains.sample(x.shape[0], x.device)
    with autocast:
        out = net(x, q)
    bpp, mse = rd_terms(out, x)
    loss = (lmbda(q).to(x.device, torch.float32) * 255.0**2 * mse + bpp).mean()
    bpp, mse = bpp.mean(), mse.mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.clip > 0:
        nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], cfg.clip)
    opt.step()
    aux_loss = model.aux_loss()
    aux_opt.zero_grad(set_to_none=True)
    aux_loss.backward()
    if distributed:
        for g in aux_opt.param_groups:
            for p in g["params"]:
                dist.all_reduce(p.grad, op=dist.ReduceOp.AVG)
    aux_opt.step()
    mse = mse.detach()
    return torch.stack([loss.detach(), bpp.detach(), mse, -10.0 * torch.log10(mse),
                        aux_loss.detach()])


def _setup_distributed(device_arg: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = device_arg == "cuda" or (device_arg == "auto" and torch.cuda.is_available())
    if world > 1:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if want_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if want_cuda else "gloo")
        device = torch.device("cuda", local) if want_cuda else torch.device("cpu")
        return dist.get_rank(), world, device
    return 0, 1, torch.device("cuda" if want_cuda else "cpu")


def _progress(total: int, initial: int, enabled: bool):
    """A tqdm bar on a terminal, else None (tqdm may be missing on the GPU machine)."""
    if not (enabled and sys.stderr.isatty()):
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, dynamic_ncols=True)


def _init_state(init: str | dict[str, torch.Tensor], flag: str) -> dict[str, torch.Tensor]:
    """The state dict of exported weights (a file, or a state dict already)."""
    from .weights_file import WeightsFileError, load_state

    try:
        return load_state(init) if isinstance(init, str) else init
    except WeightsFileError as e:
        raise ConfigError(f"{flag}: {e}") from None


def warm_start(model: nn.Module, init: str | dict[str, torch.Tensor]) -> list[str]:
    """Load exported weights (a file or a state dict). A context model may start from its
    hyperprior version, whose weights lack only the latent codec's group transforms: those
    start fresh. Returns the modules that did, as parameter prefixes."""
    state = _init_state(init, "--init")
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # same names, other shapes
        raise ConfigError(f"--init does not fit this model: {str(e)[:300]}") from None
    if unexpected or any(not k.startswith("latent_codec.") for k in missing):
        raise ConfigError(f"--init does not fit this model: missing {missing[:4]}, "
                          f"unexpected {unexpected[:4]}")
    return sorted({".".join(k.split(".")[:3]) for k in missing})


def transplant(model: nn.Module, init: str | dict[str, torch.Tensor]) -> list[str]:
    """Start a model from another one's transforms, whatever its quantizer or M: every tensor
    with the same name and shape is copied, except the latent codec's (it is the quantizer).
    The rest (the latent codec, layers whose shape depends on M or on the codec's hyper
    channels) keeps its fresh initialisation; returns those tensors' names. Refused unless
    the synthesis transform fits all but its input layer (not for another N)."""
    theirs = _init_state(init, "--init-transforms")
    own = model.state_dict()
    taken = {k: v for k, v in theirs.items()
             if not k.startswith("latent_codec.") and k in own and own[k].shape == v.shape}
    if any(k.startswith("g_s.") and not k.startswith("g_s.0.") and k not in taken
           for k in own):
        raise ConfigError("--init-transforms: its synthesis transform does not fit this "
                          "model's (another N?)")
    model.load_state_dict(taken, strict=False)
    return sorted(k for k in own if k not in taken)


def train(
    cfg: TrainConfig,
    build_model: ModelBuilder | None = None,
    data: tuple[Sequence[np.ndarray], Sequence[np.ndarray], str] | None = None,
) -> dict:
    """Train (or resume) the run in ``cfg.out``; returns the last log and validation records.

    ``data`` = (train images, held-out images, description) replaces loading from
    ``cfg.data``/``cfg.images``. Exports ``final.safetensors`` once all steps are done.
    """
    t_start = time.monotonic()
    check_config(cfg, data_given=data is not None)
    rank, world, device = _setup_distributed(cfg.device)
    is_main = rank == 0
    out_dir = Path(cfg.out)
    train_imgs, val_imgs, data_desc = data if data is not None else load_data(cfg)

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = (build_model or default_builder)(dataclasses.asdict(cfg)).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.compile:
        model.latent_codec.compile_rate(cfg.compile)
    if cfg.compile_transforms:
        compile_transforms(model, cfg.compile_transforms)
    main_params, aux_params = split_parameters(model)
    opt = torch.optim.Adam(main_params, lr=cfg.lr)
    aux_opt = torch.optim.Adam(aux_params, lr=cfg.aux_lr)
    sampler = CropSampler(train_imgs, cfg.crop, device, cfg.min_scale, (cfg.seed, rank))
    val_crops = center_crops(val_imgs, cfg.crop, device) if is_main else None

    step, elapsed_before, lr_scale, rollbacks = 0, 0.0, 1.0, 0
    _seed_everything(cfg.seed, rank, 0)
    resuming = cfg.resume and checkpoint_exists(out_dir)
    if cfg.init and not resuming:
        fresh = warm_start(model, cfg.init)
        if is_main and fresh:
            print(f"[train] --init {cfg.init}: {', '.join(fresh)} start fresh", flush=True)
    if cfg.init_transforms and not resuming:
        fresh = transplant(model, cfg.init_transforms)
        if is_main:
            print(f"[train] --init-transforms {cfg.init_transforms}: {len(fresh)} tensors "
                  f"start fresh: {', '.join(fresh[:12])}", flush=True)
    if resuming:
        state = load_checkpoint(out_dir)
        for key in ("quantizer", "N", "M", "quality_min", "quality_max", "origin", "context",
                    "lrp", "group_transform"):
            theirs = state["config"].get(key, getattr(TrainConfig, key))
            if theirs != getattr(cfg, key):
                raise ValueError(f"checkpoint in {out_dir} has {key}={theirs!r}, "
                                 f"this run {getattr(cfg, key)!r}")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        aux_opt.load_state_dict(state["aux_optimizer"])
        step, elapsed_before = state["step"], state["elapsed_s"]
        lr_scale = state.get("lr_scale", 1.0)
        if len(state["rng"]) == world:
            _set_rng_state(state["rng"][rank], sampler, device)
        else:  # another world size: fresh streams, same result up to data order
            _seed_everything(cfg.seed, rank, step)
            sampler.rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, rank, step]))

    if is_main:  # only now: a run refused above leaves no folder behind
        out_dir.mkdir(parents=True, exist_ok=True)

    net: nn.Module = model
    if world > 1:
        aux_names = [n for n, p in model.named_parameters() if n.endswith(".quantiles")]
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            model, aux_names)
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    end = min(cfg.steps, cfg.stop_step or cfg.steps)
    drop_step = int(cfg.lr_drop_at * cfg.steps)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if cfg.bf16
                else contextlib.nullcontext())
    log_path = out_dir / "log.jsonl"
    bar = _progress(end, step, is_main)
    emit = bar.write if bar is not None else (lambda s: print(s, flush=True))
    if is_main:
        emit(f"[train] {data_desc}; {sampler.skipped} smaller than {cfg.crop} px skipped; "
             f"{len(val_crops)} val crops; device {device} x{world}; start step {step}/{end}")

    def log(record: dict) -> None:
        with open(log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        emit(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in record.items()))

    def checkpoint() -> None:
        rng = [_rng_state(sampler, device)]
        if world > 1:
            gathered: list = [None] * world
            dist.all_gather_object(gathered, rng[0])
            rng = gathered
        if not is_main:
            return
        save_checkpoint(out_dir, {
            "format": 1, "step": step, "elapsed_s": elapsed_before + time.monotonic() - t_loop,
            "config": dataclasses.asdict(cfg), "data": data_desc,
            "command": shlex.join([sys.executable, *sys.argv]),
            "model": model.state_dict(),
            "optimizer": _compact_optimizer_state(
                opt.state_dict(), getattr(torch, cfg.ckpt_moments)),
            "aux_optimizer": aux_opt.state_dict(),
            "rng": rng, "world_size": world, "lr_scale": lr_scale,
        })

    def roll_back() -> int:
        """Back to the last checkpoint (every run has one: the first is written before step
        one) with half the learning rate, after a non-finite loss."""
        nonlocal lr_scale, rollbacks
        if rollbacks == MAX_ROLLBACKS:
            raise TrainingDiverged(
                f"training diverged (non-finite loss) at step {step} after {rollbacks} "
                f"rollbacks with the learning rate halved each time; the checkpoint in "
                f"{out_dir} holds the last finite state")
        state = load_checkpoint(out_dir)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        aux_opt.load_state_dict(state["aux_optimizer"])
        lr_scale, rollbacks = lr_scale / 2, rollbacks + 1
        if is_main:
            log({"step": state["step"], "rollback_from": step, "lr_scale": lr_scale})
        return state["step"]

    sums = torch.zeros(5, device=device)
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    t_loop = t_last_ckpt = t_last_log = time.monotonic()
    last_log_step, last_record, last_val = step, {}, {}
    check_every = 1 if world == 1 else 20
    if not resuming:
        checkpoint()
    model.train()
    first_step = step
    while step < end:
        late = (cfg.lr_drop_minutes is not None
                and time.monotonic() - t_start >= cfg.lr_drop_minutes * 60)
        lr = cfg.lr * lr_scale * (0.1 if step >= drop_step or late else 1.0)
        if step - first_step < cfg.warmup_steps:
            lr *= (step - first_step + 1) / cfg.warmup_steps
        for group in opt.param_groups:
            group["lr"] = lr
        x = sampler.sample(cfg.batch)
        stats = train_step(net, model, x, opt, aux_opt, cfg, autocast, world > 1)
        nonfinite |= ~torch.isfinite(stats).all()
        sums += stats
        step += 1
        if bar is not None:
            bar.update(1)

        if is_main and (step % cfg.log_every == 0 or step == end):
            loss_s, bpp_s, mse_s, psnr_s, aux_s = (sums / (step - last_log_step)).tolist()
            now = time.monotonic()
            last_record = {
                "step": step, "images_per_s": (step - last_log_step) * cfg.batch * world
                / (now - t_last_log), "loss": loss_s, "bpp": bpp_s, "mse": mse_s,
                "psnr": psnr_s, "aux": aux_s, "lr": lr,
                "elapsed_s": elapsed_before + now - t_loop,
            }
            log(last_record)
            sums.zero_()
            last_log_step, t_last_log = step, now
        if is_main and cfg.val_every and step % cfg.val_every == 0 and step < end:
            last_val = {"step": step, **evaluate(model, val_crops, cfg.batch, cfg.channels_last)}
            log(last_val)
            t_last_log = time.monotonic()

        if step % check_every == 0 or step >= end:
            now = time.monotonic()
            flags = torch.cat([torch.tensor(
                [now - t_last_ckpt >= cfg.ckpt_minutes * 60,
                 cfg.max_minutes is not None and now - t_start >= cfg.max_minutes * 60],
                device=device), nonfinite.reshape(1)])
            if world > 1:
                dist.broadcast(flags, src=0)
            want_ckpt, time_up, diverged = flags.tolist()
            if diverged:
                step = last_log_step = roll_back()
                t_last_log = time.monotonic()
                sums.zero_()
                nonfinite.zero_()
                continue
            if time_up or step >= end:
                break
            if want_ckpt:
                checkpoint()
                t_last_ckpt = time.monotonic()
                t_last_log = t_last_ckpt  # keep images/s about training only

    checkpoint()
    if step >= cfg.steps and is_main:
        last_val = {"step": step, **evaluate(model, val_crops, cfg.batch, cfg.channels_last)}
        log(last_val)
        export_weights(load_checkpoint(out_dir), out_dir / EXPORT_NAME, {},
                       build_model=build_model)
        emit(f"[train] done: {out_dir / EXPORT_NAME}")
    if bar is not None:
        bar.close()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return {"step": step, "log": last_record, "val": last_val}


# ----------------------------------------------------------------------------- command line


def config_fields() -> list[tuple[dataclasses.Field, type, bool]]:
    """(field, scalar type, is_list) per config field, for argparse and click alike."""
    hints = typing.get_type_hints(TrainConfig)
    fields = []
    for f in dataclasses.fields(TrainConfig):
        hint = hints[f.name]
        is_list = typing.get_origin(hint) is list
        if is_list:
            (scalar,) = typing.get_args(hint)
        elif isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
            (scalar,) = [a for a in typing.get_args(hint) if a is not type(None)]
        else:
            scalar = hint
        fields.append((f, scalar, is_list))
    return fields


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
    """Config from the command line (argparse: the GPU machine may lack click)."""
    parser = argparse.ArgumentParser(
        prog="python -m lsq.models.train", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f, scalar, is_list in config_fields():
        flag = "--" + f.name.replace("_", "-")
        default = [] if is_list else f.default
        if scalar is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default,
                                help=f.metadata["help"])
        else:
            parser.add_argument(flag, type=scalar, default=default, nargs="+" if is_list else None,
                                help=f.metadata["help"])
    return TrainConfig(**vars(parser.parse_args(argv)))


def main(argv: Sequence[str] | None = None) -> None:
    train(parse_args(argv))


if __name__ == "__main__":
    main()
