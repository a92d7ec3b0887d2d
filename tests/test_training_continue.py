"""A run continued across GPU sessions from its exported fp16 weights (``--continue-from``):
its steps, crops, GPU time, lr schedule and history go on, also under another latent codec of
the same parameters; another model is refused, and a checkpoint in the run folder still wins
(an exact resume)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from lsq.models import weights_file
from lsq.training import ConfigError, TrainConfig, checkpoint, export, train

K, WARMUP, LR = 4, 2, 3e-3  # K steps a session; the lr drops at 3/4 of the 2K


def blocky(rng: np.random.Generator, side: int) -> np.ndarray:
    """A learnable image: 16-pixel blocks of colour plus a little noise."""
    low = np.kron(rng.uniform(0, 255, (side // 16, side // 16, 3)), np.ones((16, 16, 1)))
    return np.clip(low + rng.normal(0, 4, low.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def images() -> tuple[list[np.ndarray], list[np.ndarray], str]:
    rng = np.random.default_rng(0)
    return [blocky(rng, 96) for _ in range(8)], [blocky(rng, 64) for _ in range(2)], "blocks"


def tiny(out: Path, **kw) -> TrainConfig:
    base = dict(out=str(out), steps=2 * K, N=8, M=24, batch=4, crop=64, val_crop=64, lr=LR,
                lr_batch=4, quantizer="scalar", quality_min=2, quality_max=5, log_every=1,
                val_every=0, device="cpu", ckpt_moments="float32", warmup_steps=WARMUP,
                lr_drop_at=0.75)
    return TrainConfig(**{**base, **kw})


def config_of(path: Path) -> dict:
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["config"])


def lrs(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["lr"] for r in records if "lr" in r}


@pytest.fixture(scope="module")
def first_session(images, tmp_path_factory) -> Path:
    """The fp16 export of a run of 2K steps stopped after K: what crosses a session."""
    run = tmp_path_factory.mktemp("first") / "run"
    train(tiny(run, stop_step=K, name="flag", default_quality=3.0), images)
    return export.export_weights(checkpoint.load(run), run.parent / "flag.safetensors")


def test_a_continued_run_counts_on_and_keeps_the_lr_schedule(images, first_session, tmp_path,
                                                             capsys):
    run = tmp_path / "second"
    train(tiny(run, continue_from=str(first_session)), images)
    assert (f"[train] continue {first_session} at step {K} (fresh optimizer, re-warm-up "
            f"{WARMUP} steps)") in capsys.readouterr().out
    meta = config_of(run / export.FINAL)
    assert (meta["steps"], meta["images_seen"]) == (2 * K, 2 * K * 4)
    assert (meta["name"], meta["default_quality"]) == ("flag", 3.0)  # carried over
    before, after = meta["sessions"]
    assert (before["start"], before["steps"], before["images"]) == ("scratch", [0, K], 4 * K)
    assert (after["start"], after["from"], after["fp16"]) == ("continue", str(first_session),
                                                              True)
    assert (after["steps"], after["images"], after["batch"]) == ([K, 2 * K], 4 * K, 4)
    assert meta["gpu_time"] == pytest.approx(before["gpu_time"] + after["gpu_time"], abs=0.2)
    assert config_of(first_session)["gpu_time"] == pytest.approx(before["gpu_time"], abs=0.1)
    # re-warm-up from step K, then the whole run's schedule: the drop at 3/4 of 2K, not replayed
    assert lrs(run) == pytest.approx({5: LR / 2, 6: LR, 7: LR / 10, 8: LR / 10})
    whole = tmp_path / "whole"
    train(tiny(whole), images)
    assert lrs(whole) == pytest.approx({1: LR / 2, 2: LR, 3: LR, 4: LR, 5: LR, 6: LR,
                                        7: LR / 10, 8: LR / 10})


def test_a_continue_may_switch_to_a_latent_codec_of_the_same_parameters(images, first_session,
                                                                        tmp_path, capsys):
    run = tmp_path / "hybrid"
    train(tiny(run, continue_from=str(first_session), quantizer="leech-hybrid"), images)
    assert (f"re-warm-up {WARMUP} steps; trained with scalar, now leech-hybrid)"
            in capsys.readouterr().out)
    meta = config_of(run / export.FINAL)
    assert (meta["family"], meta["steps"], meta["images_seen"]) == ("leech-hybrid", 2 * K,
                                                                    2 * K * 4)
    assert meta["name"] == "hybrid"  # its run's, not the name of the model it started from
    before, after = meta["sessions"]
    assert "codec_from" not in before
    assert (after["start"], after["codec_from"], after["steps"]) == ("continue", "scalar",
                                                                     [K, 2 * K])


def test_a_continue_keeps_the_learning_rate_its_rollbacks_halved(images, first_session,
                                                                 tmp_path):
    state = checkpoint.load(first_session.parent / "run")
    state["lr_scale"] = 0.5  # as one rollback leaves it
    halved = export.export_weights(state, tmp_path / "flag.safetensors")
    assert config_of(halved)["lr_scale"] == 0.5
    run = tmp_path / "second"
    train(tiny(run, continue_from=str(halved)), images)
    assert lrs(run) == pytest.approx({5: LR / 4, 6: LR / 2, 7: LR / 20, 8: LR / 20})
    assert checkpoint.load(run)["lr_scale"] == 0.5


def first_loss(run: Path) -> float:
    return json.loads((run / "log.jsonl").read_text().splitlines()[0])["loss"]


def test_continue_starts_from_the_exported_weights_with_streams_of_its_step(
        images, first_session, tmp_path):
    """lr 0: the weights stay the exported ones; the first step's loss differs from a
    start at step 0 from the same weights (--init) only by the crops and qualities drawn."""
    run, init = tmp_path / "frozen", tmp_path / "init"
    train(tiny(run, continue_from=str(first_session), lr=0.0, aux_lr=0.0), images)
    stored, out = weights_file.load_stored(first_session), weights_file.load_stored(
        run / export.FINAL)
    assert stored.keys() == out.keys()
    assert all(torch.equal(v, out[k]) for k, v in stored.items() if k.startswith("g_"))
    train(tiny(init, init=str(first_session), lr=0.0, aux_lr=0.0, steps=1), images)
    again = tmp_path / "again"
    train(tiny(again, continue_from=str(first_session), lr=0.0, aux_lr=0.0), images)
    assert first_loss(run) == first_loss(again) != first_loss(init)


def test_a_checkpoint_wins_over_continue_and_the_rewarmup_resumes_exactly(
        images, first_session, tmp_path, capsys):
    """Interrupted inside the re-warm-up and started again with the same command: the
    checkpoint is resumed exactly (same weights as an uninterrupted continue, bit for bit)."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    train(tiny(whole, continue_from=str(first_session), warmup_steps=K), images)
    train(tiny(split, continue_from=str(first_session), warmup_steps=K, stop_step=K + 1),
          images)
    capsys.readouterr()
    train(tiny(split, continue_from=str(first_session), warmup_steps=K), images)
    assert (f"has a checkpoint at step {K + 1}: resumed from it, --continue-from "
            f"{first_session} not used") in capsys.readouterr().out
    a, b = checkpoint.load(whole), checkpoint.load(split)
    assert all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())
    assert lrs(split) == lrs(whole) == pytest.approx(
        {5: LR / 4, 6: LR / 2, 7: LR * 3 / 40, 8: LR / 10})  # the re-warm-up goes on
    history = config_of(split / export.FINAL)["sessions"]
    assert [(e["start"], e["steps"]) for e in history] == [
        ("scratch", [0, K]), ("continue", [K, K + 1]), ("resume", [K + 1, 2 * K])]
    assert history[2]["from"] == str(split)


