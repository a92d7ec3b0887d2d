"""lsq.training on CPU with tiny models: data and the held-out slice, loss, exact resume,
checkpoint parts, export, warm starts, bf16, presets, the command lines and the policies."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from lsq.models.shards import (
    iter_shard_files,
    list_image_files,
    load_folder_images,
    load_images,
    pack_shards,
    unpack_shards,
)
from lsq.models.spec import PRESETS, ModelSpec
from lsq.training import (
    ConfigError,
    TrainConfig,
    TrainingDiverged,
    checkpoint,
    data,
    export,
    train,
    trainer,
)
from lsq.training import callbacks as cb
from lsq.training.cli import parse_args
from lsq.training.config import model_spec
from lsq.training.step import Optimizers
from lsq.training.warm_start import shipped_init, transplant

TRAIN_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "train"
FINAL = export.FINAL


def smooth_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A learnable image: low-frequency colour field plus a little noise."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    f = rng.uniform(1, 4, size=(3, 2))
    img = np.stack([np.sin(f[c, 0] * 6 * yy + f[c, 1] * 4 * xx) for c in range(3)], -1)
    img = 127.5 * (img + 1) + rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def image_dirs(tmp_path_factory) -> list[Path]:
    """Two folders of small JPEG/PNG images, plus three real training JPEGs if present."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    dirs = [root / "alpha", root / "beta"]
    for d in dirs:
        (d / "sub").mkdir(parents=True)
    for i in range(12):
        h, w = (int(rng.integers(80, 120)), int(rng.integers(80, 120)))
        Image.fromarray(smooth_image(rng, h, w)).save(dirs[0] / f"a{i:02d}.jpg", quality=90)
    for i in range(5):
        Image.fromarray(smooth_image(rng, 96, 100)).save(dirs[1] / "sub" / f"b{i}.png")
    real = sorted((TRAIN_DATA / "bsds500").glob("*.jpg"))[:3]
    for p in real:
        (dirs[1] / p.name).write_bytes(p.read_bytes())
    return dirs


def test_shards_round_trip(image_dirs, tmp_path):
    files = sorted(p for d in image_dirs for p in d.rglob("*") if p.is_file())
    total = sum(p.stat().st_size for p in files)
    max_bytes = total // 3 + 4096
    shards = pack_shards(image_dirs, tmp_path / "shards", max_bytes=max_bytes, val_every=5)
    assert len(shards) >= 3
    assert all(p.stat().st_size <= max_bytes for p in shards)
    assert sum(p.stat().st_size for p in shards) < total + 4096 * len(shards)  # bytes, not pixels

    names = [name for name, _ in iter_shard_files(tmp_path / "shards")]
    assert names == sorted(names) and len(names) == len(files)
    for name, blob in iter_shard_files(tmp_path / "shards"):
        folder, rel = name.split("/", 1)
        assert blob == (image_dirs[0].parent / folder / rel).read_bytes()

    assert unpack_shards(tmp_path / "shards", tmp_path / "back") == len(files)
    assert (tmp_path / "back" / "beta" / "sub" / "b0.png").read_bytes() == (
        image_dirs[1] / "sub" / "b0.png").read_bytes()

    train, val = load_images(tmp_path / "shards"), load_images(tmp_path / "shards", "val")
    assert len(val) == (len(files) + 4) // 5 and len(train) + len(val) == len(files)
    assert all(a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3 for a in train + val)
    # The same split straight from the folders, pixel for pixel.
    direct = load_folder_images(image_dirs, "val", val_every=5)
    assert all(np.array_equal(a, b) for a, b in zip(direct, val, strict=True))
    png = np.asarray(Image.open(image_dirs[1] / "sub" / "b0.png").convert("RGB"))
    assert any(np.array_equal(png, a) for a in train + val)

    with pytest.raises(ValueError, match="does not fit"):
        pack_shards(image_dirs, tmp_path / "small", max_bytes=1000)


def test_crop_sampler_shapes_and_determinism():
    rng = np.random.default_rng(1)
    images = [smooth_image(rng, 90, 140), smooth_image(rng, 70, 70), smooth_image(rng, 40, 200)]
    a = data.CropSampler(images, 64, torch.device("cpu"), 0.5, (3, 0))
    b = data.CropSampler(images, 64, torch.device("cpu"), 0.5, (3, 0))
    assert a.skipped == 1  # the 40-pixel-high image cannot hold a 64x64 crop
    xa, xb = a.sample(8), b.sample(8)
    assert xa.shape == (8, 3, 64, 64) and xa.dtype == torch.float32
    assert torch.equal(xa, xb) and 0.0 <= xa.min() and xa.max() <= 1.0
    state = a.get_state()
    nxt = a.sample(8)
    a.set_state(state)
    assert torch.equal(a.sample(8), nxt) and not torch.equal(nxt, xa)


