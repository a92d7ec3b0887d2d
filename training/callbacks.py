"""The trainer's policies, one callback each: learning-rate schedule, time budget, rollback
on divergence, periodic checkpoints, logging, validation, the best weights and the final
export.

A callback sees the trainer at these points: ``on_start``; ``on_step_begin`` and
``on_step_end(stats)`` around every step; ``request`` at check points, where it may ask for
"rollback", "stop" or "checkpoint" (rank 0's requests are what every rank does);
``on_rollback(from_step)`` and ``on_save(state)`` after the trainer did so (``state``: the
checkpoint it wrote, on rank 0; None elsewhere); ``on_pause(seconds)`` after that many
seconds that were not training (a checkpoint, a validation); ``on_end``. ``result`` adds to
what ``Trainer.run`` returns.
"""

from __future__ import annotations

import json
import math
import time
from typing import TYPE_CHECKING

import torch

from . import export
from .validate import evaluate

if TYPE_CHECKING:
    from .trainer import Trainer

MAX_ROLLBACKS = 3  # a run that diverges again after this many halvings of lr stops
SPIKE = 10.0  # a step whose loss is this many times the running mean rolls back
SPIKE_DECAY = 0.99  # of that running mean, per accepted step


class TrainingDiverged(RuntimeError):
    """The loss stayed non-finite after MAX_ROLLBACKS rollbacks; the last checkpoint is the last
    finite state."""


class Callback:
    def on_start(self, t: Trainer) -> None: ...

    def on_step_begin(self, t: Trainer) -> None: ...

    def on_step_end(self, t: Trainer, stats: torch.Tensor) -> None: ...

    def request(self, t: Trainer) -> str | None:
        return None

    def on_rollback(self, t: Trainer, from_step: int) -> None: ...

    def on_save(self, t: Trainer, state: dict | None) -> None: ...

    def on_pause(self, t: Trainer, seconds: float) -> None: ...

    def on_end(self, t: Trainer) -> None: ...

    def result(self) -> dict:
        return {}


