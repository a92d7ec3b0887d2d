"""What a run depends on: the model (a preset plus overrides, resolved to a ModelSpec) and the
recipe. Saved in every checkpoint; refused in one line before any data or GPU time is spent."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path

import torch

from lsq.models.spec import ModelSpec, SpecError, preset

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
LR_SCALINGS = ("linear", "sqrt", "none")
#: The clean folders of the training set that the held-out slice is taken from.
HELDOUT_FOLDERS = ("wallpapers", "urban100")


def _f(default, help: str, **kw):  # noqa: A002 - argparse's word
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help, **kw})


@dataclasses.dataclass
class TrainConfig:
    """Everything a run depends on; model fields left None come from the preset."""

    preset: str | None = _f(None, "named model from lsq.models.spec (e.g. leech, scalar-cgf); "
                                  "the model flags below override it")
    quantizer: str | None = _f(None, "latent codec: scalar | bsq | leech | spherical-leech | "
                                     "leech-hybrid (default scalar)")
    N: int | None = _f(None, "hyperprior channels (default 128)")
    M: int | None = _f(None, "latent channels (default 192)")
    quality_min: int | None = _f(None, "lowest integer quality (default 1)")
    quality_max: int | None = _f(None, "highest quality (default 8); = quality-min: fixed-rate")
    proxy: str | None = _f(None, "training proxy: ste | noise | mixed | dither | dither-rate "
                                 "(the dithers: scalar, leech, leech-hybrid; default mixed)")
    context: str | None = _f(None, "context model: none | channel-groups")
    lrp: bool | None = _f(None, "latent residual prediction (channel-groups only)")
    group_transform: str | None = _f(None, "channel-groups transforms: separable | full")
    origin: bool | None = _f(None, "leech: lattice anchored at the origin, not the mean")
    steps: int = _f(100_000, "total optimizer steps")
    out: str = _f("runs/train", "run folder: log, checkpoint, final weights")
    data: str | None = _f(None, "shard folder (from pack-shards)")
    images: list[str] = _f([], "image folders, instead of --data")
    heldout_folders: list[str] = _f(list(HELDOUT_FOLDERS),
                                    "source folders the held-out slice is taken from")
    heldout_every: int = _f(3, "every n-th image of those folders (by name) is held out")
    val_crop: int = _f(512, "side of the held-out crops (non-overlapping tiles)")
    batch: int = _f(16, "crops per step and GPU")
    crop: int = _f(256, "crop side in pixels")
    min_scale: float = _f(0.5, "smallest random downscale before cropping")
    lr: float = _f(1e-4, "main Adam learning rate at --lr-batch crops per step")
    lr_batch: int = _f(16, "the batch (all GPUs) that --lr is meant for")
    lr_scaling: str = _f("sqrt", "lr for other batches: sqrt | linear | none")
    aux_lr: float = _f(1e-3, "Adam learning rate of the '.quantiles' parameters")
    lr_drop_at: float = _f(0.9, "fraction of steps after which lr is divided by 10")
    lr_drop_minutes: float | None = _f(None, "also divide lr by 10 after this many minutes of "
                                             "this process (time-bounded GPU sessions)")
    warmup_steps: int = _f(0, "raise lr linearly over the first steps of a fresh optimizer "
                              "(from step 0, or from the --continue-from step); a resumed "
                              "run does not warm up again")
    clip: float = _f(1.0, "gradient-norm clip, 0: off")
    seed: int = _f(0, "random seed")
    log_every: int = _f(100, "steps per log line")
    val_every: int = _f(5000, "steps between validations, 0: only at the end")
    ckpt_minutes: float = _f(5.0, "minutes between checkpoints")
    max_minutes: float | None = _f(None, "stop with a checkpoint after this many minutes")
    stop_time: float | None = _f(None, "stop with a checkpoint at this Unix time")
    stop_step: int | None = _f(None, "stop with a checkpoint at this step (chunked runs)")
    init: str | None = _f(None, "start from these exported weights (fresh optimizer) when OUT "
                                "has no checkpoint; 'auto': the shipped weights of this "
                                "preset, or of its version without the context model")
    init_transforms: str | None = _f(None, "start the transforms from another model's exported "
                                           "weights, any quantizer, when OUT has no checkpoint")
    continue_from: str | None = _f(None, "when OUT has no checkpoint, continue the run whose "
                                         "exported weights these are (the same model, or "
                                         "the same with another latent codec of the same "
                                         "parameters; fresh optimizer): its steps, crops, "
                                         "GPU time, lr schedule and history go on, --steps "
                                         "is the total")
    resume: bool = _f(True, "continue from OUT's checkpoint if there is one")
    ckpt_moments: str = _f("bfloat16", "dtype of Adam moments in checkpoints (float32: exact "
                                       "resume; bfloat16: smaller parts)")
    bf16: bool = _f(False, "bf16 autocast around the transforms (priors, likelihoods and the "
                           "lattice search stay fp32)")
    compile: str = _f("", "torch.compile backend for the latent codec's training rate "
                          "(inductor); empty: eager")
    compile_transforms: str = _f("", "torch.compile mode for g_a, g_s, h_a, h_s: default, "
                                     "reduce-overhead (CUDA graphs), max-autotune; empty: eager")
    channels_last: bool = _f(False, "channels_last memory format")
    device: str = _f("auto", "auto | cuda | cpu")
    name: str | None = _f(None, "model name in the export (default: OUT's name)")
    default_quality: float | None = _f(None, "quality `lsq encode` uses by default (export; "
                                             "default: the --init weights', else 2.75 if the "
                                             "model has it)")


class ConfigError(ValueError):
    """A training configuration that cannot run: the user's input, reported in one line."""