def test_heldout_slice_comes_from_the_clean_folders_only_and_is_never_trained_on(image_dirs):
    named, _ = data.load_named(None, [str(d) for d in image_dirs])
    train_imgs, val_imgs, held = data.split(named, ["alpha"], 5)
    assert held == {"alpha/a00.jpg", "alpha/a05.jpg", "alpha/a10.jpg"}
    assert len(train_imgs) + len(val_imgs) == len(named) and len(val_imgs) == 3
    trained = [a for n, a in named if n not in held]
    assert all(not np.array_equal(v, t) for v in val_imgs for t in trained if v.shape == t.shape)
    tiles = data.tiles([np.zeros((130, 200, 3), np.uint8)], 64, torch.device("cpu"))
    assert tiles.shape == (6, 3, 64, 64) and tiles.dtype == torch.uint8  # 2 x 3, centred


def test_the_real_heldout_slice_has_100_crops_of_512_none_of_them_trained_on():
    folders = [TRAIN_DATA / f for f in ("bsds500", "imagenet-sample", "wallpapers", "urban100")]
    if not all(f.is_dir() for f in folders):
        pytest.skip(f"training photos not found in {TRAIN_DATA}")
    files = list_image_files(folders)
    defaults = TrainConfig()
    held = data.heldout_names([n for n, _ in files], defaults.heldout_folders,
                              defaults.heldout_every)
    assert held and all(n.split("/")[0] in ("wallpapers", "urban100") for n in held)
    paths = dict(files)
    images = [np.asarray(Image.open(paths[n]).convert("RGB")) for n in sorted(held)]
    assert len(data.tiles(images, 512, torch.device("cpu"))) >= 100
    assert len(files) - len(held) > 1600  # all four folders are trained on, less the slice


