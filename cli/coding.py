"""Thin click commands around `lsq.models.image_codec`: encode, decode, info, models.

Heavy modules (torch, the models) are imported inside the commands so that `lsq --help`
and `lsq info` stay fast. Outputs are written atomically: a temporary file in the target
folder, fsync, then a rename; an existing file is never clobbered without --force and never
lost when writing fails.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import click

from lsq.codec.bitstream import DEFAULT_MAX_PIXELS

STDIO = "-"


class OutputExistsError(click.ClickException):
    """The output exists and --force was not given."""

    def __init__(self, path: str) -> None:
        super().__init__(f"{path} exists; use --force to overwrite")


def read_input(path: str) -> bytes:
    """Whole input as bytes, from a file or from stdin for '-'."""
    if path == STDIO:
        return sys.stdin.buffer.read()
    if Path(path).is_dir():
        raise click.ClickException(f"{path}: is a directory")
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise click.ClickException(f"{path}: no such file") from None


def check_output(path: str, force: bool) -> None:
    """Fail before doing any work when the output would be refused anyway."""
    if path == STDIO:
        return
    if not force and os.path.lexists(path):
        raise OutputExistsError(path)
    folder = Path(path).parent
    if not folder.is_dir():
        raise click.ClickException(f"{path}: folder {folder} does not exist")


def write_output(path: str, data: bytes, force: bool) -> None:
    """Write atomically (temp file, fsync, rename); '-' writes to stdout."""
    if path == STDIO:
        # Unbuffered, so a failed write (full disk, closed pipe) leaves nothing to retry at exit.
        sys.stdout.flush()
        view = memoryview(data)
        while view:
            view = view[os.write(sys.stdout.fileno(), view) :]
        return
    target = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        if force:
            os.replace(tmp, target)
        else:
            _link_no_clobber(tmp, target)
    except OSError as e:  # name the user's path, not the temporary file
        raise OSError(e.errno, e.strerror or str(e), path) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    _fsync_dir(target.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _link_no_clobber(tmp: str, target: Path) -> None:
    """Publish tmp as target only if target does not exist, atomically where links work."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise OutputExistsError(str(target)) from None
    except OSError:  # file systems without hard links: check, then rename
        if os.path.lexists(target):
            raise OutputExistsError(str(target)) from None
        os.replace(tmp, target)


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable; some platforms cannot open folders, which is harmless."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _open_image(path: str, data: bytes):
    """Open lazily: the encoder inspects the undecoded file (16-bit PNG) before loading it."""
    from PIL import Image, UnidentifiedImageError

    warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # tiling copes
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise click.ClickException(f"{path}: not an image format Pillow can read") from None
    except Image.DecompressionBombError as e:
        raise click.ClickException(f"{path}: {e}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise click.ClickException(f"{path}: cannot read image ({e})") from None


def _say(message: str, to_stderr: bool) -> None:
    click.echo(message, err=to_stderr)


@click.command()
@click.argument("input_path", metavar="IN")
@click.option("-o", "--output", required=True, help="Output .lsq file, or - for stdout.")
@click.option("--model", default=None, help="Model name or family (see `lsq models`).")
@click.option("--quality", type=click.FloatRange(1, 8), default=None,
              help="1 (smallest files) to 8 (best quality), fractions allowed; "
                   "default: the model's own (about 0.5 bpp for the default model).")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing on success.")
def encode(
    input_path: str,
    output: str,
    model: str | None,
    quality: float | None,
    device: str,
    force: bool,
    quiet: bool,
) -> None:
    """Encode image IN (any format Pillow reads; - for stdin) to an .lsq file."""
    from lsq.models import registry

    check_output(output, force)
    if output == STDIO and sys.stdout.isatty():
        raise click.ClickException("refusing to write binary data to a terminal")
    img = _open_image(input_path, read_input(input_path))
    registry.pick_quality(registry.resolve(model, quality), quality)  # fail before torch loads

    from lsq.models.image_codec import ImageCodecError, encode_image_report

    start = time.perf_counter()
    try:
        stream, report = encode_image_report(img, model, quality, device)
    except ImageCodecError as e:
        raise click.ClickException(f"{input_path}: {e}") from None
    elapsed = time.perf_counter() - start
    write_output(output, stream, force)
    if not quiet:
        err = output == STDIO
        _say(
            f"{output}: {report.nbytes} bytes, {report.bpp:.4f} bpp, {report.width}x"
            f"{report.height} {report.mode}, model {report.model}, {elapsed:.2f} s",
            err,
        )
        for note in report.notes:
            _say(f"note: {note}", err)


def output_format(path: str) -> str:
    """Pillow format name for an output path ('-' writes PNG); checked before decoding."""
    from PIL import Image

    if path == STDIO:
        return "PNG"
    ext = Path(path).suffix.lower()
    fmt = Image.registered_extensions().get(ext)
    if fmt is None or fmt not in Image.SAVE:
        raise click.ClickException(
            f"{path}: unknown output format {ext or '(no extension)'}; use .png, .webp, .jpg..."
        )
    return fmt


def _save_as(img, fmt: str) -> tuple[bytes, list[str]]:
    """Encode the decoded image in `fmt`, dropping alpha when the format cannot hold it."""
    buf = io.BytesIO()
    try:
        img.save(buf, format=fmt)
        return buf.getvalue(), []
    except (OSError, ValueError, KeyError):
        if "A" not in img.getbands():
            raise
    flat = img.convert("L" if img.mode == "LA" else "RGB")
    buf = io.BytesIO()
    flat.save(buf, format=fmt)
    return buf.getvalue(), [f"alpha dropped: {fmt} cannot store it"]


@click.command()
@click.argument("input_path", metavar="IN")
@click.option("-o", "--output", required=True, help="Output image (format from extension).")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS,
              show_default=True, help="Refuse larger images (guards against crafted files).")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing on success.")
