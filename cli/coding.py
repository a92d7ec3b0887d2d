"""Thin click commands around `lsq.image_codec`: encode, decode, info, models.

Heavy modules (torch, the models) are imported inside the commands, after every check that
needs neither (inputs, outputs, the stream's header), so that `lsq --help`, `lsq info` and
those errors stay fast; a missing CUDA is refused once torch is in, before any model.
`encode` and `decode` take several inputs in one process (one model load) when -o names a
folder. Outputs are written atomically by `lsq.fileio.open_atomic`; an existing file is
never clobbered without --force and never lost when writing fails.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import io
import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import click

from lsq.cli.main import INTERNAL_ERROR, CodecClickException, to_click_exception
from lsq.codec.bitstream import DEFAULT_MAX_PIXELS
from lsq.fileio import open_atomic

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
    """Fail before doing any work when the output would be refused anyway: it exists (without
    --force), its folder is missing, or no file can be created there (probed as
    `write_atomic` would write: a temporary file beside it, removed at once)."""
    if path == STDIO:
        return
    if not force and os.path.lexists(path):
        raise OutputExistsError(path)
    folder = Path(path).parent
    if not folder.is_dir():
        raise click.ClickException(f"{path}: folder {folder} does not exist")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{Path(path).name}.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise click.ClickException(
            f"{path}: cannot write in folder {folder} ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(probe)


def _import_coding_modules() -> None:
    """Import torch and the coding modules with the garbage collector paused, then freeze
    what they made: the import allocates so many long-lived objects (they stay until the
    process ends) that the collector's passes over them, during the import and again at
    exit, are a large part of the command's start-up."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        import lsq.image_codec
        import lsq.models.spec  # noqa: F401  (built by the registry when the model loads)
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


@functools.cache
def prepare_torch(device: str, threads: int | None) -> None:
    """Import torch (its OpenMP threads set to sleep while they wait), refuse a device this
    machine lacks and set the thread count: once per command, before any model loads."""
    from lsq import threads as torch_threads

    torch_threads.before_torch()
    _import_coding_modules()

    from lsq.image_codec import check_device

    check_device(device)
    torch_threads.set_threads(threads)


def write_output(path: str, data: bytes, force: bool) -> None:
    """Write atomically (lsq.fileio.write_atomic); '-' writes to stdout."""
    if path == STDIO:
        # Unbuffered, so a failed write (full disk, closed pipe) leaves nothing to retry at exit.
        sys.stdout.flush()
        view = memoryview(data)
        while view:
            view = view[os.write(sys.stdout.fileno(), view) :]
        return
    with open_output(path, force) as f:
        f.write(data)


@contextlib.contextmanager
def open_output(path: str, force: bool) -> Iterator[BinaryIO]:
    """A file to write ``path`` through atomically (lsq.fileio.open_atomic); an existing
    file without --force is an OutputExistsError."""
    try:
        with open_atomic(path, overwrite=force) as f:
            yield f
    except FileExistsError:
        raise OutputExistsError(path) from None


def is_folder_output(inputs: tuple[str, ...], output: str) -> bool:
    """Several inputs, or -o naming a folder (existing, or ending in a slash)."""
    return len(inputs) > 1 or output.endswith(("/", os.sep)) or Path(output).is_dir()


def plan(inputs: tuple[str, ...], output: str, suffix: str) -> list[tuple[str, str]]:
    """(input, output) pairs: -o itself for one input, else FOLDER/<input stem><suffix>.

    Refuses, before any work, stdin among several inputs, stdout for several outputs and
    two inputs that would be written to the same file. The caller makes the folder.
    """
    if not is_folder_output(inputs, output):
        return [(inputs[0], output)]
    if output == STDIO:
        raise click.ClickException("-o - takes a single input")
    if STDIO in inputs:
        raise click.ClickException("stdin (-) needs -o FILE or -o -, not a folder")
    folder = Path(output)
    if not folder.is_dir():
        if os.path.lexists(folder):
            raise click.ClickException(f"{output}: not a folder (several inputs need -o FOLDER/)")
        if not folder.parent.is_dir():
            raise click.ClickException(f"{output}: folder {folder.parent} does not exist")
    jobs, seen = [], {}
    for src in inputs:
        dst = str(folder / (Path(src).stem + suffix))
        if dst in seen:
            raise click.ClickException(f"{seen[dst]} and {src} would both be written to {dst}")
        seen[dst] = src
        jobs.append((src, dst))
    return jobs