def test_weights_without_a_history_continue_with_their_totals(images, first_session,
                                                              tmp_path):
    config = {k: v for k, v in config_of(first_session).items() if k != "sessions"}
    old = tmp_path / "old.safetensors"
    weights_file.save(weights_file.load_state(first_session), old,
                      {**config, "history": "trained by hand", "images_seen": 1000,
                       "gpu_time": 500.0}, half=False)
    run = tmp_path / "run"
    train(tiny(run, continue_from=str(old)), images)
    meta = config_of(run / export.FINAL)
    assert meta["images_seen"] == 1000 + 4 * K
    assert 500 <= meta["gpu_time"] < 560
    assert [(e["start"], e["steps"], e["images"], e["gpu_time"] < 60)
            for e in meta["sessions"]] == [
        ("unrecorded", [0, K], 1000, False), ("continue", [K, 2 * K], 4 * K, True)]
    assert meta["sessions"][0]["history"] == "trained by hand"
    assert meta["sessions"][1]["fp16"] is False  # an fp32 export: no rounding at the boundary


@pytest.mark.parametrize(("change", "message"), [
    ({"steps": K}, f"is at step {K} already, this run ends at step {K}"),
    ({"stop_step": K}, f"is at step {K} already, this run ends at step {K}"),
    ({"quality_max": 6}, r"another model \(qualities=\[2, 5\] \(this run: \[2, 6\]\)\)"),
    ({"init": "x.safetensors"}, "without --init and --init-transforms"),
])
def test_continue_refuses_what_it_cannot_continue(first_session, tmp_path, change, message):
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match=message):
        train(tiny(run, data=str(tmp_path), continue_from=str(first_session), **change))
    assert not run.exists()


def test_the_command_line_refuses_another_models_weights_in_one_line(first_session, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "lsq.training", "--continue-from", str(first_session),
         "--quantizer", "scalar", "--N", "8", "--M", "48", "--quality-min", "2",
         "--quality-max", "5", "--images", str(tmp_path), "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"lsq.training: --continue-from {first_session} holds "
                                    "another model (M=24 (this run: 48))")
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_from_before_histories_resumes_with_its_totals(images, tmp_path):
    run = tmp_path / "run"
    train(tiny(run, stop_step=K), images)
    state = checkpoint.load(run)
    for key in ("sessions", "images_seen", "warmup_from", "name"):
        del state[key]
    checkpoint.save(run, state)
    train(tiny(run), images)
    meta = config_of(run / export.FINAL)
    assert (meta["steps"], meta["images_seen"], meta["name"]) == (2 * K, 2 * K * 4, "run")
    assert [(e["start"], e["steps"], e["images"]) for e in meta["sessions"]] == [
        ("unrecorded", [0, K], 4 * K), ("resume", [K, 2 * K], 4 * K)]
    whole = tmp_path / "whole"
    train(tiny(whole), images)
    assert lrs(run) == lrs(whole)
