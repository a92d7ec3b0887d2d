"""Training plumbing on CPU with a tiny model: shards, loss, checkpoint/resume, export."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from lsq.models import train as tr
from lsq.models.shards import (
    iter_shard_files,
    load_folder_images,
    load_images,
    pack_shards,
    unpack_shards,
)

TRAIN_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "train"


def tiny_model(cfg: dict) -> torch.nn.Module:
    return tr.default_builder(cfg)


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
    a = tr.CropSampler(images, 64, torch.device("cpu"), 0.5, (3, 0))
    b = tr.CropSampler(images, 64, torch.device("cpu"), 0.5, (3, 0))
    assert a.skipped == 1  # the 40-pixel-high image cannot hold a 64x64 crop
    xa, xb = a.sample(8), b.sample(8)
    assert xa.shape == (8, 3, 64, 64) and xa.dtype == torch.float32
    assert torch.equal(xa, xb) and 0.0 <= xa.min() and xa.max() <= 1.0
    state = a.get_state()
    nxt = a.sample(8)
    a.set_state(state)
    assert torch.equal(a.sample(8), nxt) and not torch.equal(nxt, xa)


def tiny_config(out: Path, **kw) -> tr.TrainConfig:
    base = dict(
        out=str(out), steps=12, N=8, M=24, batch=4, crop=64, lr=3e-3, quantizer="scalar",
        quality_min=2, quality_max=5, log_every=4, val_every=0, device="cpu",
        ckpt_moments="float32",
    )
    base.update(kw)
    return tr.TrainConfig(**base)


@pytest.fixture(scope="module")
def data(image_dirs):
    return (load_folder_images(image_dirs, "train", 5), load_folder_images(image_dirs, "val", 5),
            "test images")


def test_loss_falls(data, tmp_path):
    tr.train(tiny_config(tmp_path, steps=40, log_every=10), tiny_model, data)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == [10, 20, 30, 40]
    assert steps[-1]["loss"] < 0.7 * steps[0]["loss"]
    assert all(r["images_per_s"] > 0 and r["bpp"] > 0 for r in steps)
    val = [r for r in log if "val_images" in r]
    assert len(val) == 1 and val[0]["val_images"] == len(data[1])
    assert all(f"val_{k}_q{q}" in val[0] for k in ("bpp", "psnr", "cost") for q in (2, 3, 4, 5))
    assert val[0]["val_bpp_q5"] > val[0]["val_bpp_q2"]  # the gains give different rates


def test_resume_matches_uninterrupted_run(data, tmp_path):
    whole = tmp_path / "whole"
    tr.train(tiny_config(whole), tiny_model, data)
    split = tmp_path / "split"
    first = tr.train(tiny_config(split, stop_step=5), tiny_model, data)
    assert first["step"] == 5 and not (split / tr.EXPORT_NAME).exists()
    parts = list(split.glob("ckpt-*.bin"))
    assert parts and all(p.stat().st_size <= 16 * 2**20 for p in parts)
    second = tr.train(tiny_config(split), tiny_model, data)
    assert second["step"] == 12

    a, b = tr.load_checkpoint(whole), tr.load_checkpoint(split)
    assert a["step"] == b["step"] == 12
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert second["val"] == pytest.approx(tr.train(tiny_config(whole), tiny_model, data)["val"])


def test_checkpoint_parts_and_compact_moments(tmp_path, monkeypatch):
    monkeypatch.setattr(tr, "CKPT_PART_BYTES", 100_000)
    model = tiny_model(dataclasses.asdict(tiny_config(tmp_path)))
    main, _ = tr.split_parameters(model)
    opt = torch.optim.Adam(main)
    model(torch.rand(1, 3, 64, 64))["x_hat"].mean().backward()
    opt.step()
    state = {"step": 3, "model": model.state_dict(),
             "optimizer": tr._compact_optimizer_state(opt.state_dict(), torch.bfloat16)}
    first = tr.save_checkpoint(tmp_path, state)
    second = tr.save_checkpoint(tmp_path, state)  # same step again must not clobber
    assert len(first) > 1 and all(p.stat().st_size <= 100_000 for p in second)
    assert sorted(tmp_path.glob("ckpt-*.bin")) == sorted(second)
    back = tr.load_checkpoint(tmp_path)
    assert all(torch.equal(v, back["model"][k]) for k, v in state["model"].items())
    key = min(back["optimizer"]["state"])
    assert back["optimizer"]["state"][key]["exp_avg"].dtype == torch.bfloat16
    fresh = tiny_model(dataclasses.asdict(tiny_config(tmp_path)))
    opt2 = torch.optim.Adam(tr.split_parameters(fresh)[0])
    opt2.load_state_dict(back["optimizer"])
    restored = opt2.state_dict()["state"][key]["exp_avg_sq"]
    assert restored.dtype == torch.float32
    torch.testing.assert_close(restored, opt.state_dict()["state"][key]["exp_avg_sq"],
                               rtol=1e-2, atol=0)
    second[0].write_bytes(b"x" + second[0].read_bytes()[1:])
    with pytest.raises(ValueError, match="damaged"):
        tr.load_checkpoint(tmp_path)


def test_export_reloads_with_identical_outputs(data, tmp_path):
    tr.train(tiny_config(tmp_path, steps=6), tiny_model, data)
    ckpt = tr.load_checkpoint(tmp_path)
    trained = tiny_model(ckpt["config"])
    trained.load_state_dict(ckpt["model"])
    trained.update(force=True)
    trained.eval()
    x = torch.rand(1, 3, 64, 64)

    exact = tr.export_weights(ckpt, tmp_path / "fp32.safetensors", {"name": "t"}, tiny_model,
                              half=False)
    with safe_open(str(exact), "pt") as f:
        meta = json.loads(f.metadata()["config"])
    assert set(tr.EXPORT_META_KEYS) <= set(meta)
    assert meta["name"] == "t" and meta["steps"] == 6 and meta["N"] == 8
    assert meta["qualities"] == [2, 5] and meta["default_quality"] == 2
    fresh = tiny_model(ckpt["config"])
    fresh.load_state_dict(load_file(str(exact)))
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x, 3.5)["x_hat"], trained(x, 3.5)["x_hat"])
    assert fresh.compress(x, 3.5)["strings"] == trained.compress(x, 3.5)["strings"]

    half = tiny_model(ckpt["config"])
    sd = load_file(str(tmp_path / tr.EXPORT_NAME))  # the one train() wrote, fp16 where safe
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


def test_channel_groups_model_trains_exports_and_refuses_other_resume(data, tmp_path):
    from lsq.models.hyperprior import build_model
    from lsq.models.latent_codecs import ChannelGroupsLatentCodec

    cfg = tiny_config(tmp_path, steps=2, M=48, quantizer="leech", context="channel-groups",
                      quality_min=3, quality_max=3, batch=2)
    tr.train(cfg, tiny_model, data)
    with safe_open(str(tmp_path / tr.EXPORT_NAME), "pt") as f:
        meta = json.loads(f.metadata()["config"])
    assert meta["codec_options"] == {"context": "channel-groups"}
    net = build_model(meta["family"], meta["N"], meta["M"], qualities=meta["qualities"],
                      for_coding=True, **meta["codec_options"])
    net.load_state_dict(load_file(str(tmp_path / tr.EXPORT_NAME)))
    assert isinstance(net.latent_codec, ChannelGroupsLatentCodec)
    with pytest.raises(ValueError, match="context"):
        tr.train(dataclasses.replace(cfg, steps=3, context="none"), tiny_model, data)


def test_init_starts_from_exported_weights_and_refuses_what_does_not_fit(data, tmp_path):
    tr.train(tiny_config(tmp_path / "a", steps=2), tiny_model, data)
    weights = str(tmp_path / "a" / tr.EXPORT_NAME)
    for name, change, message in [
        ("b", {"quantizer": "leech"}, "holds a scalar model, this run trains leech"),
        ("c", {"M": 48}, "does not fit this model"),
        ("d", {"quality_max": 6}, "does not fit this model"),  # another gain table
    ]:
        with pytest.raises(tr.ConfigError, match=message):
            tr.train(tiny_config(tmp_path / name, init=weights, **change), tiny_model, data)
        assert not (tmp_path / name).exists()
    # lr 0: the weights that come out are the ones that went in
    tr.train(tiny_config(tmp_path / "e", steps=1, lr=0.0, init=weights), tiny_model, data)
    before, after = load_file(weights), load_file(str(tmp_path / "e" / tr.EXPORT_NAME))
    assert torch.equal(before["g_a.0.weight"], after["g_a.0.weight"])


def test_init_transforms_takes_another_quantizers_transforms(data, tmp_path):
    tr.train(tiny_config(tmp_path / "a", steps=2), tiny_model, data)
    weights = str(tmp_path / "a" / tr.EXPORT_NAME)
    scalar = load_file(weights)
    for quantizer, M in (("spherical-leech", 24), ("bsq", 48)):
        model = tr.default_builder(dataclasses.asdict(
            tiny_config(tmp_path, quantizer=quantizer, M=M)))
        fresh = tr.transplant(model, weights)
        state = model.state_dict()
        assert torch.equal(state["g_s.6.weight"], scalar["g_s.6.weight"].float())
        assert all(k in fresh for k in state if k.startswith("latent_codec."))
        if M == 24:  # the hyper-decoder's last layer has the first shell's extra channels
            assert "h_s.4.weight" in fresh and "g_a.6.weight" not in fresh
        else:  # another M: the layers next to the latent start fresh, the rest is taken
            assert {"g_a.6.weight", "g_s.0.weight"} <= set(fresh)
    # a run refuses it beside --init, or a missing file; otherwise it starts from those weights
    for name, change, message in [
        ("b", {"init": weights}, "not both"),
        ("c", {"init_transforms": str(tmp_path / "none.safetensors")}, "no such file"),
    ]:
        with pytest.raises(tr.ConfigError, match=message):
            tr.train(tiny_config(tmp_path / name, **{"init_transforms": weights, **change}),
                     tiny_model, data)
        assert not (tmp_path / name).exists()
    tr.train(tiny_config(tmp_path / "d", steps=1, lr=0.0, quantizer="leech",
                         init_transforms=weights), tiny_model, data)
    after = load_file(str(tmp_path / "d" / tr.EXPORT_NAME))
    assert torch.equal(scalar["g_a.0.weight"], after["g_a.0.weight"])


def test_init_transforms_refuses_weights_of_another_N(tmp_path):
    model = tr.default_builder(dataclasses.asdict(tiny_config(tmp_path)))
    other = tr.default_builder(dataclasses.asdict(tiny_config(tmp_path, N=16)))
    with pytest.raises(tr.ConfigError, match="synthesis transform does not fit"):
        tr.transplant(model, other.state_dict())


def test_command_line_parsing():
    cfg = tr.parse_args(["--quantizer", "leech", "--quality-min", "3", "--steps", "10",
                         "--out", "o", "--images", "a", "b", "--N", "64", "--no-resume",
                         "--max-minutes", "25", "--bf16", "--origin",
                         "--context", "channel-groups", "--group-transform", "full"])
    assert (cfg.quantizer, cfg.quality_min, cfg.quality_max, cfg.steps, cfg.images, cfg.N,
            cfg.M, cfg.origin) == ("leech", 3, 8, 10, ["a", "b"], 64, 192, True)
    assert cfg.resume is False and cfg.bf16 is True and cfg.max_minutes == 25.0
    assert cfg.context == "channel-groups" and tr.parse_args([]).context == "none"
    assert cfg.group_transform == "full" and tr.parse_args([]).group_transform == "separable"
    assert cfg.data is None and tr.parse_args([]).images == []


def test_click_commands_pack_and_train_project_model(image_dirs, tmp_path):
    from click.testing import CliRunner

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
        "--N", "8", "--M", "24", "--batch", "2", "--crop", "64", "--log-every", "1",
        "--device", "cpu", "--quality-min", "3", "--quality-max", "3", "--name", "tiny"])
    assert res.exit_code == 0, res.output
    with safe_open(str(out / tr.EXPORT_NAME), "pt") as f:
        meta = json.loads(f.metadata()["config"])
    assert (meta["name"], meta["family"], meta["qualities"]) == ("tiny", "scalar", [3, 3])
    assert meta["steps"] == 2 and meta["data"].startswith(f"shards {shards}")


@pytest.mark.parametrize(("change", "message"), [
    ({"quantizer": "hexagonal"}, "unknown --quantizer 'hexagonal'"),
    ({"quality_min": 0}, "--quality-min"),
    ({"quality_min": 6, "quality_max": 3}, "--quality-min"),
    ({"quantizer": "bsq"}, "bsq is fixed-rate"),
    ({"origin": True}, "--origin applies to the leech quantizer only"),
    ({"proxy": "dither"}, "unknown --proxy 'dither'"),
    ({"context": "spatial"}, "unknown --context 'spatial'"),
    ({"lrp": True}, "--lrp needs --context channel-groups"),
    ({"group_transform": "full"}, "--group-transform needs --context channel-groups"),
    ({"context": "channel-groups", "group_transform": "dense"},
     "unknown --group-transform 'dense'"),
    ({"crop": 100}, "multiple of 64"),
    ({"M": 50}, "multiple of 24"),
    ({"default_quality": 7.5}, "--default-quality"),
    ({"default_quality": 2.83}, r"multiple of 1/256 .*e.g. 2.828125"),
    ({"init": "/nonexistent/w.safetensors"}, "no such file"),
    ({"warmup_steps": -1}, "--warmup-steps"),
])
def test_bad_configurations_are_refused_before_training(tmp_path, change, message):
    cfg = tiny_config(tmp_path / "run", data=str(tmp_path), **change)
    with pytest.raises(tr.ConfigError, match=message):
        tr.train(cfg)
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


def test_training_a_compiled_context_model_with_lrp(data, tmp_path):
    tr.train(tiny_config(tmp_path / "a", steps=2, quantizer="leech", M=48, compile="aot_eager",
                         context="channel-groups", lrp=True), tiny_model, data)
    with safe_open(str(tmp_path / "a" / tr.EXPORT_NAME), "pt") as f:
        meta = json.loads(f.metadata()["config"])
        assert "latent_codec.residuals.1.5.weight" in f.keys()
    assert meta["codec_options"] == {"context": "channel-groups", "lrp": True}
    full = tiny_config(tmp_path / "c", steps=2, quantizer="scalar", M=48,
                       context="channel-groups", group_transform="full")
    tr.train(full, tiny_model, data)
    with safe_open(str(tmp_path / "c" / tr.EXPORT_NAME), "pt") as f:
        meta = json.loads(f.metadata()["config"])
        assert f.get_slice("latent_codec.transforms.1.2.weight").get_shape() == [128, 224, 3, 3]
    assert meta["codec_options"] == {"context": "channel-groups", "group_transform": "full"}
    with pytest.raises(ValueError, match="group_transform"):  # its checkpoint is not separable
        tr.train(dataclasses.replace(full, steps=3, group_transform="separable"), tiny_model,
                 data)
    with pytest.raises(tr.ConfigError, match="unknown --compile backend 'fast'"):
        tr.train(tiny_config(tmp_path / "b", compile="fast"), tiny_model, data)


def test_compiled_transforms_train_and_export_the_eager_keys(data, tmp_path):
    """--compile-transforms compiles g_a, g_s, h_a, h_s in place: the run trains and its export
    holds the same tensors under the same names as an eager run's."""
    for name, mode in (("eager", ""), ("compiled", "default")):
        tr.train(tiny_config(tmp_path / name, steps=2, compile_transforms=mode), tiny_model, data)
    exports = {}
    for name in ("eager", "compiled"):
        with safe_open(str(tmp_path / name / tr.EXPORT_NAME), "pt") as f:
            exports[name] = {k: f.get_slice(k).get_shape() for k in f.keys()}
    assert exports["compiled"] == exports["eager"]
    model = tiny_model(dataclasses.asdict(tiny_config(tmp_path / "m")))
    tr.compile_transforms(model, "default")
    assert all(m._compiled_call_impl is not None
               for m in (model.g_a, model.g_s, model.h_a, model.h_s))
    with pytest.raises(tr.ConfigError, match="unknown --compile-transforms mode 'fastest'"):
        tr.train(tiny_config(tmp_path / "b", compile_transforms="fastest"), tiny_model, data)