def _codec_options(base: ModelSpec, cfg: TrainConfig) -> dict:
    """The preset's codec options with the flags given on top."""
    options = dict(base.codec_options)
    if cfg.lrp is not None:
        options.pop("lrp", None)
        options.update({"lrp": True} if cfg.lrp else {})
    if cfg.group_transform is not None:
        options.pop("group_transform", None)
        if cfg.group_transform != "separable":
            options["group_transform"] = cfg.group_transform
    if cfg.origin is not None:
        options.pop("mean_shift", None)
        options.update({"mean_shift": False} if cfg.origin else {})
    return options


def _or(value, default):
    return default if value is None else value


def model_spec(cfg: TrainConfig) -> ModelSpec:
    """The run's model: its preset (or the default scalar model) with the given overrides."""
    base = preset(cfg.preset) if cfg.preset else ModelSpec("scalar")
    low, high = base.qualities
    return ModelSpec(
        _or(cfg.quantizer, base.latent_codec), _or(cfg.N, base.N), _or(cfg.M, base.M),
        (_or(cfg.quality_min, low), _or(cfg.quality_max, high)), _or(cfg.proxy, base.proxy),
        _or(cfg.context, base.context), _codec_options(base, cfg))


def _recipe_problems(cfg: TrainConfig) -> list[str]:
    """What is wrong with the recipe (everything but the model and the files)."""
    checks = [
        (cfg.crop % 64 == 0 and cfg.crop > 0 and cfg.val_crop % 64 == 0 and cfg.val_crop > 0,
         "--crop and --val-crop must be positive multiples of 64"),
        (cfg.batch > 0 and cfg.steps > 0 and cfg.lr_batch > 0,
         "--batch, --lr-batch and --steps must be positive"),
        (cfg.warmup_steps >= 0, "--warmup-steps must be >= 0"),
        (cfg.heldout_every > 0, "--heldout-every must be positive"),
        (cfg.lr_scaling in LR_SCALINGS,
         f"unknown --lr-scaling {cfg.lr_scaling!r} (one of {', '.join(LR_SCALINGS)})"),
        (cfg.ckpt_moments in ("float32", "bfloat16", "float16"),
         "--ckpt-moments must be float32, bfloat16 or float16"),
        (cfg.device in ("auto", "cuda", "cpu"), "--device must be auto, cuda or cpu"),
        (not cfg.compile or cfg.compile in torch.compiler.list_backends(exclude_tags=()),
         f"unknown --compile backend {cfg.compile!r}; e.g. inductor"),
        (not cfg.compile_transforms or cfg.compile_transforms in COMPILE_MODES,
         f"unknown --compile-transforms mode {cfg.compile_transforms!r} (one of "
         f"{', '.join(COMPILE_MODES)})"),
        (not (cfg.init and cfg.init_transforms), "give --init or --init-transforms, not both"),
        (not (cfg.continue_from and (cfg.init or cfg.init_transforms)),
         "--continue-from starts from the run's own weights: give it without --init and "
         "--init-transforms"),
    ]
    return [message for ok, message in checks if not ok]