class Progress:
    """A progress bar on stderr when it is a terminal, and the lines printed around it.

    The bar (tqdm, imported only then) appears once there are two steps or more; otherwise,
    and off a terminal, only the per-file lines are printed.
    """

    def __init__(self, unit: str, quiet: bool) -> None:
        self.unit = unit
        self.enabled = not quiet and sys.stderr.isatty()
        self.bar = None

    def step(self, done: int, total: int) -> None:
        """`done` of `total` steps are complete."""
        if not self.enabled or total < 2:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit=self.unit, file=sys.stderr, leave=False)
        self.bar.update(done - self.bar.n)

    def echo(self, message: str, err: bool = False) -> None:
        """One line on stdout (stderr with err), written above the bar if there is one."""
        if self.bar is None:
            click.echo(message, err=err)
        else:
            self.bar.write(message, file=sys.stderr if err else sys.stdout)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run_all(jobs: list[tuple[str, str]], work, quiet: bool) -> None:
    """Run work(src, dst, on_tile) -> lines for every job and print its lines.

    One job: its error propagates as is (one line). Several: a progress bar on a terminal,
    each failure named on stderr while the others go on, then a non-zero exit (70 if any
    failure was an internal error) once all were tried.
    """
    err = jobs[-1][1] == STDIO  # our lines must not mix with data on stdout
    if len(jobs) == 1:
        progress = Progress("tile", quiet)
        try:
            lines = work(*jobs[0], progress.step)
        finally:
            progress.close()
        for line in [] if quiet else lines:
            click.echo(line, err=err)
        return
    progress = Progress("file", quiet)
    failed, internal = [], False
    try:
        progress.step(0, len(jobs))  # the bar shows from the start of the first file
        for done, (src, dst) in enumerate(jobs, 1):
            try:
                lines = work(src, dst, None)
            except Exception as e:
                error = to_click_exception(e)
                message = error.format_message() if isinstance(error, click.ClickException) \
                    else "broken pipe"
                internal |= getattr(error, "exit_code", 1) == INTERNAL_ERROR
                failed.append(src)
                name = "" if message.startswith(f"{src}:") else f"{src}: "
                progress.echo(f"Error: {name}{message}", err=True)
            else:
                for line in [] if quiet else lines:
                    progress.echo(line)
            progress.step(done, len(jobs))
    finally:
        progress.close()
    if failed:
        code = INTERNAL_ERROR if internal else 1
        raise CodecClickException(f"{len(failed)} of {len(jobs)} files failed", code)


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


def _threads_option(command):
    return click.option(
        "--threads", type=click.IntRange(min=1), default=None,
        help="CPU threads for the networks; default: one per core (or OMP_NUM_THREADS).",
    )(command)


@click.command()
@click.argument("inputs", metavar="IN...", nargs=-1, required=True)
@click.option("-o", "--output", required=True,
              help="Output .lsq file, - for stdout, or a folder (FOLDER/) for IN.lsq files.")
@click.option("--model", default=None, help="Model name or family (see `lsq models`).")
@click.option("-q", "--quality", type=click.FloatRange(1, 8), default=None,
              help="1 (smallest files) to 8 (best quality), fractions allowed; "
                   "default: the model's own (about 0.5 bpp for the default model).")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@_threads_option
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
@click.option("--quiet", is_flag=True, help="Print nothing on success.")
def encode(
    inputs: tuple[str, ...],
    output: str,
    model: str | None,
    quality: float | None,
    device: str,
    threads: int | None,
    force: bool,
    quiet: bool,
) -> None:
    """Encode images (any format Pillow reads; - for stdin) to .lsq files.

    Several inputs, or -o naming a folder, write FOLDER/<name>.lsq for each; a failed file
    is named and the others are still written.
    """
    from lsq.models import registry

    jobs = plan(inputs, output, ".lsq")
    if output == STDIO and sys.stdout.isatty():
        raise click.ClickException("refusing to write binary data to a terminal")
    registry.pick_quality(registry.resolve(model, quality), quality)  # fail before torch loads
    if len(jobs) > 1:  # once, rather than once per file
        prepare_torch(device, threads)

    def work(src: str, dst: str, on_tile) -> list[str]:
        check_output(dst, force)
        img = _open_image(src, read_input(src))
        prepare_torch(device, threads)

        from lsq.image_codec import ImageCodecError, encode_image_report

        start = time.perf_counter()
        try:
            stream, report = encode_image_report(img, model, quality, device, on_tile=on_tile)
        except ImageCodecError as e:
            raise click.ClickException(f"{src}: {e}") from None
        elapsed = time.perf_counter() - start
        write_output(dst, stream, force)
        line = (f"{dst}: {report.nbytes} bytes, {report.bpp:.4f} bpp, {report.width}x"
                f"{report.height} {report.mode}, model {report.model} at quality "
                f"{report.quality:.10g}, {elapsed:.2f} s")
        return [line] + [f"note: {note}" for note in report.notes]

    if is_folder_output(inputs, output):
        Path(output).mkdir(exist_ok=True)
    run_all(jobs, work, quiet)


