"""BD-rate of every codec against an anchor, through the ``bjontegaard`` package.

BD-rate integrates log-rate as a function of distortion, so each curve must have strictly
increasing distortion along increasing rate: points that do not improve quality (e.g. a
saturated quality setting) are dropped first. Curves without distortion overlap give NaN,
printed as ``n/a``. The interpolation is the package's ``akima`` unless told otherwise;
``cubic`` is the classic Bjontegaard polynomial fit most published tables use.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import bjontegaard as bd
import numpy as np

#: metric name on the CLI -> key in the results JSON (MS-SSIM is compared in dB).
METRIC_KEYS = {"psnr": "psnr-rgb", "ms-ssim": "ms-ssim-db"}


def monotone_points(rate: Sequence[float], dist: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Finite points sorted by rate, keeping only those that strictly raise distortion."""
    pts = sorted(
        (r, d) for r, d in zip(rate, dist, strict=True) if math.isfinite(r) and math.isfinite(d)
    )
    kept: list[tuple[float, float]] = []
    for r, d in pts:
        if r > 0 and (not kept or (d > kept[-1][1] and r > kept[-1][0])):
            kept.append((r, d))
    return np.array([p[0] for p in kept]), np.array([p[1] for p in kept])


def bd_rate(
    rate_anchor: Sequence[float],
    dist_anchor: Sequence[float],
    rate_test: Sequence[float],
    dist_test: Sequence[float],
    method: str = "akima",
) -> float:
    """BD-rate in percent (negative = test needs fewer bits), NaN if not computable."""
    ra, da = monotone_points(rate_anchor, dist_anchor)
    rt, dt = monotone_points(rate_test, dist_test)
    if len(ra) < 2 or len(rt) < 2:
        return math.nan
    if min(da.max(), dt.max()) <= max(da.min(), dt.min()):
        return math.nan
    with warnings.catch_warnings():
        # cubic's polyfit warns on curves of few points; the fit is still the method's answer
        warnings.filterwarnings("ignore", message="Polyfit may be poorly conditioned")
        return float(
            bd.bd_rate(ra, da, rt, dt, method=method, require_matching_points=False, min_overlap=0)
        )


def bd_rate_curves(
    anchor: dict[str, Any], test: dict[str, Any], metric: str, method: str = "akima"
) -> float:
    """BD-rate between two results dicts (CompressAI shape) for ``psnr`` or ``ms-ssim``."""
    key = METRIC_KEYS[metric]
    a, t = anchor["results"], test["results"]
    if key not in a or key not in t:
        return math.nan
    return bd_rate(a["bpp"], a[key], t["bpp"], t[key], method)


def find_anchor(curves: Sequence[dict[str, Any]], anchor_name: str) -> dict[str, Any]:
    """The curve named ``anchor_name`` (any case); a measured curve wins over a published one."""
    matches = [c for c in curves if c["name"].lower() == anchor_name.lower()]
    if not matches:
        raise KeyError(f"anchor '{anchor_name}' not among: {', '.join(c['name'] for c in curves)}")
    return min(matches, key=lambda c: bool(c.get("reference", False)))


def bd_table(
    curves: Sequence[dict[str, Any]],
    anchor_name: str,
    metrics: Sequence[str],
    method: str = "akima",
) -> list[dict[str, Any]]:
    """One row per curve: name and BD-rate (%) per metric against the named anchor."""
    anchor = find_anchor(curves, anchor_name)
    return [
        {
            "name": c["name"],
            "reference": bool(c.get("reference", False)),
            **{m: bd_rate_curves(anchor, c, m, method) for m in metrics},
        }
        for c in curves
    ]


def format_markdown(
    rows: Sequence[dict[str, Any]],
    anchor_name: str,
    metrics: Sequence[str],
    method: str = "akima",
    dataset: str = "",
) -> str:
    """Markdown table; NaN (no overlap / too few points) shows as ``n/a``."""
    labels = {"psnr": "PSNR", "ms-ssim": "MS-SSIM"}
    header = "| codec | " + " | ".join(f"BD-rate {labels[m]} (%)" for m in metrics) + " |"
    lines = [
        f"BD-rate vs {anchor_name}{f' on {dataset}' if dataset else ''} ({method}; "
        "negative = fewer bits for the same quality)",
        "",
        header,
        "|---|" + "---:|" * len(metrics),
    ]
    for row in rows:
        name = row["name"] + (" (CompressAI published)" if row["reference"] else "")
        cells = ["n/a" if math.isnan(row[m]) else f"{row[m]:+.2f}" for m in metrics]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
