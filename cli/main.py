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
from importlib.util import find_spec

import click

from lsq import __version__

INTERNAL_ERROR = 70

# compressai calls torch.jit.script at import; its deprecation notice is noise for users.
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
    "lsq.models.image_codec": ("DeviceError", "ImageCodecError"),
    "lsq.models.registry": ("ModelMismatchError", "RegistryError", "UnknownModelError"),
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


# Command name -> (module, attribute). Modules are imported only when their command runs,
# so `lsq --help` stays fast and a missing optional module only hides its commands.
COMMANDS = {
    "encode": ("lsq.cli.coding", "encode"),
    "decode": ("lsq.cli.coding", "decode"),
    "info": ("lsq.cli.coding", "info"),
    "models": ("lsq.cli.coding", "models"),
    "eval": ("lsq.cli.evaluate", "eval"),
    "plot": ("lsq.cli.evaluate", "plot"),
    "bdrate": ("lsq.cli.evaluate", "bdrate"),
    "train": ("lsq.cli.train", "train"),
    "pack-shards": ("lsq.cli.train", "pack_shards"),
}


class LsqGroup(click.Group):
    """Lazily loads commands and converts any exception into a single line and exit code."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, (module, _) in COMMANDS.items() if find_spec(module)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module_name, attr = COMMANDS[cmd_name]
        try:
            command = getattr(importlib.import_module(module_name), attr, None)
        except ImportError:
            return None
        return command if isinstance(command, click.Command) else None

    def invoke(self, ctx: click.Context):
        try:
            result = super().invoke(ctx)
            _flush_stdout()  # a full disk or closed pipe on stdout is an error of this command
            return result
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            raise CodecClickException("interrupted", 130) from None
        except Exception as e:
            if isinstance(e, OSError) and e.errno == errno.EPIPE:
                _silence_stdout()
                raise click.exceptions.Exit(1) from None
            if isinstance(e, _expected_errors()):
                raise CodecClickException(str(e)) from None
            if isinstance(e, OSError):
                _silence_stdout()
                raise CodecClickException(describe_os_error(e)) from None
            if os.environ.get("LSQ_DEBUG"):
                raise
            raise CodecClickException(
                f"internal error: {type(e).__name__}: {e}", INTERNAL_ERROR
            ) from None


def _flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except OSError:
        _silence_stdout()
        raise


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's exit flush cannot fail again."""
    try:
        sys.stdout.flush()
    except OSError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


@click.group(cls=LsqGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lsq")
def main() -> None:
    """lsq: learned image codec with Leech-lattice quantization."""


if __name__ == "__main__":
    main()
