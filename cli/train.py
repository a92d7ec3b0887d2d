"""`lsq train` and `lsq pack-shards`: click wrappers over lsq.training / lsq.models.shards.

The options are generated from TrainConfig, the same source as the argparse entry point
``python -m lsq.training`` that the GPU machine (which may lack click) uses.
"""

from __future__ import annotations

from pathlib import Path

import click

from lsq.models.shards import DEFAULT_MAX_BYTES, DEFAULT_VAL_EVERY
from lsq.models.shards import pack_shards as pack
from lsq.training.config import TrainConfig, config_fields


def _config_options(command):
    """Decorate ``command`` with one option per TrainConfig field."""
    for f, scalar, is_list in reversed(config_fields()):
        flag = "--" + f.name.replace("_", "-")
        if scalar is bool:
            option = click.option(f"{flag}/--no-{flag[2:]}", f.name, default=f.default,
                                  show_default=f.default is not None, help=f.metadata["help"])
        elif is_list:
            kind = click.Path(exists=True, file_okay=False) if f.name == "images" else str
            option = click.option(flag, f.name, type=kind, multiple=True,
                                  default=f.default_factory(), show_default=True,
                                  help=f.metadata["help"] + " (repeatable)")
        else:
            option = click.option(flag, f.name, type=scalar, default=f.default,
                                  show_default=f.default is not None, help=f.metadata["help"])
        command = option(command)
    return command


@click.command("train")
@_config_options
def train(**options) -> None:
    """Train one model; resumes from OUT's checkpoint and exports OUT/final.safetensors."""
    from lsq.training import train as run_training

    cfg = TrainConfig(**{k: list(v) if isinstance(v, tuple) else v for k, v in options.items()})
    run_training(cfg)


@click.command("pack-shards")
@click.argument("src", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="shard folder")
@click.option("--max-bytes", default=DEFAULT_MAX_BYTES, show_default=True, type=float,
              help="largest shard file")
@click.option("--val-every", default=DEFAULT_VAL_EVERY, show_default=True, type=int,
              help="every n-th image (sorted by name) is marked held out in the shards "
                   "(training takes its own held-out slice: lsq.training.data)")
def pack_shards(src: tuple[str, ...], out: str, max_bytes: float, val_every: int) -> None:
    """Pack the images under SRC folders into shards for the GPU machine."""
    for path in pack(src, Path(out), max_bytes, val_every):
        click.echo(f"{path}  {path.stat().st_size / 1e6:.1f} MB")