def _quality_problems(cfg: TrainConfig, spec: ModelSpec) -> list[str]:
    from lsq.codec.bitstream import QUALITY_STEPS
    from lsq.models.quality import snap_quality

    q = cfg.default_quality
    if q is None:
        return []
    low, high = spec.qualities
    if not low <= q <= high:
        return [f"--default-quality must lie between the model's qualities {low} and {high}"]
    if snap_quality(q) != q:
        return [f"--default-quality must be a multiple of 1/{QUALITY_STEPS} (the stream's "
                f"quality step), e.g. {snap_quality(q)}"]
    return []


def _init_problems(flag: str, path: str | None, spec: ModelSpec) -> list[str]:
    from lsq.models.weights_file import WeightsFileError, read_config

    if not path or (flag == "--init" and path == "auto"):
        return []
    if not Path(path).is_file():
        return [f"{flag} {path}: no such file"]
    try:
        family = read_config(path)["family"]
    except WeightsFileError as e:
        return [f"{flag}: {e}"]
    if flag == "--init" and family != spec.latent_codec:
        return [f"--init {path} holds a {family} model, this run trains {spec.latent_codec} "
                "(--init-transforms takes another quantizer's transforms)"]
    return []


def spec_difference(ours: ModelSpec, theirs: ModelSpec) -> str:
    """Where ``theirs`` differs from this run's spec, field by field."""
    a, b = ours.to_dict(), theirs.to_dict()
    return ", ".join(f"{k}={b[k]!r} (this run: {v!r})" for k, v in a.items() if b[k] != v)


def _same_but_codec(ours: ModelSpec, theirs: ModelSpec) -> bool:
    """Whether ``theirs`` is ``ours`` up to the latent codec."""
    try:
        return dataclasses.replace(theirs, latent_codec=ours.latent_codec) == ours
    except SpecError:  # their options do not fit our codec
        return False


def _continue_problems(cfg: TrainConfig, spec: ModelSpec) -> list[str]:
    """--continue-from: the same model's weights, at a step short of this run's end (unless
    OUT's checkpoint, which wins, makes them irrelevant)."""
    from lsq.models.weights_file import WeightsFileError, read_config

    from .checkpoint import exists

    path = cfg.continue_from
    if not path:
        return []
    if not Path(path).is_file():
        return [f"--continue-from {path}: no such file"]
    try:
        config = read_config(path)
        theirs = ModelSpec.from_weights_config(config)
    except (WeightsFileError, SpecError) as e:
        return [f"--continue-from: {e}"]
    if not _same_but_codec(spec, theirs):
        return [f"--continue-from {path} holds another model ({spec_difference(spec, theirs)}); "
                "it continues the same model, or the same with another latent codec of the "
                "same parameters (--init-transforms starts another)"]
    steps = config.get("steps")
    if type(steps) is not int or steps < 1:
        return [f"--continue-from {path} records no training steps (--init starts from it)"]
    end = min(cfg.steps, cfg.stop_step or cfg.steps)
    if end <= steps and not (cfg.resume and exists(cfg.out)):
        return [f"--continue-from {path} is at step {steps} already, this run ends at step "
                f"{end} (--steps is the run's total, not this session's)"]
    return []


def check(cfg: TrainConfig, data_given: bool = False) -> ModelSpec:
    """The run's ModelSpec, or ConfigError naming everything wrong with ``cfg``
    (``data_given``: the caller hands the images over itself)."""
    problems = _recipe_problems(cfg)
    spec = None
    try:
        spec = model_spec(cfg)
    except SpecError as e:
        problems.append(str(e))
    if not (cfg.data or cfg.images or data_given):
        problems.append("give --data (a shard folder) or --images (image folders)")
    if spec is not None:
        problems += _quality_problems(cfg, spec)
        problems += _init_problems("--init", cfg.init, spec)
        problems += _init_problems("--init-transforms", cfg.init_transforms, spec)
        problems += _continue_problems(cfg, spec)
    if problems:
        raise ConfigError("; ".join(problems))
    return spec


def config_fields() -> list[tuple[dataclasses.Field, type, bool]]:
    """(field, scalar type, is_list) per config field, for argparse and click alike."""
    hints = typing.get_type_hints(TrainConfig)
    fields = []
    for f in dataclasses.fields(TrainConfig):
        hint = hints[f.name]
        is_list = typing.get_origin(hint) is list
        if is_list:
            (scalar,) = typing.get_args(hint)
        elif isinstance(hint, types.UnionType):
            (scalar,) = [a for a in typing.get_args(hint) if a is not type(None)]
        else:
            scalar = hint
        fields.append((f, scalar, is_list))
    return fields
