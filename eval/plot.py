"""Rate-distortion plots (PSNR and MS-SSIM in dB against bpp) as PNG and SVG."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

from lsq.fileio import write_atomic  # noqa: E402

#: grey dashed styles keep published references visually apart from our measurements; each
#: has its own marker so that several references stay distinguishable.
_REF_STYLES = ("x--", "+:", "1-.", "^--", "s:", "v-.", "d--", "*:")
_REF_GREYS = ("0.2", "0.5")
#: measured curves take tab20's colours without its greys (the references' colour), saturated
#: ones first.
_TAB20 = plt.get_cmap("tab20").colors
_COLORS = [_TAB20[i] for i in (*range(0, 20, 2), *range(1, 20, 2)) if i not in (14, 15)]
PANELS = (("psnr-rgb", "PSNR (RGB) [dB]"), ("ms-ssim-db", "MS-SSIM (RGB) [dB]"))
MAX_BPP = 2.1


def _visible_range(
    series: Sequence[tuple[Sequence[float], Sequence[float]]],
) -> tuple[float, float]:
    """The y range the curves take left of MAX_BPP, padded: curves that run on to high rates
    (published ones reach 4 bpp) would otherwise stretch the axis past what is shown."""
    ys = []
    for xs, ys_ in series:
        pts = sorted((x, y) for x, y in zip(xs, ys_, strict=True) if math.isfinite(y))
        ys += [y for x, y in pts if x <= MAX_BPP]
        if pts and pts[0][0] < MAX_BPP < pts[-1][0]:
            ys.append(float(np.interp(MAX_BPP, [x for x, _ in pts], [y for _, y in pts])))
    if not ys:
        return 0.0, 1.0
    pad = 0.04 * (max(ys) - min(ys)) or 1.0
    return min(ys) - pad, max(ys) + pad


def plot_rd(
    curves: Sequence[dict[str, Any]],
    out_png: Path,
    references: Sequence[dict[str, Any]] = (),
    title: str = "",
) -> list[Path]:
    """Draw measured curves solid and published references dashed, with one legend beside
    both panels; write .png and .svg."""
    fig, axes = plt.subplots(1, 2, figsize=(15, 5.5))
    legend: dict[str, Any] = {}
    for ax, (key, ylabel) in zip(axes, PANELS, strict=True):
        series = []
        for i, c in enumerate(curves):
            res = c["results"]
            if key in res:
                (line,) = ax.plot(res["bpp"], res[key], ".-", color=_COLORS[i % len(_COLORS)])
                legend.setdefault(c["name"], line)
                series.append((res["bpp"], res[key]))
        for i, r in enumerate(references):
            style = _REF_STYLES[i % len(_REF_STYLES)]
            res = r["results"]
            if key in res:
                (line,) = ax.plot(res["bpp"], res[key], style, lw=1.1, ms=4, mfc="none",
                                  color=_REF_GREYS[i % len(_REF_GREYS)])
                legend.setdefault(f"{r['name']} (CompressAI published)", line)
                series.append((res["bpp"], res[key]))
        ax.set_xlabel("bits per pixel (whole file)")
        ax.set_ylabel(ylabel)
        ax.set_xlim(0, MAX_BPP)
        ax.set_ylim(*_visible_range(series))
        ax.grid(True, alpha=0.3)
    fig.legend(list(legend.values()), list(legend), loc="center left", bbox_to_anchor=(1.0, 0.5),
               fontsize=8, frameon=False)
    fig.suptitle(title)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    out_svg = out_png.with_suffix(".svg")
    for path, options in ((out_png, {"dpi": 150}), (out_svg, {})):
        buf = io.BytesIO()
        fig.savefig(buf, format=path.suffix[1:], bbox_inches="tight", **options)
        write_atomic(path, buf.getbuffer())
    plt.close(fig)
    return [out_png, out_svg]
