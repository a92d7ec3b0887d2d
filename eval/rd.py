"""Rate-distortion evaluation engine (docs/design.md section 7).

For every codec, quality and image: encode to real bytes, decode, measure bpp / PSNR /
MS-SSIM and wall-clock times. Each measurement is appended to a JSON-lines cache
(``<out>/.cache/<codec>.jsonl``) as soon as it exists, so an interrupted run resumes where
it stopped. Per-codec results are written in CompressAI's results-JSON shape so that
``python -m compressai.utils.plot`` and our own plots/BD-rate read the same files.

Cache entries are keyed by (codec name, quality, image file name) and carry the codec's
``version`` where it has one (an lsq codec's is a digest of its models' configs), so that
retrained weights are measured afresh; delete the cache when the dataset contents change.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import cached_property
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image
from tqdm import tqdm

from lsq.eval import metrics
from lsq.eval.baselines import BASELINES
from lsq.fileio import write_atomic

IMAGE_SUFFIXES = (".png", ".ppm", ".bmp", ".tif", ".tiff")
CACHE_DIRNAME = ".cache"
#: The config keys of a weights file that change whenever its weights do.
WEIGHTS_IDENTITY = ("name", "family", "qualities", "codec_options", "N", "M", "steps",
                    "images_seen", "gpu_time")


class Codec(Protocol):
    """What the engine needs from a codec; baselines, ``LsqCodec`` and test fakes fit it."""

    name: str
    description: str

    @property
    def qualities(self) -> Sequence[int]: ...

    def encode(self, rgb: np.ndarray, quality: int) -> bytes: ...

    def decode(self, data: bytes) -> np.ndarray: ...


class LsqCodec:
    """Adapter exposing a family of shipped lsq models as one swept codec.

    ``model_name`` is a registry family (entries whose ``family`` equals it, e.g.
    ``"leech"``) or a single model ``name``. The sweep values are the integer qualities the
    models cover (1..8 for a variable-rate model); each encode names the model and its
    quality explicitly. The lsq
    modules are imported lazily: they pull in the networks and weights.
    """

    def __init__(self, model_name: str, device: str = "cpu") -> None:
        self.model_name = model_name
        self.device = device
        self.name = f"lsq-{model_name}"
        self.description = f"lsq learned codec '{model_name}' (real .lsq files, {device})"

    @cached_property
    def rate_points(self) -> dict[int, dict[str, Any]]:
        """Registry configs of this family (or the single model) keyed by integer quality."""
        from lsq.models.registry import list_models

        models = list_models()
        family = [m for m in models if m.get("family") == self.model_name]
        if not family:
            family = [m for m in models if m.get("name") == self.model_name]
        if not family:
            known = sorted({str(m.get("family")) for m in models} | {m["name"] for m in models})
            raise LookupError(f"no lsq model or family '{self.model_name}'; known: {known}")
        points = {}
        for m in family:
            low, high = (int(q) for q in m["qualities"])
            points.update({q: m for q in range(low, high + 1) if q not in points})
        return dict(sorted(points.items()))

    @property
    def qualities(self) -> tuple[int, ...]:
        return tuple(self.rate_points)

    @cached_property
    def version(self) -> str:
        """A digest of what identifies the trained models behind the sweep (name, architecture,
        steps, images, GPU time): it changes whenever one is retrained or replaced, so their
        cached measurements are not reused; a new default quality keeps them."""
        configs = sorted({json.dumps({k: m.get(k) for k in WEIGHTS_IDENTITY}, sort_keys=True)
                          for m in self.rate_points.values()})
        return hashlib.sha256("\n".join(configs).encode()).hexdigest()[:16]

    def _load_error(self) -> str | None:
        try:
            self.rate_points  # noqa: B018 - evaluating the cached property loads the registry
        except (ImportError, LookupError, ValueError, OSError, RuntimeError) as err:
            return f"{type(err).__name__}: {err}"
        return None

    def available(self) -> bool:
        """False (with ``unavailable_reason``) when the registry or model cannot be loaded."""
        return self._load_error() is None

    def unavailable_reason(self) -> str:
        return f"{self.name}: skipped, {self._load_error() or 'available'}"

    def encode(self, rgb: np.ndarray, quality: int) -> bytes:
        from lsq.image_codec import encode_image

        model = self.rate_points[quality]["name"]
        img = Image.fromarray(rgb, mode="RGB")
        return encode_image(img, model, quality=quality, device=self.device)

    def decode(self, data: bytes) -> np.ndarray:
        from lsq.image_codec import decode_image

        img = decode_image(data, device=self.device)
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def resolve_codecs(names: Iterable[str]) -> list[Codec]:
    """Map CLI names to codec objects.

    Accepts baseline names, ``baselines`` (all of them) and ``lsq:<family-or-model>``.
    """
    codecs: list[Codec] = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        if name == "baselines":
            codecs.extend(BASELINES.values())
        elif name in BASELINES:
            codecs.append(BASELINES[name])
        elif name.startswith("lsq:") and len(name) > 4:
            codecs.append(LsqCodec(name[4:]))
        else:
            known = ", ".join([*BASELINES, "baselines", "lsq:<family>"])
            raise ValueError(f"unknown codec '{name}' (known: {known})")
    if not codecs:
        raise ValueError("no codec given")
    return list({c.name: c for c in codecs}.values())


def list_images(dataset: Path, limit: int | None = None) -> list[Path]:
    """Image files of a dataset directory in name order (first ``limit`` if given)."""
    if not dataset.is_dir():
        raise FileNotFoundError(f"dataset directory not found: {dataset}")
    files = sorted(p for p in dataset.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {dataset}")
    return files[:limit] if limit is not None else files


def load_rgb(path: Path) -> np.ndarray:
    """Read an image as 8-bit RGB, the domain every metric is computed in."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def measure(codec: Codec, quality: int, path: Path) -> dict[str, Any]:
    """Encode/decode one image at one quality; the record the cache stores."""
    ref = load_rgb(path)
    t0 = time.perf_counter()
    data = codec.encode(ref, quality)
    t1 = time.perf_counter()
    rec = codec.decode(data)
    t2 = time.perf_counter()
    if rec.shape != ref.shape:
        raise ValueError(f"{codec.name} q={quality} {path.name}: decoded shape {rec.shape}")
    pixels = ref.shape[0] * ref.shape[1]
    return {
        "codec": codec.name,
        "version": getattr(codec, "version", ""),
        "quality": quality,
        "image": path.name,
        "bytes": len(data),
        "pixels": pixels,
        "bpp": metrics.bpp(len(data), pixels),
        "psnr": metrics.psnr(ref, rec),
        "ms_ssim": metrics.ms_ssim(ref, rec),
        "encode_s": t1 - t0,
        "decode_s": t2 - t1,
    }


