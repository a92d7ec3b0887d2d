"""The training loop: steps, check points and checkpoints; every policy is a callback.

``train(cfg)`` builds a run (model from its ModelSpec, data, optimizers, sampler, the
checkpoint to resume or the weights to start from) and hands it to a ``Trainer``.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lsq.models.spec import ModelSpec, SpecError

from . import callbacks as cb
from . import checkpoint, distributed, sessions, throughput
from .config import ConfigError, TrainConfig, check, spec_difference
from .data import CropSampler, load_data, tiles
from .step import Optimizers, train_step
from .warm_start import continue_weights, shipped_init, transplant, warm_start

ACTIONS = ("rollback", "stop", "checkpoint")
Data = tuple[Sequence[np.ndarray], Sequence[np.ndarray], str]


@dataclasses.dataclass
class Run:
    """What a Trainer trains: built once, saved in every checkpoint."""

    cfg: TrainConfig
    spec: ModelSpec
    model: nn.Module
    opts: Optimizers
    sampler: CropSampler
    device: torch.device
    rank: int = 0
    world: int = 1
    data_desc: str = ""
    default_quality: float | None = None
    name: str | None = None
    start: sessions.Start = dataclasses.field(default_factory=sessions.Start)


class Trainer:
    """Steps ``run`` to ``end`` (its steps or stop step), asking the callbacks at every check
    point (each step; every 20 with several processes) whether to roll back, stop or save."""

    def __init__(self, run: Run, callbacks: Sequence[cb.Callback], t_start: float | None = None,
                 ) -> None:
        self.setup, self.cfg, self.model, self.opts = run, run.cfg, run.model, run.opts
        self.world, self.is_main, self.device = run.world, run.rank == 0, run.device
        self.net = distributed.wrap(run.model, run.world, run.device)
        self.callbacks = list(callbacks)
        start = run.start
        self.step, self.elapsed_before, self.rollbacks = start.step, start.gpu_time, 0
        self.lr_scale, self.warmup_from = start.lr_scale, start.warmup_from
        self.end = min(self.cfg.steps, self.cfg.stop_step or self.cfg.steps)
        self.out_dir = Path(self.cfg.out)
        self.crops_per_step = self.cfg.batch * self.world
        self.t_start = time.monotonic() if t_start is None else t_start
        self.t_loop = time.monotonic()
        self.lr = self.cfg.lr

    @property
    def finished(self) -> bool:
        return self.step >= self.cfg.steps

    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.t_loop

    def images_seen(self) -> int:
        """Crops trained on over the whole run, whatever the batch of earlier processes."""
        start = self.setup.start
        return start.images_seen + (self.step - start.step) * self.crops_per_step

    def emit(self, line: str) -> None:
        if self.is_main:
            print(line, flush=True)

    def log(self, record: dict) -> None:
        if self.is_main:
            cb.append_jsonl(self.out_dir / "log.jsonl", record)
            self.emit(cb.log_line(record))

    def notify(self, event: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(self, *args)

    def state(self) -> dict:
        """Everything an exact resume needs (rank 0's part; the random streams of all)."""
        run = self.setup
        rng = distributed.gather(checkpoint.rng_state(run.sampler.get_state(), self.device),
                                 self.world)
        command = shlex.join([sys.executable, *sys.argv])
        elapsed, images = self.elapsed(), self.images_seen()
        return {
            "format": 2, "step": self.step, "elapsed_s": elapsed, "images_seen": images,
            "config": dataclasses.asdict(self.cfg), "spec": run.spec.to_dict(),
            "data": run.data_desc, "command": command, "name": run.name,
            "default_quality": run.default_quality, "model": self.model.state_dict(),
            **self.opts.state_dict(getattr(torch, self.cfg.ckpt_moments)),
            "rng": rng, "world_size": self.world, "lr_scale": self.lr_scale,
            "warmup_from": self.warmup_from,
            "sessions": run.start.sessions(self.step, images, elapsed, self.cfg.batch,
                                           self.world, command),
        }

    def save(self) -> None:
        start = time.monotonic()
        state = self.state()  # a collective: every rank takes part
        if self.is_main:
            checkpoint.save(self.out_dir, state)
        self.notify("on_save", state if self.is_main else None)
        self.notify("on_pause", time.monotonic() - start)

    def roll_back(self) -> None:
        from_step = self.step
        state = checkpoint.load(self.out_dir)
        self.model.load_state_dict(state["model"])
        self.opts.load_state_dict(state)
        self.step = state["step"]
        self.notify("on_rollback", from_step)

    def _decide(self) -> str | None:
        """Rank 0's request at a check point, the same on every rank."""
        wanted = {callback.request(self) for callback in self.callbacks}
        flags = torch.tensor([a in wanted for a in ACTIONS], device=self.device)
        flags = distributed.broadcast_flags(flags, self.world).tolist()
        return next((a for a, f in zip(ACTIONS, flags, strict=True) if f), None)

    def _step(self) -> str | None:
        self.notify("on_step_begin")
        x = self.setup.sampler.sample(self.cfg.batch)
        stats = train_step(self.net, self.model, x, self.opts, self.cfg.clip, self.world,
                           self.cfg.channels_last)
        self.step += 1
        self.notify("on_step_end", stats)
        if self.step % (1 if self.world == 1 else 20) and self.step < self.end:
            return None
        return self._decide()

    def train(self, fresh: bool) -> dict:
        """Run to the end or a stop; returns the step and the callbacks' last records."""
        if fresh:
            self.save()
        self.model.train()
        self.notify("on_start")
        while self.step < self.end:
            action = self._step()
            if action == "rollback":
                self.roll_back()
            elif action == "stop":
                break
            elif action == "checkpoint" and self.step < self.end:
                self.save()
        self.save()
        self.notify("on_end")
        distributed.finish(self.world)
        result = {"step": self.step}
        for callback in self.callbacks:
            result.update(callback.result())
        return result


def default_callbacks(cfg: TrainConfig, crops: torch.Tensor | None, world: int
                      ) -> list[cb.Callback]:
    """The policies of ``lsq train``, in the order they see each event."""
    factor = cb.batch_lr_factor(cfg.batch * world, cfg.lr_batch, cfg.lr_scaling)
    validation = cb.Validation(crops, cfg.val_every, cfg.batch, cfg.channels_last)
    return [
        cb.LrSchedule(cfg.lr, factor, cfg.warmup_steps, int(cfg.lr_drop_at * cfg.steps),
                      cfg.lr_drop_minutes),
        cb.DivergenceRollback(), cb.TimeBudget(cfg.max_minutes, cfg.stop_time),
        cb.PeriodicCheckpoint(cfg.ckpt_minutes), cb.Logger(cfg.log_every), validation,
        cb.BestExport(validation), cb.Export(),
    ]


def _init(run: Run, init: str, is_main: bool) -> sessions.Start:
    """--init: exported weights (of this model or its version without the context model)."""
    from lsq.models.weights_file import read_config

    fresh = warm_start(run.model, init)
    shipped = read_config(init)["default_quality"]
    low, high = run.spec.qualities
    if run.default_quality is None and low <= shipped <= high:
        run.default_quality = shipped
    if is_main:
        print(f"[train] --init {init}" + (f": {', '.join(fresh)} start fresh" if fresh
                                          else ""), flush=True)
    return sessions.Start("init", init)


def _continue(run: Run, is_main: bool) -> sessions.Start:
    """--continue-from: the run's exported weights and its accounting, a fresh optimizer,
    and random streams seeded from the step (as a resume on another world size does)."""
    from lsq.models.weights_file import read_config

    path = run.cfg.continue_from
    config = read_config(path)
    start = sessions.from_weights(config, path, continue_weights(run.model, path))
    trained_with = ModelSpec.from_weights_config(config).latent_codec
    if trained_with != run.spec.latent_codec:
        start.codec_from = trained_with
    if run.default_quality is None:
        run.default_quality = config["default_quality"]
    if start.codec_from is None:  # another codec is another model: not the file's name
        run.name = run.name or config["name"]
    _reseed(run, start.step)
    if is_main:
        print(f"[train] continue {path} at step {start.step} (fresh optimizer, re-warm-up "
              f"{run.cfg.warmup_steps} steps" + (f"; trained with {start.codec_from}, now "
              f"{run.spec.latent_codec}" if start.codec_from else "") + ")", flush=True)
    return start


def _start_weights(run: Run, is_main: bool) -> sessions.Start:
    """--continue-from / --init / --init-transforms for a run without a checkpoint."""
    cfg = run.cfg
    if cfg.continue_from:
        return _continue(run, is_main)
    init = cfg.init
    if init == "auto":
        from lsq.models.registry import weights_dir

        found = shipped_init(run.spec, cfg.name or Path(cfg.out).name, weights_dir())
        init = str(found) if found else None
    if init:
        return _init(run, init, is_main)
    if cfg.init_transforms:
        fresh = transplant(run.model, cfg.init_transforms)
        if is_main:
            print(f"[train] --init-transforms {cfg.init_transforms}: {len(fresh)} tensors "
                  f"start fresh: {', '.join(fresh[:12])}", flush=True)
        return sessions.Start("init-transforms", cfg.init_transforms)
    return sessions.Start()


def _reseed(run: Run, step: int) -> None:
    """Fresh random streams for a run taken up at ``step`` without its saved ones."""
    checkpoint.seed_everything(run.cfg.seed, run.rank, step)
    run.sampler.rng = np.random.default_rng(
        np.random.SeedSequence([run.cfg.seed, run.rank, step]))


def _resume(run: Run, state: dict) -> sessions.Start:
    """Load a checkpoint into ``run``: refused if it holds another model."""
    cfg = run.cfg
    theirs = ModelSpec.from_dict(state["spec"])
    if theirs != run.spec:
        raise ConfigError(f"the checkpoint in {cfg.out} holds another model "
                          f"({spec_difference(run.spec, theirs)})")
    run.model.load_state_dict(state["model"])
    run.opts.load_state_dict(state)
    run.default_quality = run.default_quality or state.get("default_quality")
    run.name = run.name or state.get("name")
    if len(state["rng"]) == run.world:
        run.sampler.set_state(checkpoint.set_rng_state(state["rng"][run.rank], run.device))
    else:  # another world size: fresh streams, same result up to data order
        _reseed(run, state["step"])
    if cfg.continue_from and run.rank == 0:
        print(f"[train] {cfg.out} has a checkpoint at step {state['step']}: resumed from it, "
              f"--continue-from {cfg.continue_from} not used", flush=True)
    return sessions.from_checkpoint(state, cfg.out)


def train(cfg: TrainConfig, data: Data | None = None,
          callbacks: Sequence[cb.Callback] | None = None) -> dict:
    """Train (or resume) the run in ``cfg.out``; returns the last log and validation records.

    ``data`` = (train images, held-out images, description) replaces loading from
    ``cfg.data``/``cfg.images``. Exports ``final.safetensors`` once all steps are done.
    """
    t_start = time.monotonic()
    spec = check(cfg, data_given=data is not None)
    rank, world, device = distributed.setup(cfg.device)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    try:  # before the data: the codec judges its option values only when it is built
        model = spec.build().to(device)
    except SpecError as e:
        raise ConfigError(str(e)) from None
    try:
        train_imgs, val_imgs, desc = data if data is not None else load_data(
            cfg.data, cfg.images, cfg.heldout_folders, cfg.heldout_every)
        sampler = CropSampler(train_imgs, cfg.crop, device, cfg.min_scale, (cfg.seed, rank))
    except (OSError, ValueError) as e:  # a missing folder, a damaged shard, too small images
        raise ConfigError(f"training data: {e}") from None
    run = Run(cfg, spec, model, Optimizers(model, cfg.lr, cfg.aux_lr), sampler, device, rank,
              world, desc, cfg.default_quality, cfg.name)
    checkpoint.seed_everything(cfg.seed, rank, 0)
    out_dir = Path(cfg.out)
    state = checkpoint.load(out_dir) if cfg.resume and checkpoint.exists(out_dir) else None
    run.start = _start_weights(run, rank == 0) if state is None else _resume(run, state)
    throughput.prepare(model, device, cfg.bf16, cfg.channels_last, cfg.compile,
                       cfg.compile_transforms)
    if rank == 0:  # only now: a run refused above leaves no folder behind
        out_dir.mkdir(parents=True, exist_ok=True)
    crops = tiles(val_imgs, cfg.val_crop, device) if rank == 0 else None
    trainer = Trainer(run, callbacks or default_callbacks(cfg, crops, world), t_start=t_start)
    trainer.emit(f"[train] {desc}; {run.sampler.skipped} smaller than {cfg.crop} px skipped; "
                 f"{0 if crops is None else len(crops)} held-out crops of {cfg.val_crop} px; "
                 f"device {device} x{world}; start step {trainer.step}/{trainer.end}")
    return trainer.train(fresh=state is None)