#: Pillow formats that lose detail on writing and take --output-quality (1-100).
LOSSY_FORMATS = ("JPEG", "WEBP", "AVIF")
DEFAULT_OUTPUT_QUALITY = 95


def output_format(path: str, output_quality: int | None = None) -> str:
    """Pillow format name for an output path ('-' writes PNG); checked before decoding."""
    from PIL import Image

    if path == STDIO:
        fmt = "PNG"
    else:
        ext = Path(path).suffix.lower()
        Image.preinit()  # PNG, JPEG and the other common formats, not every plugin
        fmt = Image.EXTENSION.get(ext)
        if fmt not in Image.SAVE:
            fmt = Image.registered_extensions().get(ext)  # imports every plugin
        if fmt not in Image.SAVE:
            raise click.ClickException(
                f"{path}: unknown output format {ext or '(no extension)'}; use .png, .webp, "
                ".jpg...")
    if output_quality is not None and fmt not in LOSSY_FORMATS:
        raise click.ClickException(
            f"{path}: --output-quality applies to {', '.join(LOSSY_FORMATS)} outputs, "
            f"not {fmt}")
    return fmt


def _save_as(img, fmt: str, output_quality: int | None) -> tuple[bytes, list[str]]:
    """Encode the decoded image in `fmt`, dropping alpha when the format cannot hold it;
    the notes say what was lost."""
    options, notes = {}, []
    if fmt in LOSSY_FORMATS:
        options["quality"] = DEFAULT_OUTPUT_QUALITY if output_quality is None else output_quality
        notes.append(f"{fmt} is lossy: written at quality {options['quality']} "
                     "(--output-quality 1-100; .png keeps the decoded pixels)")
    buf = io.BytesIO()
    try:
        img.save(buf, format=fmt, **options)
        return buf.getvalue(), notes
    except (OSError, ValueError, KeyError):
        if "A" not in img.getbands():
            raise
    flat = img.convert("L" if img.mode == "LA" else "RGB")
    buf = io.BytesIO()
    flat.save(buf, format=fmt, **options)
    return buf.getvalue(), [f"alpha dropped: {fmt} cannot store it", *notes]


def check_max_pixels(path: str, header, max_pixels: int) -> None:
    """Refuse an oversized image from its header alone, before torch or the model load."""
    if header.width * header.height > max_pixels:
        raise click.ClickException(
            f"{path}: image {header.width}x{header.height} exceeds the decoding limit of "
            f"{max_pixels} pixels (raise it with --max-pixels)")


@click.command()
@click.argument("inputs", metavar="IN...", nargs=-1, required=True)
@click.option("-o", "--output", required=True,
              help="Output image (format from extension), - for stdout, or a folder (FOLDER/).")
@click.option("--format", "ext", default="png", show_default=True,
              help="Extension of the images written into a folder.")
@click.option("--output-quality", type=click.IntRange(1, 100), default=None,
              help=f"Quality of a lossy output (.jpg, .webp, .avif), 1-100 "
                   f"[default: {DEFAULT_OUTPUT_QUALITY}].")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@_threads_option
@click.option("--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS,
              show_default=True, help="Refuse larger images (guards against crafted files).")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
