"""Checkpoints that resume a run exactly: weights, both optimizers, every rank's random
streams (torch, CUDA, numpy, Python and the crop sampler's), step, lr scale and time spent.

A checkpoint is written as parts of at most PART_BYTES each (one file that the GPU machine
can return per slot) and then a manifest naming them with their SHA-256, which commits
them. Parts get fresh names, so a crash at any point leaves the previous checkpoint whole.
Without its checkpoint a run falls back to its exported fp16 weights and a fresh optimizer
(``--continue-from``, which keeps its step, crops and history). ``python -m
lsq.training.checkpoint RUN_DIR OUT_DIR [FIRST COUNT]`` copies a run's latest checkpoint (or
some of its parts), even while the run goes on writing new ones.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from lsq.fileio import write_atomic

PART_BYTES = 16_000_000  # < 16 MiB, the most one file may hold on its way back
MANIFEST = "checkpoint.json"


def save(out_dir: str | os.PathLike, state: dict, part_bytes: int | None = None) -> list[Path]:
    """Write ``state`` as parts and then the manifest; remove older checkpoints' parts."""
    limit = part_bytes or PART_BYTES
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getbuffer()
    tag = f"ckpt-{state['step']:08d}-{uuid.uuid4().hex[:6]}"
    parts = []
    for i, start in enumerate(range(0, len(data), limit)):
        chunk = data[start : start + limit]
        name = f"{tag}-{i}.bin"
        write_atomic(out / name, chunk)
        parts.append({"file": name, "bytes": len(chunk),
                      "sha256": hashlib.sha256(chunk).hexdigest()})
    manifest = {"step": state["step"], "total_bytes": len(data), "parts": parts}
    write_atomic(out / MANIFEST, json.dumps(manifest, indent=1).encode())
    live = {p["file"] for p in parts}
    for old in out.glob("ckpt-*.bin"):
        if old.name not in live:
            old.unlink()
    return [out / p["file"] for p in parts]


def exists(out_dir: str | os.PathLike) -> bool:
    return (Path(out_dir) / MANIFEST).is_file()


def load(path: str | os.PathLike) -> dict:
    """A checkpoint from its run folder or manifest, every part's size and hash checked."""
    manifest_path = Path(path)
    if manifest_path.is_dir():
        manifest_path = manifest_path / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    chunks = []
    for part in manifest["parts"]:
        chunk = (manifest_path.parent / part["file"]).read_bytes()
        if len(chunk) != part["bytes"] or hashlib.sha256(chunk).hexdigest() != part["sha256"]:
            raise ValueError(f"checkpoint part {part['file']} is damaged")
        chunks.append(chunk)
    return torch.load(io.BytesIO(b"".join(chunks)), map_location="cpu", weights_only=True)


def copy(src: str | os.PathLike, dst: str | os.PathLike, parts: slice = slice(None),
         attempts: int = 5) -> list[Path]:
    """Copy the latest checkpoint of run folder ``src`` (its ``parts``, all by default, and
    the manifest, last) into ``dst``, again if a new checkpoint replaced it meanwhile;
    returns the copied files. A checkpoint larger than one return of the GPU machine comes
    back in slices of parts, once its run has stopped."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for _ in range(attempts):
        manifest = (src / MANIFEST).read_bytes()
        names = [p["file"] for p in json.loads(manifest)["parts"]][parts]
        try:
            for name in names:
                shutil.copyfile(src / name, dst / name)
        except FileNotFoundError:  # removed by a newer checkpoint
            continue
        if (src / MANIFEST).read_bytes() == manifest:
            write_atomic(dst / MANIFEST, manifest)
            return [dst / name for name in names] + [dst / MANIFEST]
    raise RuntimeError(f"{src}: the checkpoint kept changing while it was copied")


def compact_optimizer_state(state: dict, dtype: torch.dtype) -> dict:
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


def rng_state(sampler_state: dict, device: torch.device) -> dict:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": _numpy_state(),
        "python": random.getstate(),
        "sampler": sampler_state,
    }


def set_rng_state(rng: dict, device: torch.device) -> dict:
    """Restore the global streams; returns the sampler's state for the caller to set."""
    torch.set_rng_state(rng["torch"])
    if device.type == "cuda" and rng["cuda"] is not None:
        torch.cuda.set_rng_state(rng["cuda"], device)
    name, keys, *rest = rng["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    random.setstate(rng["python"])
    return rng["sampler"]


def seed_everything(seed: int, rank: int, step: int) -> None:
    """Seed torch/numpy/python per rank (and per resume step when states cannot be restored)."""
    ss = np.random.SeedSequence([seed, rank, step])
    torch.manual_seed(int(ss.generate_state(1, np.uint64)[0]) & (2**63 - 1))
    np.random.seed(ss.generate_state(1)[0])
    random.seed(int(ss.generate_state(1)[0]))


def main(argv: Sequence[str] | None = None) -> None:
    """``RUN_DIR OUT_DIR [FIRST COUNT]``: the whole checkpoint, or COUNT parts from FIRST."""
    args = list(sys.argv[1:] if argv is None else argv)
    usage = "usage: python -m lsq.training.checkpoint RUN_DIR OUT_DIR [FIRST COUNT]"
    if len(args) not in (2, 4) or not all(a.isdigit() for a in args[2:]):
        sys.exit(usage)
    first, count = (int(a) for a in args[2:]) if len(args) == 4 else (0, None)
    try:
        files = copy(args[0], args[1], slice(first, None if count is None else first + count))
    except (OSError, ValueError, RuntimeError) as e:
        sys.exit(f"lsq.training.checkpoint: {e}")
    print(f"{args[0]}: {len(files) - 1} parts, {sum(f.stat().st_size for f in files):,} bytes")


if __name__ == "__main__":
    main()
