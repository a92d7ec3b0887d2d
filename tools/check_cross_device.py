"""Encode on one device, decode on every other: the decoded latents must agree bit for bit.

    python -m lsq.tools.check_cross_device [--dataset ../shared/data/kodak] [--images 4]
                                          [--models all | NAME,NAME] [--untrained]

Configurations: ``cpu`` (torch's default thread count), ``cpu-1`` (one thread) and ``cuda``
when a GPU is present. Each image is encoded on every device, and each stream is decoded
under every configuration. The entropy decoding (hyper-decoder, tables, range coder) must
give identical latents everywhere, or a stream would decode to garbage; that is the check,
and any mismatch makes the exit status 1. The synthesis transform then runs in float64 on
the decoding device; its pixels are compared and reported too. ``--untrained`` checks
randomly initialised models of every quantizer (seed 0, N=128, M=192) instead of the
shipped ones, two channel-groups Leech models (``context="channel-groups"``, separable
group transforms with LRP and full ones) and three with the checkerboard spatial context (Leech
with full transforms and LRP, rounding with separable ones, the hybrid with full ones in
uneven groups), so that every coding path is covered whatever is shipped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lsq.codec.bitstream import unpack
from lsq.image_codec import decode_image, encode_image
from lsq.models import registry, weights_file
from lsq.models.hyperprior import build_model
from lsq.models.latent_codecs import LATENT_CODECS


@contextlib.contextmanager
def _configuration(name: str) -> Iterator[str]:
    """Set torch's thread count for ``name`` and yield its device."""
    threads = torch.get_num_threads()
    if name == "cpu-1":
        torch.set_num_threads(1)
    try:
        yield "cuda" if name == "cuda" else "cpu"
    finally:
        torch.set_num_threads(threads)


def decoded_latents(data: bytes, device: str) -> list[torch.Tensor]:
    """Every tile's decoded latents y_hat, on the CPU."""
    header, sections = unpack(data)
    net = registry.load(header.model, device)
    with torch.inference_mode():
        return [net.decompress_latents([[sections[2 * i]], [sections[2 * i + 1]]], shape,
                                       header.quality)[0].cpu()
                for i, shape in enumerate(header.latent_shapes)]


#: (name suffix, quantizer, codec options) of the untrained models: every quantizer, and
#: Leech inside the channel-groups context model with LRP and with full 3x3 group transforms
#: (whose group and residual transforms are integer networks, LeakyReLU in the full ones), and
#: with the checkerboard, whose anchors' y_hat feeds an integer spatial context network
#: (the flagship's hybrid in uneven groups too, its threshold where an untrained model puts
#: some blocks on either side).
UNTRAINED = [(q, q, {}) for q in LATENT_CODECS] + [
    ("leech-channel-groups", "leech", {"context": "channel-groups", "lrp": True}),
    ("leech-channel-groups-full", "leech",
     {"context": "channel-groups", "group_transform": "full"}),
    ("leech-checkerboard-full", "leech",
     {"context": "channel-groups", "group_transform": "full", "lrp": True,
      "checkerboard": True}),
    ("scalar-checkerboard", "scalar", {"context": "channel-groups", "checkerboard": True}),
    ("leech-hybrid-checkerboard-uneven", "leech-hybrid",
     {"context": "channel-groups", "group_transform": "full", "groups": (24, 24, 48, 96),
      "checkerboard": True, "above": -0.004})]


def write_untrained(folder: Path) -> None:
    """Randomly initialised models of every quantizer, as a weights folder for the registry."""
    for suffix, quantizer, codec_options in UNTRAINED:
        torch.manual_seed(0)
        qualities = (4, 4) if quantizer == "bsq" else (1, 8)
        net = build_model(quantizer, qualities=qualities, **codec_options)
        for transform in getattr(net.latent_codec, "integer_transforms", ()):  # zero at first
            torch.nn.init.normal_(transform[-1].weight, std=0.02)  # make them matter
        net.update(force=True)
        name = f"untrained-{suffix}"
        config = dict(name=name, family=quantizer, qualities=list(qualities),
                      default_quality=4.5 if qualities[0] < qualities[1] else qualities[0],
                      codec_options=codec_options, N=net.N, M=net.M,
                      command="check_cross_device --untrained")
        weights_file.save(net.state_dict(), folder / f"{name}.safetensors", config, half=False)
    (folder / "registry.json").write_text(json.dumps({"default": "untrained-leech"}))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m lsq.tools.check_cross_device")
    parser.add_argument("--dataset", type=Path, default=Path("../shared/data/kodak"))
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--models", default="all", help="all, or names separated by commas")
    parser.add_argument("--untrained", action="store_true",
                        help="check untrained models of every quantizer instead")
    args = parser.parse_args()
    if args.untrained:
        folder = tempfile.TemporaryDirectory()
        write_untrained(Path(folder.name))
        os.environ[registry.WEIGHTS_ENV] = folder.name
    names = ([m["name"] for m in registry.list_models()] if args.models == "all"
             else args.models.split(","))
    configs = ["cpu", "cpu-1"] + (["cuda"] if torch.cuda.is_available() else [])
    devices = [c for c in configs if c != "cpu-1"]
    paths = sorted(args.dataset.glob("*.png"))[: args.images]
    if not paths or not names:
        sys.exit(f"nothing to check: {len(paths)} images in {args.dataset}, models {names}")
    print(f"configurations: {', '.join(configs)}; torch {torch.__version__}")
    print(f"{'image':<12} {'model':<36} {'encoded':<8} {'decoded':<8} "
          f"{'latents':<10} {'pixels differing':>16} {'max |diff|':>10}")
    mismatches = 0
    for path in paths:
        img = Image.open(path).convert("RGB")
        for name in names:
            for enc_device in devices:
                data = encode_image(img, name, device=enc_device)
                reference_latents = reference_pixels = None
                for config in configs:
                    with _configuration(config) as device:
                        latents = decoded_latents(data, device)
                        pixels = np.asarray(decode_image(data, device), np.int16)
                    if reference_latents is None:
                        reference_latents, reference_pixels = latents, pixels
                    same = all(torch.equal(a, b)
                               for a, b in zip(latents, reference_latents, strict=True))
                    mismatches += not same
                    diff = np.abs(pixels - reference_pixels)
                    print(f"{path.stem:<12} {name:<36} {enc_device:<8} {config:<8} "
                          f"{'identical' if same else 'DIFFER':<10} {int((diff > 0).sum()):>16} "
                          f"{int(diff.max()):>10}")
    print(f"latent mismatches: {mismatches}")
    sys.exit(1 if mismatches else 0)


if __name__ == "__main__":
    main()