def tiny_config(out: Path, **kw) -> TrainConfig:
    base = dict(
        out=str(out), steps=12, N=8, M=24, batch=4, crop=64, val_crop=64, lr=3e-3,
        lr_batch=4, quantizer="scalar", quality_min=2, quality_max=5, log_every=4, val_every=0,
        device="cpu", ckpt_moments="float32", heldout_folders=["alpha"], heldout_every=5,
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def images(image_dirs):
    return data.load_data(None, [str(d) for d in image_dirs], ["alpha"], 5)


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_loss_falls(images, tmp_path):
    train(tiny_config(tmp_path, steps=40, log_every=10), images)
    log = read_log(tmp_path)
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == [10, 20, 30, 40]
    assert steps[-1]["loss"] < 0.7 * steps[0]["loss"]
    assert all(r["images_per_s"] > 0 and r["bpp"] > 0 for r in steps)
    val = [r for r in log if "val_images" in r]
    assert len(val) == 1 and val[0]["val_images"] == 3  # one 64 px tile per held-out image
    assert all(f"val_{k}_q{q}" in val[0] for k in ("bpp", "psnr", "cost") for q in (2, 3, 4, 5))
    assert val[0]["val_bpp_q5"] > val[0]["val_bpp_q2"]  # the gains give different rates


def test_resume_matches_uninterrupted_run(images, tmp_path):
    """Interrupted at step 5, inside the warm-up: the resumed run ends with the same weights
    and optimizer moments, bit for bit."""
    whole = tmp_path / "whole"
    train(tiny_config(whole, warmup_steps=8), images)
    split = tmp_path / "split"
    first = train(tiny_config(split, stop_step=5, warmup_steps=8), images)
    assert first["step"] == 5 and not (split / FINAL).exists()
    parts = list(split.glob("ckpt-*.bin"))
    assert parts and all(p.stat().st_size <= 16 * 2**20 for p in parts)
    second = train(tiny_config(split, warmup_steps=8), images)
    assert second["step"] == 12

    a, b = checkpoint.load(whole), checkpoint.load(split)
    assert a["step"] == b["step"] == 12
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for k, v in a["optimizer"]["state"].items():
        assert torch.equal(v["exp_avg_sq"], b["optimizer"]["state"][k]["exp_avg_sq"]), k
    assert second["val"] == pytest.approx(train(tiny_config(whole, warmup_steps=8), images)["val"])


def test_checkpoint_parts_stay_under_the_limit_reassemble_and_compact_moments(tmp_path):
    model = model_spec(tiny_config(tmp_path)).build()
    opts = Optimizers(model, 1e-3, 1e-3)
    model(torch.rand(1, 3, 64, 64))["x_hat"].mean().backward()
    opts.main.step()
    state = {"step": 3, "model": model.state_dict(), **opts.state_dict(torch.bfloat16)}
    first = checkpoint.save(tmp_path, state, part_bytes=100_000)
    second = checkpoint.save(tmp_path, state, part_bytes=100_000)  # same step must not clobber
    assert len(first) > 1 and all(p.stat().st_size <= 100_000 for p in second)
    assert sorted(tmp_path.glob("ckpt-*.bin")) == sorted(second)
    manifest = json.loads((tmp_path / checkpoint.MANIFEST).read_text())
    assert sum(p["bytes"] for p in manifest["parts"]) == manifest["total_bytes"]
    back = checkpoint.load(tmp_path)
    assert all(torch.equal(v, back["model"][k]) for k, v in state["model"].items())
    key = min(back["optimizer"]["state"])
    assert back["optimizer"]["state"][key]["exp_avg"].dtype == torch.bfloat16
    fresh = Optimizers(model_spec(tiny_config(tmp_path)).build(), 1e-3, 1e-3)
    fresh.load_state_dict(back)
    restored = fresh.main.state_dict()["state"][key]["exp_avg_sq"]
    assert restored.dtype == torch.float32
    torch.testing.assert_close(restored, opts.main.state_dict()["state"][key]["exp_avg_sq"],
                               rtol=1e-2, atol=0)
    second[0].write_bytes(b"x" + second[0].read_bytes()[1:])
    with pytest.raises(ValueError, match="damaged"):
        checkpoint.load(tmp_path)


def test_export_holds_the_spec_and_reloads_with_identical_outputs(images, tmp_path):
    train(tiny_config(tmp_path, steps=6), images)
    ckpt = checkpoint.load(tmp_path)
    spec = ModelSpec.from_dict(ckpt["spec"])
    trained = spec.build()
    trained.load_state_dict(ckpt["model"])
    trained.update(force=True)
    trained.eval()
    x = torch.rand(1, 3, 64, 64)

    exact = export.export_weights(ckpt, tmp_path / "fp32.safetensors", {"name": "t"}, half=False)
    with safe_open(str(exact), "pt") as f:
        meta = json.loads(f.metadata()["config"])
    assert set(export.META_KEYS) <= set(meta)
    assert meta["name"] == "t" and meta["steps"] == 6 and meta["N"] == 8
    assert meta["qualities"] == [2, 5] and meta["default_quality"] == 2.75
    assert ModelSpec.from_dict(meta["spec"]) == spec == ModelSpec.from_weights_config(meta)
    fresh = ModelSpec.from_dict(meta["spec"]).build()
    fresh.load_state_dict(load_file(str(exact)))
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x, 3.5)["x_hat"], trained(x, 3.5)["x_hat"])
    coder = ModelSpec.from_dict(meta["spec"]).build(for_coding=True)
    coder.load_state_dict(load_file(str(exact)))
    assert coder.compress(x, 3.5)["strings"] == trained.compress(x, 3.5)["strings"]

    half = spec.build()
    sd = load_file(str(tmp_path / FINAL))  # the one train() wrote, fp16 where safe
    assert sd["g_s.0.weight"].dtype == torch.float16
    assert torch.equal(sd["entropy_bottleneck._quantized_cdf"],
                       trained.state_dict()["entropy_bottleneck._quantized_cdf"])
    half.load_state_dict(sd)
    half.eval()
    enc = half.compress(x, 2)
    dec = half.decompress(enc["strings"], enc["shape"], 2)["x_hat"]
    with torch.no_grad():
        torch.testing.assert_close(dec, half(x, 2.0)["x_hat"].clamp(0, 1), atol=0.05, rtol=0)
        torch.testing.assert_close(half(x, 2.0)["x_hat"], trained(x, 2.0)["x_hat"], atol=0.02,
                                   rtol=0)


def test_a_model_trained_under_bf16_still_codes_exactly(images, tmp_path):
    """bf16 autocast covers the transforms only; the exported model's streams decode to the
    encoder's own latents bit for bit, and the same image gives the same bytes again."""
    from lsq.codec.entropy_coding import Encoder
    from lsq.models import latent_coding

    train(tiny_config(tmp_path, steps=4, bf16=True, quantizer="leech", M=48), images)
    with safe_open(str(tmp_path / FINAL), "pt") as f:
        meta = json.loads(f.metadata()["config"])
    model = ModelSpec.from_dict(meta["spec"]).build(for_coding=True).eval()
    model.load_state_dict(load_file(str(tmp_path / FINAL)))
    x = torch.nn.functional.avg_pool2d(torch.rand(1, 3, 64, 128), 5, 1, 2)
    q = 3.5
    with torch.no_grad():
        coded = model.compress(x, q)
        decoded = model.decompress_latents(coded["strings"], coded["shape"], q)[0]
        y = model.g_a(x) * model.gains.coding(q).float()
        _, z_hat = latent_coding.encode_z(model.entropy_bottleneck, model.h_a(y)[0])
        params = latent_coding.integer_hyper_decode(model.h_s, z_hat[None])[0]
        encoder_side = model.latent_codec.code(params, enc=Encoder(), y=y[0].double())
    assert torch.equal(decoded, encoder_side * model.gains.coding(q, inverse=True))
    assert model.compress(x, q)["strings"] == coded["strings"]
    assert all(len(s[0]) > 0 for s in coded["strings"])


