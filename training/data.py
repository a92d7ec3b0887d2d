"""Training data: images from shards or folders, the held-out slice, and the GPU crop sampler.

Every image has a name ``<source folder>/<relative path>`` (``lsq.models.shards``). The
held-out slice is every n-th image, by name, of the clean source folders only (by default
``wallpapers`` and ``urban100``), cut into non-overlapping tiles of ``val_crop`` pixels; the
model never trains on those images. Everything else, of every folder, is trained on. The
shards' own split field is ignored, so old shards give the same slice.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

from lsq.models.shards import decode_image, iter_shard_files, list_image_files

Named = list[tuple[str, np.ndarray]]


def load_named(data: str | None, images: Sequence[str]) -> tuple[Named, str]:
    """(name, HxWx3 uint8 image) of every image of a shard folder or of image folders."""
    if data:
        files = list(iter_shard_files(data))
        source = f"shards {data}"
    else:
        files = [(name, path.read_bytes()) for name, path in list_image_files(images)]
        source = "folders " + ", ".join(images)
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:  # GIL released
        arrays = list(pool.map(decode_image, [blob for _, blob in files]))
    return [(name, a) for (name, _), a in zip(files, arrays, strict=True)], source


def heldout_names(names: Sequence[str], folders: Sequence[str], every: int) -> set[str]:
    """Every ``every``-th name (sorted) among those whose source folder is one of ``folders``."""
    clean = sorted(n for n in names if n.split("/", 1)[0] in set(folders))
    return set(clean[::every])


def split(named: Named, folders: Sequence[str], every: int
          ) -> tuple[list[np.ndarray], list[np.ndarray], set[str]]:
    """(training images, held-out images, held-out names)."""
    held = heldout_names([n for n, _ in named], folders, every)
    train = [a for n, a in named if n not in held]
    return train, [a for n, a in named if n in held], held


def tiles(images: Sequence[np.ndarray], side: int, device: torch.device) -> torch.Tensor:
    """(n, 3, side, side) uint8: every image's grid of non-overlapping tiles, centred."""
    crops = []
    for im in images:
        h, w = im.shape[:2]
        top, left = (h % side) // 2, (w % side) // 2
        for t in range(top, h - side + 1, side):
            for l_ in range(left, w - side + 1, side):
                crops.append(torch.from_numpy(np.ascontiguousarray(
                    im[t : t + side, l_ : l_ + side].transpose(2, 0, 1))))
    if not crops:
        return torch.empty((0, 3, side, side), dtype=torch.uint8, device=device)
    return torch.stack(crops).to(device)


def load_data(data: str | None, images: Sequence[str], folders: Sequence[str], every: int
              ) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    """(training images, held-out images, description) of a run."""
    named, source = load_named(data, images)
    train, val, held = split(named, folders, every)
    desc = (f"{source}: {len(train)} train, {len(val)} held out (1 in {every} of "
            f"{', '.join(folders)})")
    return train, val, desc


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

    def _draw(self, batch: int) -> tuple[np.ndarray, ...]:
        """(image index, region side, top, left, flip) per sample."""
        c = self.crop
        idx = self.rng.integers(len(self.images), size=batch)
        u = self.rng.random((batch, 4))
        h, w = self.sizes[idx, 0], self.sizes[idx, 1]
        lowest = np.maximum(self.min_scale, c / np.minimum(h, w))
        scale = lowest + (1.0 - lowest) * u[:, 0]
        region = np.minimum(np.rint(c / scale).astype(np.int64), np.minimum(h, w))
        top = (u[:, 1] * (h - region + 1)).astype(np.int64)
        left = (u[:, 2] * (w - region + 1)).astype(np.int64)
        return idx, region, top, left, u[:, 3] < 0.5

    def sample(self, batch: int) -> torch.Tensor:
        """A (batch, 3, crop, crop) float tensor in [0, 1]."""
        c = self.crop
        out = torch.empty((batch, 3, c, c), device=self.device)
        for k, (i, r, t, l_, flip) in enumerate(zip(*self._draw(batch), strict=True)):
            patch = self.images[i][:, t : t + r, l_ : l_ + r]
            if flip:
                patch = patch.flip(-1)
            if r == c:
                out[k].copy_(patch)
            else:
                out[k] = F.interpolate(patch[None].float(), size=(c, c), mode="bilinear",
                                       antialias=True, align_corners=False)[0]
        return out.div_(255.0).clamp_(0.0, 1.0)

    def get_state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state
