"""Thin click commands over ``lsq.eval``: ``eval``, ``plot`` and ``bdrate``.

``cli/main.py`` registers them on the ``lsq`` group. User errors become one
``Error: ...`` line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

from pathlib import Path

import click

from lsq.eval import bdrate as bdrate_mod
from lsq.eval import rd
from lsq.eval.plot import plot_rd


def _load_curves(results_dir: Path) -> list[dict]:
    try:
        return rd.load_results(results_dir)
    except (FileNotFoundError, ValueError) as err:
        raise click.ClickException(str(err)) from err


@click.command("eval")
@click.option("--dataset", required=True, type=click.Path(path_type=Path), help="Image folder.")
@click.option(
    "--codecs",
    default="baselines",
    show_default=True,
    help="Comma-separated: jpeg-420, jpeg-444, webp, avif, jpeg2000, baselines, lsq:<family>.",
)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Results folder.")
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--limit", default=None, type=click.IntRange(min=1), help="First N images only.")
def eval_cmd(dataset: Path, codecs: str, out: Path, jobs: int, limit: int | None) -> None:
    """Measure rate-distortion of codecs on a dataset; resumes from OUT/.cache."""
    try:
        selected = rd.resolve_codecs(codecs.split(","))
        rd.list_images(dataset, limit)
    except (FileNotFoundError, ValueError) as err:
        raise click.ClickException(str(err)) from err
    summary = rd.evaluate(
        dataset,
        selected,
        out,
        jobs=jobs,
        limit=limit,
        on_skip=lambda reason: click.echo(f"warning: {reason}", err=True),
    )
    if not summary.written:
        raise click.ClickException("no codec could be evaluated: " + "; ".join(summary.skipped))
    for path in summary.written:
        click.echo(str(path))


@click.command("plot")
@click.argument("results_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="PNG path.")
@click.option("--references/--no-references", default=True, show_default=True)
@click.option("--title", default="Kodak", show_default=True)
def plot_cmd(results_dir: Path, output: Path, references: bool, title: str) -> None:
    """Plot PSNR and MS-SSIM(dB) against bpp; writes OUTPUT and OUTPUT with .svg."""
    if output.suffix.lower() != ".png":
        raise click.ClickException(
            f"output must end in .png (an .svg is written next to it): {output}"
        )
    curves = _load_curves(results_dir)
    refs = rd.load_references() if references else []
    for path in plot_rd(curves, output, references=refs, title=title):
        click.echo(str(path))


@click.command("bdrate")
@click.argument("results_dir", type=click.Path(path_type=Path))
@click.option("--anchor", required=True, help="Name of the anchor curve, e.g. jpeg-420.")
@click.option(
    "--metric",
    type=click.Choice(["psnr", "ms-ssim", "both"]),
    default="both",
    show_default=True,
)
@click.option("--references/--no-references", default=True, show_default=True)
def bdrate_cmd(results_dir: Path, anchor: str, metric: str, references: bool) -> None:
    """Print a Markdown BD-rate table of every curve against ANCHOR."""
    curves = _load_curves(results_dir)
    if references:
        curves += rd.load_references()
    metrics = ["psnr", "ms-ssim"] if metric == "both" else [metric]
    try:
        rows = bdrate_mod.bd_table(curves, anchor, metrics)
    except KeyError as err:
        raise click.ClickException(str(err.args[0])) from err
    click.echo(bdrate_mod.format_markdown(rows, anchor, metrics))


# Attribute names the `lsq` group (cli/main.py) looks up; `eval` deliberately shadows the
# builtin inside this module only.
eval = eval_cmd
plot = plot_cmd
bdrate = bdrate_cmd