def test_bf16_autocast_leaves_the_rate_in_fp32(tmp_path):
    from lsq.training.throughput import prepare

    model = prepare(model_spec(tiny_config(tmp_path)).build(), torch.device("cpu"), bf16=True)
    out = model(torch.rand(2, 3, 64, 64), torch.tensor([2.0, 4.0]))
    assert out["x_hat"].dtype == torch.float32
    assert all(lik.dtype == torch.float32 for lik in out["likelihoods"].values())
    assert model.g_a(torch.rand(1, 3, 64, 64)).dtype == torch.float32
    assert set(model.state_dict()) == set(model_spec(tiny_config(tmp_path)).build().state_dict())


@pytest.mark.parametrize("name", sorted({spec: name for name, spec in
                                          reversed(list(PRESETS.items()))}.values()))
def test_every_preset_trains_one_step(images, tmp_path, name):
    result = train(TrainConfig(preset=name, out=str(tmp_path), steps=2, stop_step=1, batch=1,
                               crop=64, val_crop=64, device="cpu", heldout_folders=["alpha"],
                               heldout_every=5), images)
    assert result["step"] == 1 and np.isfinite(result["log"]["loss"])
    assert checkpoint.load(tmp_path)["spec"] == PRESETS[name].to_dict()


def test_channel_groups_model_trains_exports_and_refuses_other_resume(images, tmp_path):
    from lsq.models.latent_codecs import ChannelGroupsLatentCodec

    cfg = tiny_config(tmp_path, steps=2, M=48, quantizer="leech", context="channel-groups",
                      quality_min=3, quality_max=3, batch=2)
    train(cfg, images)
    with safe_open(str(tmp_path / FINAL), "pt") as f:
        meta = json.loads(f.metadata()["config"])
    assert meta["codec_options"] == {"context": "channel-groups"}
    net = ModelSpec.from_weights_config(meta).build(for_coding=True)
    net.load_state_dict(load_file(str(tmp_path / FINAL)))
    assert isinstance(net.latent_codec, ChannelGroupsLatentCodec)
    with pytest.raises(ConfigError, match="another model.*context"):
        train(dataclasses.replace(cfg, steps=3, context="none"), images)


def test_init_starts_from_exported_weights_and_refuses_what_does_not_fit(images, tmp_path):
    train(tiny_config(tmp_path / "a", steps=2), images)
    weights = str(tmp_path / "a" / FINAL)
    for name, change, message in [
        ("b", {"quantizer": "leech"}, "holds a scalar model, this run trains leech"),
        ("c", {"M": 48}, "does not fit this model"),
        ("d", {"quality_max": 6}, "does not fit this model"),  # another gain table
    ]:
        with pytest.raises(ConfigError, match=message):
            train(tiny_config(tmp_path / name, init=weights, **change), images)
        assert not (tmp_path / name).exists()
    # lr 0: the weights that come out are the ones that went in
    train(tiny_config(tmp_path / "e", steps=1, lr=0.0, init=weights), images)
    before, after = load_file(weights), load_file(str(tmp_path / "e" / FINAL))
    assert torch.equal(before["g_a.0.weight"], after["g_a.0.weight"])


def test_init_auto_finds_the_shipped_weights_or_the_version_without_the_context(tmp_path):
    from lsq.models import weights_file

    def ship(name: str, spec: ModelSpec) -> None:
        config = {"name": name, "default_quality": 2.5, **spec.weights_config()}
        weights_file.save({}, tmp_path / f"{name}.safetensors", config)

    plain = ModelSpec("leech", N=8, M=48)
    full = {"group_transform": "full"}
    cgf = ModelSpec("leech", N=8, M=48, context="channel-groups", codec_options=full)
    ship("plain", plain)
    ship("cgf", cgf)
    ship("other", ModelSpec("scalar", N=8, M=48))
    lrp = ModelSpec("leech", N=8, M=48, context="channel-groups",
                    codec_options={**full, "lrp": True})
    assert shipped_init(lrp, "nope", tmp_path).name == "cgf.safetensors"
    assert shipped_init(cgf, "cgf", tmp_path).name == "cgf.safetensors"
    assert shipped_init(ModelSpec("leech", N=8, M=48, context="channel-groups"), "x",
                        tmp_path).name == "plain.safetensors"
    assert shipped_init(ModelSpec("leech", N=8, M=96), "plain", tmp_path) is None


