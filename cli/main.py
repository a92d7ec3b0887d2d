"""The `lsq` command group: registers every command and turns errors into one stderr line.

Exit codes: 0 success; 1 an expected error (bad input, corrupt file, unknown model, I/O);
2 a usage error (click); 70 an internal error; 130 interrupted. Set LSQ_DEBUG=1 to get the
full traceback of an internal error instead of the one-line message.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import click

from lsq import __version__
from lsq.extras import hint as missing_extra

INTERNAL_ERROR = 70

# compressai (training) calls torch.jit.script at import; its deprecation notice is noise.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated")


class CodecClickException(click.ClickException):
    """A ClickException whose message is forced onto one line."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(" ".join(str(message).split()))
        self.exit_code = exit_code


# Exceptions meaning the user's input or environment is wrong, not lsq. Looked up in
# sys.modules: a module that was never imported cannot have raised, and importing it here
# just to print an error would load torch.
EXPECTED_ERRORS = {
    "PIL.Image": ("DecompressionBombError", "UnidentifiedImageError"),
    "lsq.codec.bitstream": ("BitstreamError",),
    "lsq.image_codec": ("DeviceError", "ImageCodecError"),
    "lsq.models.registry": ("ModelMismatchError", "RegistryError", "UnknownModelError"),
    "lsq.training": ("ConfigError", "TrainingDiverged"),
}


def _expected_errors() -> tuple[type[BaseException], ...]:
    return tuple(
        getattr(sys.modules[module], name)
        for module, names in EXPECTED_ERRORS.items()
        if module in sys.modules
        for name in names
    )


def describe_os_error(e: OSError) -> str:
    """'path: reason' for file-system errors such as a full disk or a denied permission."""
    reason = e.strerror or str(e)
    return f"{e.filename}: {reason}" if e.filename else reason


# Command name -> (module, attribute, one-line help). Modules are imported only when their
# command runs, so `lsq --help` lists them from this table without loading torch
# (tests/test_cli.py checks that each line matches its command's own help).
COMMANDS = {
    "encode": ("lsq.cli.coding", "encode",
               "Encode images (any format Pillow reads; - for stdin) to .lsq files."),
    "decode": ("lsq.cli.coding", "decode",
               "Decode .lsq files (- for stdin) to images; - writes PNG to stdout."),
    "info": ("lsq.cli.coding", "info", "Print the header of an .lsq file (no model needed)."),
    "models": ("lsq.cli.coding", "models", "List the shipped models; * marks the default."),
    "eval": ("lsq.cli.evaluate", "eval",
             "Measure rate-distortion of codecs on a dataset; resumes from OUT/.cache."),
    "plot": ("lsq.cli.evaluate", "plot",
             "Plot PSNR and MS-SSIM(dB) against bpp; writes OUTPUT and OUTPUT with .svg."),
    "bdrate": ("lsq.cli.evaluate", "bdrate",
               "Print a Markdown BD-rate table of every curve against ANCHOR."),
    "train": ("lsq.cli.train", "train",
              "Train one model; resumes from OUT's checkpoint and exports OUT/final.safetensors."),
    "pack-shards": ("lsq.cli.train", "pack_shards",
                    "Pack the images under SRC folders into shards for the GPU machine."),
}


#: Commands whose process may end without the interpreter's teardown (LsqGroup.main):
#: everything they write is written and closed before they return.
FAST_EXIT = frozenset({"encode", "decode"})


def to_click_exception(e: Exception) -> click.ClickException | click.exceptions.Exit:
    """The one-line error (exit 1) or internal error (exit 70) that stands for `e`.

    With LSQ_DEBUG set, an internal error is re-raised so that its traceback shows.
    """
    if isinstance(e, click.ClickException):
        return e
    if isinstance(e, OSError) and e.errno == errno.EPIPE:
        _silence_stdout()
        return click.exceptions.Exit(1)
    if isinstance(e, _expected_errors()):
        return CodecClickException(str(e))
    if isinstance(e, OSError):
        _silence_stdout()
        return CodecClickException(describe_os_error(e))
    if isinstance(e, ModuleNotFoundError) and missing_extra(e):
        return CodecClickException(missing_extra(e))
    if os.environ.get("LSQ_DEBUG"):
        raise e
    return CodecClickException(f"internal error: {type(e).__name__}: {e}", INTERNAL_ERROR)


class LsqGroup(click.Group):
    """Lazily loads commands and converts any exception into a single line and exit code."""

    resolved: str | None = None  # the command main is running

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_) for name, (_, _, help_) in COMMANDS.items()])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """The command, imported now; a module that fails to load is an internal error."""
        if cmd_name not in COMMANDS:
            return None
        module_name, attr, _ = COMMANDS[cmd_name]
        try:
            command = getattr(importlib.import_module(module_name), attr)
            if not isinstance(command, click.Command):
                raise TypeError(f"{module_name}.{attr} is not a click command")
        except Exception as e:
            if isinstance(e, ModuleNotFoundError) and missing_extra(e):
                raise CodecClickException(missing_extra(e)) from None
            if os.environ.get("LSQ_DEBUG"):
                raise
            raise CodecClickException(
                f"internal error: command {cmd_name!r} cannot be loaded: {type(e).__name__}: {e}",
                INTERNAL_ERROR,
            ) from None
        return command

    def resolve_command(self, ctx: click.Context, args: list[str]
                        ) -> tuple[str | None, click.Command | None, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        self.resolved = name
        return name, command, rest

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        """click's main. Called as the program (no ``args``: it parses sys.argv and ends the
        process), a FAST_EXIT command that loaded torch ends the process without the
        interpreter's teardown: the atexit handlers run and the streams are flushed, then
        os._exit skips destroying every module and libtorch's operator tables, a noticeable
        part of a short command's time that cannot change its outcome."""
        as_program = args is None and standalone_mode
        self.resolved = None
        try:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        except SystemExit as e:
            if (as_program and self.resolved in FAST_EXIT and "torch" in sys.modules
                    and isinstance(e.code, int | None)):
                _exit_now(e.code or 0)
            raise

    def invoke(self, ctx: click.Context):
        try:
            result = super().invoke(ctx)
            _flush_stdout()  # a full disk or closed pipe on stdout is an error of this command
            return result
        except click.UsageError as e:
            e.ctx = None  # one line: no usage block, no hint
            raise
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            raise CodecClickException("interrupted", 130) from None
        except Exception as e:
            raise to_click_exception(e) from None


def _flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except OSError:
        _silence_stdout()
        raise


def _exit_now(code: int) -> None:
    """End the process with ``code`` after the atexit handlers, without the interpreter's
    teardown; returns only if a stream cannot be flushed (the normal exit reports it)."""
    import atexit

    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return
    os._exit(code)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's exit flush cannot fail again."""
    try:
        sys.stdout.flush()
    except OSError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


@click.group(cls=LsqGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="lsq")
def main() -> None:
    """lsq: learned image codec with Leech-lattice quantization."""


if __name__ == "__main__":
    main()