@click.option("--quiet", is_flag=True, help="Print nothing on success.")
@click.option("--reference", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Original image (one input only): also print the PSNR of the file written.")
def decode(
    inputs: tuple[str, ...], output: str, ext: str, output_quality: int | None, device: str,
    threads: int | None, max_pixels: int, force: bool, quiet: bool, reference: str | None,
) -> None:
    """Decode .lsq files (- for stdin) to images; - writes PNG to stdout.

    Several inputs, or -o naming a folder, write FOLDER/<name>.<format> for each; a failed
    file is named and the others are still written.
    """
    from lsq.codec.bitstream import unpack
    from lsq.models import registry

    jobs = plan(inputs, output, "." + ext.lstrip("."))
    if reference is not None and len(jobs) > 1:
        raise click.ClickException("--reference needs a single input")
    if is_folder_output(inputs, output):
        output_format(jobs[0][1], output_quality)  # all share one extension: checked up front
    if len(jobs) > 1:
        prepare_torch(device, threads)

    def work(src: str, dst: str, on_tile) -> list[str]:
        check_output(dst, force)
        fmt = output_format(dst, output_quality)
        data = read_input(src)
        header, _ = unpack(data)  # corrupt, foreign or unknown-model files fail before torch
        check_max_pixels(src, header, max_pixels)
        registry.verify(header.model, header.weights_hash)
        ref_rgb = None if reference is None else _reference_rgb(reference, header)
        prepare_torch(device, threads)

        from lsq.image_codec import decode_image, decode_to_png, decoded_mode

        start = time.perf_counter()
        if fmt == "PNG" and dst != STDIO:  # streamed to the file: the image is never whole
            img, encoded, notes = None, b"", []
            with open_output(dst, force) as f:
                decode_to_png(data, f, device, max_pixels, on_tile=on_tile)
            size, mode = (header.width, header.height), decoded_mode(header)
        else:
            img = decode_image(data, device, max_pixels, on_tile=on_tile)
            encoded, notes = _save_as(img, fmt, output_quality)
            write_output(dst, encoded, force)
            size, mode = img.size, img.mode
        elapsed = time.perf_counter() - start
        lines = [f"{dst}: {size[0]}x{size[1]} {mode}, {elapsed:.2f} s"]
        lines += [f"note: {note}" for note in notes]
        if ref_rgb is not None:
            lines.append(_psnr_line(ref_rgb, img, dst, encoded, fmt))
        return lines

    if is_folder_output(inputs, output):
        Path(output).mkdir(exist_ok=True)
    run_all(jobs, work, quiet)


def _reference_rgb(reference: str, header):
    """The original as 8-bit RGB (EXIF orientation applied, as the encoder does), refused
    before decoding when its size is not the stream's."""
    import numpy as np
    from PIL import Image, ImageOps

    try:
        with Image.open(reference) as ref:
            rgb = np.asarray(ImageOps.exif_transpose(ref).convert("RGB"))
    except (OSError, SyntaxError, ValueError) as e:
        raise click.ClickException(f"{reference}: cannot read image ({e})") from None
    if rgb.shape[:2] != (header.height, header.width):
        raise click.ClickException(
            f"reference is {rgb.shape[1]}x{rgb.shape[0]}, the stream's image is "
            f"{header.width}x{header.height}")
    return rgb


def _psnr_line(ref_rgb, img, dst: str, encoded: bytes, fmt: str) -> str:
    """PSNR of the file as written (read back from disk; from its bytes for stdout) and, when
    the format is lossy, of the decoded pixels ``img`` before it."""
    import numpy as np
    from PIL import Image

    from lsq.eval.metrics import psnr

    source = io.BytesIO(encoded) if dst == STDIO else dst
    with Image.open(source) as written:
        written_psnr = psnr(ref_rgb, np.asarray(written.convert("RGB")))
    line = f"PSNR {written_psnr:.2f} dB (RGB, 8-bit) of {'stdout' if dst == STDIO else dst}"
    if fmt in LOSSY_FORMATS:
        line += f"; {psnr(ref_rgb, np.asarray(img.convert('RGB'))):.2f} dB before {fmt}"
    return line


@click.command()
@click.argument("input_path", metavar="FILE")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def info(input_path: str, as_json: bool) -> None:
    """Print the header of an .lsq file (no model needed)."""
    from lsq.codec.bitstream import MAGIC, unpack

    data = read_input(input_path)
    header, _ = unpack(data)
    fields = {
        "version": data[len(MAGIC)],  # the stream's own format version byte
        "model": header.model,
        "model_version": header.model_version,  # 0: unreleased weights, or a version-2 stream
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
    """List the shipped models; * marks the default.

    Each installed weights file is shown with its version and hash; models that the version
    table knows but that are not installed are listed with where to get them.
    """
    from lsq.models import registry

    configs = registry.list_models()
    if not configs:
        click.echo(f"no models are shipped (looked in {registry.weights_dir()})")
    else:
        default = registry.default_name()
        click.echo(f"  {'name':20} {'family':16} {'qualities':>9} {'default':>10} {'steps':>8}"
                   "  version")
        files: dict[str, list[str]] = {}
        for name, path, digest in registry.installed():
            files.setdefault(name, []).append(
                f"{registry.version_of(name, digest) or 'unreleased'} ({digest.hex()}"
                + (f", {path.name})" if registry.VERSION_MARK in path.stem else ")"))
        for c in configs:
            mark = "*" if c["name"] == default else " "
            click.echo(
                f"{mark} {c['name']:20} {c['family']:16} {registry.describe_qualities(c):>9} "
                f"{c['default_quality']:>10.10g} {c.get('steps', '?')!s:>8}  "
                + "; ".join(files.get(c["name"], []))
            )
        known = registry.purposes()
        uses = [(c["name"], known.get(c["name"], "")) for c in configs]
        if any(text for _, text in uses):
            click.echo("what each is for:")
            for name, text in uses:
                click.echo(f"  {name:20} {text or '-'}")
    missing = registry.not_installed()
    if missing:
        click.echo(f"not installed (put NAME.safetensors in {registry.weights_dir()} or in a "
                   f"folder named by {registry.WEIGHTS_ENV}):")
        for name, entry in missing:
            click.echo(f"  {name:20} version {entry['version']}: {entry['where']}")