def test_init_transforms_takes_another_quantizers_transforms(images, tmp_path):
    train(tiny_config(tmp_path / "a", steps=2), images)
    weights = str(tmp_path / "a" / FINAL)
    scalar = load_file(weights)
    for quantizer, M in (("spherical-leech", 24), ("bsq", 48)):
        model = model_spec(tiny_config(tmp_path, quantizer=quantizer, M=M, quality_min=3,
                                       quality_max=3)).build()
        fresh = transplant(model, weights)
        state = model.state_dict()
        assert torch.equal(state["g_s.6.weight"], scalar["g_s.6.weight"].float())
        assert all(k in fresh for k in state if k.startswith("latent_codec."))
        if M == 24:  # the hyper-decoder's last layer has the first shell's extra channels
            assert "h_s.4.weight" in fresh and "g_a.6.weight" not in fresh
        else:  # another M: the layers next to the latent start fresh, the rest is taken
            assert {"g_a.6.weight", "g_s.0.weight"} <= set(fresh)
    for name, change, message in [
        ("b", {"init": weights}, "not both"),
        ("c", {"init_transforms": str(tmp_path / "none.safetensors")}, "no such file"),
    ]:
        with pytest.raises(ConfigError, match=message):
            train(tiny_config(tmp_path / name, **{"init_transforms": weights, **change}), images)
        assert not (tmp_path / name).exists()
    train(tiny_config(tmp_path / "d", steps=1, lr=0.0, quantizer="leech",
                      init_transforms=weights), images)
    after = load_file(str(tmp_path / "d" / FINAL))
    assert torch.equal(scalar["g_a.0.weight"], after["g_a.0.weight"])


def test_init_transforms_refuses_weights_of_another_N(tmp_path):
    model = model_spec(tiny_config(tmp_path)).build()
    other = model_spec(tiny_config(tmp_path, N=16)).build()
    with pytest.raises(ConfigError, match="synthesis transform does not fit"):
        transplant(model, other.state_dict())


def test_command_line_parsing_and_presets_with_overrides():
    cfg = parse_args(["--quantizer", "leech", "--quality-min", "3", "--steps", "10",
                      "--out", "o", "--images", "a", "b", "--N", "64", "--no-resume",
                      "--max-minutes", "25", "--bf16", "--origin",
                      "--context", "channel-groups", "--group-transform", "full"])
    assert (cfg.quantizer, cfg.quality_min, cfg.steps, cfg.images, cfg.N) == (
        "leech", 3, 10, ["a", "b"], 64)
    assert cfg.resume is False and cfg.bf16 is True and cfg.max_minutes == 25.0
    assert model_spec(cfg) == ModelSpec(
        "leech", 64, 192, (3, 8), context="channel-groups",
        codec_options={"group_transform": "full", "mean_shift": False})
    assert cfg.data is None and parse_args([]).images == []
    assert parse_args([]).heldout_folders == ["wallpapers", "urban100"]
    assert model_spec(parse_args([])) == ModelSpec("scalar")
    over = model_spec(parse_args(["--preset", "scalar-cgf", "--M", "312",
                                  "--group-transform", "separable"]))
    assert over == ModelSpec("scalar", M=312, context="channel-groups")
    assert model_spec(parse_args(["--preset", "leech-cgf"])) == PRESETS["leech-cgf"]


def test_lr_scales_with_the_batch_and_warms_up(images, tmp_path):
    assert cb.batch_lr_factor(128, 16, "linear") == 8.0
    assert cb.batch_lr_factor(64, 16, "sqrt") == 2.0 and cb.batch_lr_factor(64, 16, "none") == 1
    train(tiny_config(tmp_path, steps=4, lr=1e-3, lr_batch=1, warmup_steps=2, log_every=1,
                      lr_drop_at=1.0), images)
    lrs = [r["lr"] for r in read_log(tmp_path) if "lr" in r]
    assert lrs == pytest.approx([1e-3, 2e-3, 2e-3, 2e-3])  # batch 4 = sqrt(4) x 1; half, all


def test_a_stop_time_in_the_past_stops_after_one_step_with_a_checkpoint(images, tmp_path):
    result = train(tiny_config(tmp_path, stop_time=time.time() - 1), images)
    assert result["step"] == 1 and checkpoint.load(tmp_path)["step"] == 1
    assert not (tmp_path / FINAL).exists()


def test_click_commands_pack_and_train_project_model(image_dirs, tmp_path):
    from click.testing import CliRunner

    from lsq.cli.main import main as lsq_main
    from lsq.cli.train import pack_shards as pack_cmd
    from lsq.cli.train import train as train_cmd

    runner = CliRunner()
    shards = tmp_path / "shards"
    res = runner.invoke(pack_cmd, [*map(str, image_dirs), "-o", str(shards)])
    assert res.exit_code == 0, res.output
    assert "shard-0000.lsqshard" in res.output
    out = tmp_path / "run"
    res = runner.invoke(train_cmd, [
        "--quantizer", "scalar", "--data", str(shards), "--out", str(out), "--steps", "2",
        "--N", "8", "--M", "24", "--batch", "2", "--crop", "64", "--val-crop", "64",
        "--log-every", "1", "--device", "cpu", "--quality-min", "3", "--quality-max", "3",
        "--name", "tiny", "--heldout-folders", "alpha"])
    assert res.exit_code == 0, res.output
    with safe_open(str(out / FINAL), "pt") as f:
        meta = json.loads(f.metadata()["config"])
    assert (meta["name"], meta["family"], meta["qualities"]) == ("tiny", "scalar", [3, 3])
    assert meta["steps"] == 2 and meta["data"].startswith(f"shards {shards}")
    images = sum(1 for d in image_dirs for p in d.rglob("*") if p.is_file())
    assert f"{images - 4} train, 4 held out (1 in 3 of alpha)" in meta["data"]
    res = runner.invoke(lsq_main, ["train", "--help"])
    assert res.exit_code == 0 and "--preset" in res.output and "--init-transforms" in res.output
    res = runner.invoke(lsq_main, ["train", "--preset", "nope", "--images", str(image_dirs[0]),
                                   "--out", str(tmp_path / "x")])
    assert res.exit_code == 1 and "preset: unknown 'nope'" in res.output
    assert res.output.count("\n") == 1 and not (tmp_path / "x").exists()


