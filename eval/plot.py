"""Rate-distortion plots (PSNR and MS-SSIM in dB against bpp) as PNG and SVG."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

from lsq.fileio import write_atomic  # noqa: E402

#: grey dashed styles keep published references visually apart from our measurements.
_REF_STYLES = ("x--", "+:", "1-.")
#: measured curves take tab20's colours without its greys (the references' colour), saturated
#: ones first.
_TAB20 = plt.get_cmap("tab20").colors
_COLORS = [_TAB20[i] for i in (*range(0, 20, 2), *range(1, 20, 2)) if i not in (14, 15)]
PANELS = (("psnr-rgb", "PSNR (RGB) [dB]"), ("ms-ssim-db", "MS-SSIM (RGB) [dB]"))


def plot_rd(
    curves: Sequence[dict[str, Any]],
    out_png: Path,
    references: Sequence[dict[str, Any]] = (),
    title: str = "Kodak",
) -> list[Path]:
    """Draw measured curves solid and published references dashed; write .png and .svg."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for ax, (key, ylabel) in zip(axes, PANELS, strict=True):
        for i, c in enumerate(curves):
            res = c["results"]
            if key in res:
                ax.plot(res["bpp"], res[key], ".-", color=_COLORS[i % len(_COLORS)],
                        label=c["name"])
        for i, r in enumerate(references):
            style = _REF_STYLES[i % len(_REF_STYLES)]
            res = r["results"]
            if key in res:
                label = f"{r['name']} (CompressAI published)"
                ax.plot(res["bpp"], res[key], style, color="0.45", lw=1.2, ms=4, label=label)
        ax.set_xlabel("bits per pixel (whole file)")
        ax.set_ylabel(ylabel)
        ax.set_xlim(0, 2.1)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    out_svg = out_png.with_suffix(".svg")
    for path, options in ((out_png, {"dpi": 150}), (out_svg, {})):
        buf = io.BytesIO()
        fig.savefig(buf, format=path.suffix[1:], **options)
        write_atomic(path, buf.getbuffer())
    plt.close(fig)
    return [out_png, out_svg]