def test_training_on_two_processes_through_torchrun(image_dirs, tmp_path):
    """The several-GPU path (torchrun, DDP) on two CPU processes (gloo): both ranks step
    together and rank 0 writes the weights, counting both ranks' images."""
    out = tmp_path / "ddp"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "lsq.models.train", "--images", *map(str, image_dirs), "--out", str(out),
         "--quantizer", "leech", "--N", "8", "--M", "24", "--batch", "2", "--crop", "64",
         "--steps", "4", "--log-every", "2", "--val-every", "0", "--device", "cpu"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "device cpu x2" in result.stdout + result.stderr
    config = json.loads(safe_open(str(out / tr.EXPORT_NAME), "pt").metadata()["config"])
    assert config["steps"] == 4 and config["images_seen"] == 4 * 2 * 2


def poisoned_train_step(monkeypatch, poison) -> None:
    """Make training steps for which ``poison(call)`` is true end with NaN weights, as a
    diverging step does."""
    real, calls = tr.train_step, []

    def step(net, model, *args, **kwargs):
        stats = real(net, model, *args, **kwargs)
        calls.append(len(calls) + 1)
        if poison(calls[-1]):
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
            return stats * float("nan")
        return stats

    monkeypatch.setattr(tr, "train_step", step)


def test_divergence_rolls_back_to_the_last_checkpoint_with_half_the_lr(data, tmp_path,
                                                                         monkeypatch):
    poisoned_train_step(monkeypatch, lambda call: call == 7)
    result = tr.train(tiny_config(tmp_path), tiny_model, data)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r for r in log if "rollback_from" in r] == [
        {"step": 0, "rollback_from": 7, "lr_scale": 0.5}]
    lrs = [(r["step"], r["lr"]) for r in log if "loss" in r]
    assert lrs[-2:] == [(8, pytest.approx(1.5e-3)), (12, pytest.approx(1.5e-4))]
    assert result["step"] == 12 and np.isfinite(result["log"]["loss"])
    state = tr.load_checkpoint(tmp_path)
    assert state["lr_scale"] == 0.5
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert (tmp_path / tr.EXPORT_NAME).is_file()


def test_a_run_that_keeps_diverging_stops_and_keeps_its_finite_checkpoint(data, tmp_path,
                                                                           monkeypatch):
    poisoned_train_step(monkeypatch, lambda call: call % 3 == 0)
    with pytest.raises(tr.TrainingDiverged, match="after 3 rollbacks"):
        tr.train(tiny_config(tmp_path), tiny_model, data)
    state = tr.load_checkpoint(tmp_path)
    assert state["step"] == 0
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (tmp_path / tr.EXPORT_NAME).exists()


def test_export_runs_skips_a_run_it_cannot_export(data, tmp_path, monkeypatch, capsys):
    import shutil

    from lsq.models import export_runs

    runs = tmp_path / "runs"
    tr.train(tiny_config(runs / "good", stop_step=4), tiny_model, data)
    shutil.copytree(runs / "good", runs / "bad")
    part = next((runs / "bad").glob("ckpt-*.bin"))
    part.write_bytes(b"x" + part.read_bytes()[1:])
    monkeypatch.setattr(sys, "argv", ["export_runs", str(runs), str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_info:
        export_runs.main()
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    assert "bad: not exported (ValueError: checkpoint part" in out and "good: 4 steps" in out
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["good.safetensors"]
