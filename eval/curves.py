"""Rate-distortion curves on disk: measured results files, published reference curves, and
the dataset each belongs to.

The published curves (``eval/reference``, see its SOURCES.md) are averages over the 24
Kodak images, so they are offered only beside measurements of all of Kodak; mixing them
into another dataset's plot or table would compare numbers of different images. Nothing
here imports torch, so ``lsq plot`` and ``lsq bdrate`` start quickly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REFERENCE_DIR = Path(__file__).resolve().parent / "reference"
KODAK_IMAGES = 24
#: The published curves a plot shows unless told otherwise: the classical anchors (VTM,
#: AV1, BPG) and the learned codecs closest to ours.
HEADLINE_REFERENCES = ("vtm", "av1", "bpg-444", "elic2022", "minnen2020-cc10",
                       "cheng2020-anchor")
_KODAK_WORD = re.compile(r"(?<![a-z])kodak(?![a-z])")


def names_kodak(name: str) -> bool:
    """Whether a dataset or folder name says Kodak (``kodak``, ``Kodak24``, ``kodak-results``)."""
    return _KODAK_WORD.search(name.lower()) is not None


def load_results(results_dir: Path) -> list[dict[str, Any]]:
    """Read every results JSON in a directory (not the cache), in name order.

    A file that does not record its dataset is taken to be Kodak's only when the folder's
    name says Kodak; otherwise its dataset is unknown (None).
    """
    if not results_dir.is_dir():
        raise FileNotFoundError(f"results directory not found: {results_dir}")
    folder_kodak = names_kodak(results_dir.resolve().name)
    curves = []
    for path in sorted(results_dir.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"not a results file (invalid JSON): {path}: {err}") from err
        if not isinstance(data, dict) or "bpp" not in data.get("results", {}):
            raise ValueError(f"not a results file (no results.bpp): {path}")
        data.setdefault("name", path.stem)
        if not data.get("dataset"):
            data["dataset"] = "kodak" if folder_kodak else None
        curves.append(data)
    if not curves:
        raise ValueError(f"no results *.json in {results_dir}")
    return curves


def dataset_of(curves: Sequence[dict[str, Any]]) -> tuple[str | None, int | None]:
    """The one (dataset, number of images) all curves were measured on.

    Curves of different datasets or image counts cannot share a plot or a BD-rate table.
    """
    seen = {(c.get("dataset"), c.get("num_images")) for c in curves}
    if len(seen) > 1:
        found = sorted(f"{c['name']}: {c.get('dataset') or 'unknown'} ({c.get('num_images')} "
                       "images)" for c in curves)
        raise ValueError("results come from different datasets: " + "; ".join(found))
    return next(iter(seen))


def on_kodak(curves: Sequence[dict[str, Any]]) -> bool:
    """Whether the curves cover all of Kodak, the set the published curves were measured on."""
    dataset, images = dataset_of(curves)
    return dataset is not None and names_kodak(dataset) and images in (None, KODAK_IMAGES)


def title_of(curves: Sequence[dict[str, Any]]) -> str:
    """A plot title naming the dataset and its number of images."""
    dataset, images = dataset_of(curves)
    name = "Kodak" if on_kodak(curves) else dataset or "dataset not recorded"
    return f"{name} ({images} images)" if images else name


def load_references() -> list[dict[str, Any]]:
    """CompressAI's published Kodak curves shipped in ``eval/reference`` (marked reference)."""
    return [json.loads(p.read_text()) for p in sorted(REFERENCE_DIR.glob("*.json"))]


def select_references(spec: str) -> list[dict[str, Any]]:
    """The published curves a comma-separated ``spec`` names, or ``all`` / ``none``."""
    refs = load_references()
    wanted = [s.strip().lower() for s in spec.split(",") if s.strip()]
    if wanted == ["none"]:
        return []
    if wanted == ["all"]:
        return refs
    by_name = {r["name"].lower(): r for r in refs}
    unknown = [w for w in wanted if w not in by_name]
    if unknown or not wanted:
        raise ValueError(f"unknown published curve {', '.join(unknown) or repr(spec)} (known: "
                         f"all, none, {', '.join(r['name'] for r in refs)})")
    return [by_name[w] for w in dict.fromkeys(wanted)]
