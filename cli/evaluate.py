"""Thin click commands over ``lsq.eval``: ``eval``, ``plot`` and ``bdrate``.

``cli/main.py`` registers them on the ``lsq`` group. User errors become one
``Error: ...`` line on stderr and a non-zero exit, never a traceback. The engine, plots and
BD-rate pull in torch, matplotlib and scipy, so each command imports what it needs when it
runs and ``lsq eval/plot/bdrate --help`` stays quick.
"""

from __future__ import annotations

from pathlib import Path

import click

from lsq.eval.curves import HEADLINE_REFERENCES


def _load_curves(results_dir: Path) -> list[dict]:
    from lsq.eval import curves

    try:
        return curves.load_results(results_dir)
    except (FileNotFoundError, ValueError) as err:
        raise click.ClickException(str(err)) from err


def _references(measured: list[dict], spec: str) -> list[dict]:
    """The published curves ``spec`` names, when the measurements cover all of Kodak; a
    warning, and none, for any other dataset."""
    from lsq.eval import curves

    try:
        refs = curves.select_references(spec)
        kodak = curves.on_kodak(measured)
        title = curves.title_of(measured)
    except ValueError as err:
        raise click.ClickException(str(err)) from err
    if refs and not kodak:
        click.echo(f"warning: published curves are Kodak's (24 images); none shown for {title}",
                   err=True)
        return []
    return refs


_REFERENCES_HELP = "Published curves: comma-separated names (eval/reference), all or none."


@click.command("eval")
@click.option("--dataset", required=True, type=click.Path(path_type=Path), help="Image folder.")
@click.option(
    "--codecs",
    default="baselines",
    show_default=True,
    help="Comma-separated: jpeg-420, jpeg-444, webp, avif, avif-slow, jpeg2000, baselines, "
    "lsq:<family>.",
)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Results folder.")
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--limit", default=None, type=click.IntRange(min=1), help="First N images only.")
def eval_cmd(dataset: Path, codecs: str, out: Path, jobs: int, limit: int | None) -> None:
    """Measure rate-distortion of codecs on a dataset; resumes from OUT/.cache."""
    from lsq.eval import rd

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
@click.option("--references", default=",".join(HEADLINE_REFERENCES), show_default=True,
              help=_REFERENCES_HELP + " Drawn only beside all of Kodak.")
@click.option("--title", default=None,
              help="Plot title [default: the dataset, e.g. Kodak (24 images)].")
def plot_cmd(results_dir: Path, output: Path, references: str, title: str | None) -> None:
    """Plot PSNR and MS-SSIM(dB) against bpp; writes OUTPUT and OUTPUT with .svg."""
    if output.suffix.lower() != ".png":
        raise click.ClickException(
            f"output must end in .png (an .svg is written next to it): {output}"
        )
    from lsq.eval.curves import title_of
    from lsq.eval.plot import plot_rd

    measured = _load_curves(results_dir)
    refs = _references(measured, references)
    for path in plot_rd(measured, output, references=refs, title=title or title_of(measured)):
        click.echo(str(path))


@click.command("bdrate")
@click.argument("results_dir", type=click.Path(path_type=Path))
@click.option("--anchor", required=True,
              help="Name of the anchor curve, measured (e.g. jpeg-420) or published (e.g. vtm).")
@click.option(
    "--metric",
    type=click.Choice(["psnr", "ms-ssim", "both"]),
    default="both",
    show_default=True,
)
@click.option("--references", default="all", show_default=True,
              help=_REFERENCES_HELP + " Compared only with all of Kodak.")
@click.option("--method", type=click.Choice(["akima", "pchip", "cubic"]), default="akima",
              show_default=True, help="bjontegaard interpolation (cubic: the classic fit).")
def bdrate_cmd(results_dir: Path, anchor: str, metric: str, references: str, method: str) -> None:
    """Print a Markdown BD-rate table of every curve against ANCHOR."""
    from lsq.eval import bdrate as bdrate_mod
    from lsq.eval.curves import load_references, on_kodak, title_of

    measured = _load_curves(results_dir)
    curves = measured + _references(measured, references)
    if anchor.lower() not in {c["name"].lower() for c in curves}:
        published = [r for r in load_references() if r["name"].lower() == anchor.lower()]
        if published and not on_kodak(measured):
            raise click.ClickException(f"anchor '{anchor}' is a published Kodak curve; these "
                                       f"results are on {title_of(measured)}")
        curves += published
    metrics = ["psnr", "ms-ssim"] if metric == "both" else [metric]
    try:
        rows = bdrate_mod.bd_table(curves, anchor, metrics, method)
    except KeyError as err:
        raise click.ClickException(str(err.args[0])) from err
    click.echo(bdrate_mod.format_markdown(rows, anchor, metrics, method, title_of(measured)))


# Attribute names the `lsq` group (cli/main.py) looks up; `eval` deliberately shadows the
# builtin inside this module only.
eval = eval_cmd
plot = plot_cmd
bdrate = bdrate_cmd