def batch_lr_factor(batch: int, reference: int, scaling: str) -> float:
    """How much a batch of ``batch`` crops (all GPUs) raises the lr meant for ``reference``."""
    ratio = batch / reference
    return {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[scaling]


class LrSchedule(Callback):
    """lr = base x batch factor x rollback scale, raised linearly over the first ``warmup``
    steps of a fresh optimizer (from step 0, or from the step a run continued at; counted in
    the run's steps, so a resumed run goes on as if never stopped), divided by 10 after
    ``drop_step`` steps of the whole run or ``drop_minutes`` of this process (time-bounded
    GPU sessions)."""

    def __init__(self, lr: float, factor: float, warmup: int, drop_step: int,
                 drop_minutes: float | None) -> None:
        self.base, self.warmup, self.drop_step = lr * factor, warmup, drop_step
        self.drop_s = None if drop_minutes is None else drop_minutes * 60

    def on_step_begin(self, t: Trainer) -> None:
        late = self.drop_s is not None and time.monotonic() - t.t_start >= self.drop_s
        lr = self.base * t.lr_scale * (0.1 if t.step >= self.drop_step or late else 1.0)
        since = t.step - t.warmup_from
        if since < self.warmup:
            lr *= (since + 1) / self.warmup
        t.opts.set_lr(lr)
        t.lr = lr


class TimeBudget(Callback):
    """Stop (with a checkpoint) after ``minutes`` of this process or at Unix time ``until``."""

    def __init__(self, minutes: float | None, until: float | None) -> None:
        self.seconds, self.until = (None if minutes is None else minutes * 60), until

    def request(self, t: Trainer) -> str | None:
        over = self.seconds is not None and time.monotonic() - t.t_start >= self.seconds
        return "stop" if over or (self.until is not None and time.time() >= self.until) else None


class DivergenceRollback(Callback):
    """After a non-finite loss or a loss spike, back to the last checkpoint (every run has
    one: the first is written before step one) with half the learning rate; TrainingDiverged
    after MAX_ROLLBACKS of them.

    A spike is a step whose loss exceeds SPIKE times the running mean of the accepted
    steps' losses: a finite blow-up (a step of loss 1e12, its PSNR at 10 dB) leaves weights
    that take thousands of steps to recover, or never do. Only upward jumps count, so the
    falling loss of early training never triggers it. The test stays on the device (no
    host sync)."""

    def __init__(self) -> None:
        self.bad: torch.Tensor | None = None
        self.mean: torch.Tensor | None = None  # running mean of accepted losses; nan: none yet

    def on_step_end(self, t: Trainer, stats: torch.Tensor) -> None:
        loss = stats[0]
        if self.mean is None:
            self.mean = torch.full_like(loss, float("nan"))
        bad = ~torch.isfinite(stats).all() | (loss > SPIKE * self.mean)
        accepted = torch.where(self.mean.isnan(), loss, SPIKE_DECAY * self.mean
                               + (1 - SPIKE_DECAY) * loss)
        self.mean = torch.where(bad, self.mean, accepted)
        self.bad = bad if self.bad is None else self.bad | bad

    def request(self, t: Trainer) -> str | None:
        return "rollback" if self.bad is not None and bool(self.bad) else None

    def on_rollback(self, t: Trainer, from_step: int) -> None:
        if t.rollbacks == MAX_ROLLBACKS:
            raise TrainingDiverged(
                f"training diverged (non-finite or spiking loss) at step {from_step} after "
                f"{t.rollbacks} rollbacks with the learning rate halved each time; the "
                f"checkpoint in {t.out_dir} holds the last sound state")
        t.lr_scale, t.rollbacks = t.lr_scale / 2, t.rollbacks + 1
        self.bad = None
        t.log({"step": t.step, "rollback_from": from_step, "lr_scale": t.lr_scale})


class PeriodicCheckpoint(Callback):
    """A checkpoint every ``minutes``."""

    def __init__(self, minutes: float) -> None:
        self.seconds, self.last = minutes * 60, time.monotonic()

    def request(self, t: Trainer) -> str | None:
        return "checkpoint" if time.monotonic() - self.last >= self.seconds else None

    def on_save(self, t: Trainer, state: dict | None) -> None:
        self.last = time.monotonic()


class Logger(Callback):
    """Means of the step statistics every ``every`` steps (and at the last), with images/s
    of training alone (time spent in checkpoints and validation left out)."""

    KEYS = ("loss", "bpp", "mse", "psnr", "aux")

    def __init__(self, every: int) -> None:
        self.every, self.last, self.paused = every, {}, 0.0
        self.sums: torch.Tensor | None = None

    def _reset(self, t: Trainer) -> None:
        self.sums, self.since, self.clock, self.paused = None, t.step, time.monotonic(), 0.0

    def on_start(self, t: Trainer) -> None:
        self._reset(t)

    def on_rollback(self, t: Trainer, from_step: int) -> None:
        self._reset(t)

    def on_pause(self, t: Trainer, seconds: float) -> None:
        self.paused += seconds

    def on_step_end(self, t: Trainer, stats: torch.Tensor) -> None:
        self.sums = stats.clone() if self.sums is None else self.sums + stats
        if not t.is_main or (t.step % self.every and t.step != t.end):
            return
        now = time.monotonic()
        means = (self.sums / (t.step - self.since)).tolist()
        self.last = {"step": t.step, "images_per_s": (t.step - self.since) * t.crops_per_step
                     / (now - self.clock - self.paused), **dict(zip(self.KEYS, means, strict=True)),
                     "lr": t.lr, "elapsed_s": t.elapsed()}
        t.log(self.last)
        self._reset(t)

    def result(self) -> dict:
        return {"log": self.last}


class Validation(Callback):
    """Held-out evaluation every ``every`` steps (0: never in between) and at the end."""

    def __init__(self, crops: torch.Tensor | None, every: int, batch: int,
                 channels_last: bool) -> None:
        self.crops, self.every, self.batch, self.channels_last = crops, every, batch, channels_last
        self.last: dict = {}

    def _run(self, t: Trainer) -> None:
        if self.crops is None or not len(self.crops):
            return
        self.last = {"step": t.step, **evaluate(t.model, self.crops, self.batch,
                                                self.channels_last)}
        t.log(self.last)

    def on_step_end(self, t: Trainer, stats: torch.Tensor) -> None:
        if t.is_main and self.every and t.step % self.every == 0 and t.step < t.end:
            start = time.monotonic()
            self._run(t)
            t.notify("on_pause", time.monotonic() - start)

    def on_end(self, t: Trainer) -> None:
        if t.is_main and t.finished:
            self._run(t)

    def result(self) -> dict:
        return {"val": self.last}


class Export(Callback):
    """Once all steps are done, the final weights as ``final.safetensors``."""

    def on_end(self, t: Trainer) -> None:
        if t.is_main and t.finished:
            from . import checkpoint

            path = export.export_weights(checkpoint.load(t.out_dir), t.out_dir / export.FINAL)
            t.emit(f"[train] done: {path}")


class BestExport(Callback):
    """The weights of the best held-out validation so far as ``best.safetensors``.

    Checkpoints overwrite each other, so a blow-up between two of them (or a slow decline)
    would leave only worse weights; this file keeps the best. The score is the mean over
    qualities of log(held-out RD cost), so every quality counts alike; it goes into the
    file's config (``heldout_score``), and a resumed run keeps a better file. A better
    validation asks for a checkpoint, which every rank takes part in, and the export is made
    from the state it wrote."""

    def __init__(self, validation: Validation) -> None:
        self.validation, self.pending, self.best = validation, False, math.inf

    def on_start(self, t: Trainer) -> None:
        path = t.out_dir / export.BEST
        if t.is_main and path.is_file():
            from lsq.models.weights_file import read_config

            self.best = read_config(path).get("heldout_score", math.inf)

    def on_step_end(self, t: Trainer, stats: torch.Tensor) -> None:
        record = self.validation.last  # made at this step, or an older one to pass over
        if not record or record["step"] != t.step:
            return
        costs = [v for k, v in record.items() if k.startswith("val_cost_q")]
        score = sum(math.log(c) for c in costs) / len(costs)
        if score < self.best:
            self.best, self.pending = score, True

    def request(self, t: Trainer) -> str | None:
        return "checkpoint" if self.pending else None

    def on_rollback(self, t: Trainer, from_step: int) -> None:
        self.pending = False

    def on_save(self, t: Trainer, state: dict | None) -> None:
        if state is not None and self.pending:
            export.export_weights(state, t.out_dir / export.BEST,
                                  meta={"heldout_score": self.best})
            t.emit(f"[train] best held-out so far: {t.out_dir / export.BEST} (step {t.step})")
        self.pending = False


def log_line(record: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in record.items())


def append_jsonl(path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
