"""The images a development script measures on: the first PNGs of a folder, as tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def first_pngs(folder: Path, count: int) -> list[torch.Tensor]:
    """The first ``count`` PNG files of ``folder`` by name, each (1, 3, H, W) RGB in [0, 1];
    empty if it holds none."""
    return [torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1)[None]
            .float().div(255) for p in sorted(folder.glob("*.png"))[:count]]