@click.option("--reference", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Original image: also print the PSNR (8-bit RGB) of the decoded one.")
def decode(
    input_path: str, output: str, device: str, max_pixels: int, force: bool, quiet: bool,
    reference: str | None,
) -> None:
    """Decode IN.lsq (- for stdin) to an image; - writes PNG to stdout."""
    from lsq.codec.bitstream import unpack
    from lsq.models import registry

    check_output(output, force)
    fmt = output_format(output)
    data = read_input(input_path)
    header, _ = unpack(data)  # corrupt, foreign or unknown-model files fail before torch loads
    registry.verify(header.model, header.weights_hash)

    from lsq.models.image_codec import decode_image

    start = time.perf_counter()
    img = decode_image(data, device, max_pixels)
    elapsed = time.perf_counter() - start
    encoded, notes = _save_as(img, fmt)
    write_output(output, encoded, force)
    if not quiet:
        err = output == STDIO
        _say(f"{output}: {img.width}x{img.height} {img.mode}, {elapsed:.2f} s", err)
        for note in notes:
            _say(f"note: {note}", err)
    if reference is not None:
        _say(f"PSNR {_psnr_against(reference, img):.2f} dB (RGB, 8-bit)", output == STDIO)


def _psnr_against(reference: str, img) -> float:
    """PSNR of a decoded image against the original file, both as 8-bit RGB."""
    import numpy as np
    from PIL import Image

    from lsq.eval.metrics import psnr

    with Image.open(reference) as ref:
        ref_rgb = np.asarray(ref.convert("RGB"))
    rec = np.asarray(img.convert("RGB"))
    if ref_rgb.shape != rec.shape:
        raise click.ClickException(
            f"reference is {ref_rgb.shape[1]}x{ref_rgb.shape[0]}, decoded image is "
            f"{rec.shape[1]}x{rec.shape[0]}")
    return psnr(ref_rgb, rec)


@click.command()
@click.argument("input_path", metavar="FILE")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def info(input_path: str, as_json: bool) -> None:
    """Print the header of an .lsq file (no model needed)."""
    from lsq.codec.bitstream import VERSION, unpack

    data = read_input(input_path)
    header, _ = unpack(data)
    fields = {
        "version": VERSION,
        "model": header.model,
        "weights_hash": header.weights_hash.hex(),
        "width": header.width,
        "height": header.height,
        "mode": header.mode,
        "flags": header.flag_names(),
        "quality": header.quality,
        "tile": header.tile,
        "tile_grid": list(header.grid),
        "latent_shapes": [list(s) for s in header.latent_shapes],
        "section_lengths": list(header.section_lengths),
        "bytes": len(data),
        "bpp": len(data) * 8 / (header.width * header.height),
    }
    if as_json:
        click.echo(json.dumps(fields))
        return
    for key, value in fields.items():
        if key == "flags":
            value = ", ".join(value) or "none"
        elif key in ("latent_shapes", "section_lengths") and len(value) > 8:
            value = f"{value[:8]} ... ({len(value)} in all)"
        elif key == "bpp":
            value = f"{value:.4f}"
        click.echo(f"{key:16} {value}")


@click.command()
def models() -> None:
    """List the shipped models; * marks the default."""
    from lsq.models import registry

    configs = registry.list_models()
    if not configs:
        click.echo(f"no models are shipped (looked in {registry.weights_dir()})")
        return
    default = registry.default_name()
    click.echo(f"  {'name':28} {'family':16} {'qualities':>9} {'default':>7} {'steps':>8}")
    for c in configs:
        mark = "*" if c["name"] == default else " "
        click.echo(
            f"{mark} {c['name']:28} {c['family']:16} {registry.describe_qualities(c):>9} "
            f"{c['default_quality']:>7g} {c.get('steps', '?')!s:>8}"
        )