def unavailable_reason(codec: Codec) -> str | None:
    """Why a codec must be skipped, or None; codecs without ``available()`` always run."""
    available = getattr(codec, "available", None)
    if available is None or available():
        return None
    return str(codec.unavailable_reason())  # type: ignore[attr-defined]


def _worker_init() -> None:
    """One torch thread per worker: the pool already uses the cores."""
    import torch

    torch.set_num_threads(1)


def _cache_key(record: dict[str, Any]) -> tuple[str, int, str]:
    return (record["codec"], int(record["quality"]), record["image"])


def read_cache(path: Path, version: str = "") -> dict[tuple[str, int, str], dict[str, Any]]:
    """Load the cached records of this codec version, ignoring a torn last line left by an
    interrupted run."""
    records: dict[tuple[str, int, str], dict[str, Any]] = {}
    if not path.exists():
        return records
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
            if rec.get("version", "") == version:
                records[_cache_key(rec)] = rec
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    return records


def _append(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _mean(values: list[float]) -> float:
    """Plain mean: one NaN image makes the point NaN rather than silently dropping it."""
    return float(np.mean(values)) if values else math.nan


def aggregate(codec: Codec, records: Sequence[dict[str, Any]], images: Sequence[str]) -> dict:
    """Average per-image records into one CompressAI-shaped results dict, sorted by bpp."""
    points = []
    for q in codec.qualities:
        rs = [r for r in records if r["quality"] == q and r["image"] in images]
        if len(rs) != len(images):
            raise ValueError(f"{codec.name} q={q}: {len(rs)} of {len(images)} images measured")
        msssim = _mean([r["ms_ssim"] for r in rs])
        points.append(
            {
                "quality": q,
                "bpp": _mean([r["bpp"] for r in rs]),
                "psnr-rgb": _mean([r["psnr"] for r in rs]),
                "ms-ssim-rgb": msssim,
                "ms-ssim": msssim,
                "ms-ssim-db": metrics.ms_ssim_db(msssim) if not math.isnan(msssim) else msssim,
                "encoding_time": _mean([r["encode_s"] for r in rs]),
                "decoding_time": _mean([r["decode_s"] for r in rs]),
            }
        )
    points.sort(key=lambda p: p["bpp"])
    keys = points[0].keys() if points else []
    return {
        "name": codec.name,
        "description": codec.description,
        "num_images": len(images),
        "results": {k: [p[k] for p in points] for k in keys},
    }


@dataclass
class EvalSummary:
    """What a run produced: one results file per codec, plus codecs skipped and why."""

    written: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def evaluate(
    dataset: Path,
    codecs: Sequence[Codec],
    out_dir: Path,
    jobs: int = 1,
    limit: int | None = None,
    progress: bool = True,
    on_skip: Callable[[str], None] | None = None,
) -> EvalSummary:
    """Run (or resume) the RD sweep and write ``<out_dir>/<codec>.json`` per codec."""
    images = list_images(dataset, limit)
    names = [p.name for p in images]
    cache_dir = out_dir / CACHE_DIRNAME
    cache_dir.mkdir(parents=True, exist_ok=True)
    summary = EvalSummary()
    for codec in codecs:
        reason = unavailable_reason(codec)
        if reason is not None:
            summary.skipped.append(reason)
            if on_skip is not None:
                on_skip(reason)
            continue
        cache_path = cache_dir / f"{codec.name}.jsonl"
        cached = read_cache(cache_path, getattr(codec, "version", ""))
        todo = [
            (q, p) for q in codec.qualities for p in images if (codec.name, q, p.name) not in cached
        ]
        bar = tqdm(total=len(todo), desc=codec.name, disable=not progress or not todo)
        if jobs > 1 and len(todo) > 1:
            ctx = get_context("spawn")
            with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init) as pool:
                futures = [pool.submit(measure, codec, q, p) for q, p in todo]
                for fut in as_completed(futures):
                    rec = fut.result()
                    _append(cache_path, rec)
                    cached[_cache_key(rec)] = rec
                    bar.update()
        else:
            for q, p in todo:
                rec = measure(codec, q, p)
                _append(cache_path, rec)
                cached[_cache_key(rec)] = rec
                bar.update()
        bar.close()
        results = aggregate(codec, list(cached.values()), names)
        results["dataset"] = dataset.resolve().name
        out_path = out_dir / f"{codec.name}.json"
        write_json(out_path, results)
        summary.written.append(out_path)
    return summary


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically (lsq.fileio) so a crash never leaves half a file."""
    write_atomic(path, (json.dumps(data, indent=2) + "\n").encode())