def test_python_m_lsq_training_gives_one_line_errors(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "lsq.training", "--images", str(tmp_path / "none"), "--out",
         str(tmp_path / "run"), "--crop", "100"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("lsq.training: ") and "multiples of 64" in result.stderr
    assert not (tmp_path / "run").exists()
    result = subprocess.run(
        [sys.executable, "-m", "lsq.training", "--images", str(tmp_path / "none"), "--out",
         str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "not a folder" in result.stderr
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize(("change", "message"), [
    ({"quantizer": "hexagonal"}, "hexagonal"),
    ({"quality_min": 0, "quality_max": 0}, "qualit"),
    ({"quality_min": 6, "quality_max": 3}, "qualit"),
    ({"quantizer": "bsq"}, "bsq is fixed-rate"),
    ({"proxy": "gumbel"}, "gumbel"),
    ({"quantizer": "spherical-leech", "proxy": "dither"}, "spherical-leech takes no 'dither'"),
    ({"context": "spatial"}, "spatial"),
    ({"context": "channel-groups", "group_transform": "dense"}, "dense"),
    ({"preset": "nope"}, "preset: unknown 'nope'"),
    ({"crop": 100}, "multiples of 64"),
    ({"val_crop": 500}, "multiples of 64"),
    ({"M": 50}, "multiple of 24"),
    ({"default_quality": 7.5}, "--default-quality"),
    ({"default_quality": 2.83}, r"multiple of 1/256 .*e.g. 2.828125"),
    ({"init": "/nonexistent/w.safetensors"}, "no such file"),
    ({"warmup_steps": -1}, "--warmup-steps"),
    ({"lr_scaling": "cubic"}, "unknown --lr-scaling 'cubic'"),
    ({"compile": "fast"}, "unknown --compile backend 'fast'"),
    ({"compile_transforms": "fastest"}, "unknown --compile-transforms mode 'fastest'"),
])
def test_bad_configurations_are_refused_before_training(tmp_path, change, message):
    cfg = tiny_config(tmp_path / "run", data=str(tmp_path), **change)
    with pytest.raises(ConfigError, match=message):
        train(cfg)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("quantizer", ["scalar", "leech", "spherical-leech", "leech-hybrid"])
def test_compiled_rate_matches_eager(quantizer: str) -> None:
    """compile_rate changes how the training rate is computed, not what it is."""
    from lsq.codec.leech import nearest_shell
    from lsq.models.hyperprior import build_model
    from lsq.models.latent_codecs.base import LatentCodec

    torch.manual_seed(2)
    x, q = torch.rand(2, 3, 64, 64), torch.tensor([1.5, 6.25])
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = build_model(quantizer, N=8, M=48, context="channel-groups").train()
        if compiled:
            model.latent_codec.compile_rate("aot_eager")
        inner = [m for m in model.latent_codec.modules()  # the codecs that own rate functions
                 if isinstance(m, LatentCodec) and m.rate_functions]
        parts = 2 if quantizer == "leech-hybrid" else 1  # a hybrid's rates are its two parts'
        assert len(inner) == parts * len(model.latent_codec.codecs)
        assert all(name in vars(c) for c in inner for name in c.rate_functions) == compiled
        if quantizer == "spherical-leech":  # its first-shell search compiles too
            assert all((c.quantizer.nearest_shell is not nearest_shell) == compiled for c in inner)
        torch.manual_seed(1)
        out = model(x, q)
        bits = sum(-torch.log2(lik).sum() for lik in out["likelihoods"].values())
        bits.backward()
        results.append((bits.detach(), model.g_a[0].weight.grad))
    assert torch.allclose(results[0][0], results[1][0], rtol=1e-5)
    grads = results[0][1], results[1][1]  # float32 sums in another order: relative to the largest
    assert torch.allclose(*grads, rtol=1e-4, atol=1e-6 * grads[0].abs().max().item())


def test_inductor_rate_takes_groups_of_different_sizes() -> None:
    """Groups of 24, 24, 48 and 96 channels hand the compiled Leech prior views of different
    strides; inductor's backward asserted on them in training before they were made dense."""
    from lsq.models.hyperprior import build_model

    torch.manual_seed(0)
    model = build_model("leech", N=8, M=192, context="channel-groups").train()
    model.latent_codec.compile_rate("inductor")
    out = model(torch.rand(2, 3, 64, 64), torch.tensor([1.5, 6.25]))
    sum(-torch.log2(lik).sum() for lik in out["likelihoods"].values()).backward()
    assert torch.isfinite(model.g_a[0].weight.grad).all()


def test_training_a_compiled_context_model_with_lrp(images, tmp_path):
    train(tiny_config(tmp_path / "a", steps=2, quantizer="leech", M=48, compile="aot_eager",
                      context="channel-groups", lrp=True), images)
    with safe_open(str(tmp_path / "a" / FINAL), "pt") as f:
        meta = json.loads(f.metadata()["config"])
        assert "latent_codec.residuals.1.5.weight" in f.keys()
    assert meta["codec_options"] == {"context": "channel-groups", "lrp": True}
    full = tiny_config(tmp_path / "c", steps=2, quantizer="scalar", M=48,
                       context="channel-groups", group_transform="full")
    train(full, images)
    with safe_open(str(tmp_path / "c" / FINAL), "pt") as f:
        meta = json.loads(f.metadata()["config"])
        assert f.get_slice("latent_codec.transforms.1.2.weight").get_shape() == [128, 224, 3, 3]
    assert meta["codec_options"] == {"context": "channel-groups", "group_transform": "full"}
    with pytest.raises(ConfigError, match="codec_options"):  # its checkpoint is not separable
        train(dataclasses.replace(full, steps=3, group_transform="separable"), images)


def test_compiled_transforms_train_and_export_the_eager_keys(images, tmp_path):
    """--compile-transforms compiles g_a, g_s, h_a, h_s in place: the run trains and its export
    holds the same tensors under the same names as an eager run's."""
    from lsq.training.throughput import compile_transforms

    for name, mode in (("eager", ""), ("compiled", "default")):
        train(tiny_config(tmp_path / name, steps=2, compile_transforms=mode), images)
    exports = {}
    for name in ("eager", "compiled"):
        with safe_open(str(tmp_path / name / FINAL), "pt") as f:
            exports[name] = {k: f.get_slice(k).get_shape() for k in f.keys()}
    assert exports["compiled"] == exports["eager"]
    model = model_spec(tiny_config(tmp_path / "m")).build()
    compile_transforms(model, "default")
    assert all(m._compiled_call_impl is not None
               for m in (model.g_a, model.g_s, model.h_a, model.h_s))


def test_training_on_two_processes_through_torchrun(image_dirs, tmp_path):
    """The several-GPU path (torchrun, DDP) on two CPU processes (gloo): both ranks step
    together and rank 0 writes the weights, counting both ranks' images."""
    out = tmp_path / "ddp"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "lsq.training", "--images", *map(str, image_dirs), "--out", str(out),
         "--heldout-folders", "alpha", "--val-crop", "64",
         "--quantizer", "leech", "--N", "8", "--M", "24", "--batch", "2", "--crop", "64",
         "--steps", "4", "--log-every", "2", "--val-every", "0", "--device", "cpu"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "device cpu x2" in result.stdout + result.stderr
    config = json.loads(safe_open(str(out / FINAL), "pt").metadata()["config"])
    assert config["steps"] == 4 and config["images_seen"] == 4 * 2 * 2


def poisoned_train_step(monkeypatch, poison) -> None:
    """Make training steps for which ``poison(call)`` is true end with NaN weights, as a
    diverging step does."""
    real, calls = trainer.train_step, []

    def step(net, model, *args, **kwargs):
        stats = real(net, model, *args, **kwargs)
        calls.append(len(calls) + 1)
        if poison(calls[-1]):
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
            return stats * float("nan")
        return stats

    monkeypatch.setattr(trainer, "train_step", step)


def test_divergence_rolls_back_to_the_last_checkpoint_with_half_the_lr(images, tmp_path,
                                                                         monkeypatch):
    poisoned_train_step(monkeypatch, lambda call: call == 7)
    result = train(tiny_config(tmp_path), images)
    log = read_log(tmp_path)
    assert [r for r in log if "rollback_from" in r] == [
        {"step": 0, "rollback_from": 7, "lr_scale": 0.5}]
    lrs = [(r["step"], r["lr"]) for r in log if "loss" in r]
    assert lrs[-2:] == [(8, pytest.approx(1.5e-3)), (12, pytest.approx(1.5e-4))]
    assert result["step"] == 12 and np.isfinite(result["log"]["loss"])
    state = checkpoint.load(tmp_path)
    assert state["lr_scale"] == 0.5
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert (tmp_path / FINAL).is_file()


@pytest.mark.parametrize(("losses", "flagged"), [
    ([2.0, 2.2, 1.9, 2.1, 25.0], 4),          # a finite spike
    ([2.0, 2.2, float("nan")], 2),            # a non-finite loss
    ([400.0, 90.0, 30.0, 9.0, 3.0, 2.0], None),  # early training falls: never a spike
    ([2.0, 2.0, 19.0, 2.0], None),            # under ten times the running mean
])
def test_divergence_is_a_non_finite_or_spiking_loss(losses, flagged):
    rollback = cb.DivergenceRollback()
    seen = []
    for i, loss in enumerate(losses):
        rollback.on_step_end(None, torch.tensor([loss, 1.0, 0.01, 20.0, 5.0]))
        seen.append(rollback.request(None))
        if seen[-1]:
            assert i == flagged
            break
    assert seen.count("rollback") == (flagged is not None)


def test_logged_images_per_s_leaves_out_pauses_anywhere_in_the_interval(monkeypatch):
    """Four steps of 1 s each with a 10-s pause after the first: 4 crops per step make 4
    images/s, wherever the pause falls."""
    clock = [0.0]
    monkeypatch.setattr(cb.time, "monotonic", lambda: clock[0])
    logged = []
    t = type("T", (), {"step": 0, "end": 100, "crops_per_step": 4, "is_main": True, "lr": 1e-4,
                       "elapsed": lambda self: clock[0], "log": lambda self, r: logged.append(r)})()
    logger = cb.Logger(every=4)
    logger.on_start(t)
    for step in range(1, 5):
        clock[0] += 1.0
        t.step = step
        if step == 1:
            clock[0] += 10.0
            logger.on_pause(t, 10.0)
        logger.on_step_end(t, torch.ones(len(cb.Logger.KEYS)))
    assert len(logged) == 1 and logged[0]["images_per_s"] == pytest.approx(4.0)


def test_a_finite_loss_spike_rolls_back_with_half_the_lr(images, tmp_path, monkeypatch):
    real, calls = trainer.train_step, []

    def step(*args, **kwargs):
        calls.append(len(calls) + 1)
        stats = real(*args, **kwargs)
        return stats * 1000 if calls[-1] == 7 else stats

    monkeypatch.setattr(trainer, "train_step", step)
    result = train(tiny_config(tmp_path), images)
    assert [r for r in read_log(tmp_path) if "rollback_from" in r] == [
        {"step": 0, "rollback_from": 7, "lr_scale": 0.5}]
    assert result["step"] == 12 and checkpoint.load(tmp_path)["lr_scale"] == 0.5


def test_the_best_validation_is_exported_and_a_resume_keeps_it(images, tmp_path, monkeypatch):
    scores = iter([-1.0, -3.0, -2.0, -2.5])  # the second validation is the best
    real = cb.Validation._run

    def scored(self, t):
        real(self, t)
        if self.last and t.step < t.end:
            score = next(scores)
            self.last.update({k: math.exp(score) for k in self.last if "val_cost_q" in k})

    monkeypatch.setattr(cb.Validation, "_run", scored)
    train(tiny_config(tmp_path, val_every=2, stop_step=6), images)
    best = json.loads(safe_open(str(tmp_path / export.BEST), "pt").metadata()["config"])
    assert (best["steps"], best["heldout_score"]) == (4, pytest.approx(-3.0))
    train(tiny_config(tmp_path, val_every=2), images)  # resumed: -2.0, -2.5 are no better
    best = json.loads(safe_open(str(tmp_path / export.BEST), "pt").metadata()["config"])
    assert (best["steps"], best["heldout_score"]) == (4, pytest.approx(-3.0))
    scores = iter([-1.0, -3.0])  # the same run to step 4: its weights are the best file's
    train(tiny_config(tmp_path / "to4", val_every=2, stop_step=4), images)
    to4 = export.export_weights(checkpoint.load(tmp_path / "to4"), tmp_path / "to4.safetensors")
    a, b = load_file(str(to4)), load_file(str(tmp_path / export.BEST))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_that_keeps_diverging_stops_and_keeps_its_finite_checkpoint(images, tmp_path,
                                                                           monkeypatch):
    poisoned_train_step(monkeypatch, lambda call: call % 3 == 0)
    with pytest.raises(TrainingDiverged, match="after 3 rollbacks"):
        train(tiny_config(tmp_path), images)
    state = checkpoint.load(tmp_path)
    assert state["step"] == 0
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (tmp_path / FINAL).exists()


def test_export_runs_skips_a_run_it_cannot_export(images, tmp_path, capsys):
    runs = tmp_path / "runs"
    train(tiny_config(runs / "good", stop_step=4), images)
    shutil.copytree(runs / "good", runs / "bad")
    part = next((runs / "bad").glob("ckpt-*.bin"))
    part.write_bytes(b"x" + part.read_bytes()[1:])
    with pytest.raises(SystemExit) as exit_info:
        export.main([str(runs), str(tmp_path / "out")])
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    assert "bad: not exported (ValueError: checkpoint part" in out and "good: 4 steps" in out
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["good.safetensors"]
