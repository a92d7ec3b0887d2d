"""`lsq train` and `lsq pack-shards`: click wrappers over lsq.models.train / lsq.models.shards.

The options are generated from TrainConfig, the same source as the argparse entry point
``python -m lsq.models.train`` that the GPU machine (which may lack click) uses.
"""

from __future__ import annotations

from pathlib import Path

import click

from lsq.models.shards import DEFAULT_MAX_BYTES, DEFAULT_VAL_EVERY
from lsq.models.shards import pack_shards as pack
from lsq.models.train import TrainConfig, config_fields
from lsq.models.train import train as run_training


def _config_options(command):
    """Decorate ``command`` with one option per TrainConfig field."""
    for f, scalar, is_list in reversed(config_fields()):
        flag = "--" + f.name.replace("_", "-")
        if scalar is bool:
            option = click.option(f"{flag}/--no-{flag[2:]}", f.name, default=f.default,
                                  show_default=True, help=f.metadata["help"])
        elif is_list:
            option = click.option(flag, f.name, type=click.Path(exists=True, file_okay=False),
                                  multiple=True, help=f.metadata["help"] + " (repeatable)")
        else:
            option = click.option(flag, f.name, type=scalar, default=f.default,
                                  show_default=f.default is not None, help=f.metadata["help"])
        command = option(command)
    return command


@click.command("train")
@_config_options
def train(**options) -> None:
    """Train one model; resumes from OUT's checkpoint and exports OUT/final.safetensors."""
    options["images"] = list(options["images"])
    run_training(TrainConfig(**options))


@click.command("pack-shards")
@click.argument("src", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="shard folder")
@click.option("--max-bytes", default=DEFAULT_MAX_BYTES, show_default=True, type=float,
              help="largest shard file")
@click.option("--val-every", default=DEFAULT_VAL_EVERY, show_default=True, type=int,
              help="every n-th image (sorted by name) is held out for validation")
def pack_shards(src: tuple[str, ...], out: str, max_bytes: float, val_every: int) -> None:
    """Pack the images under SRC folders into shards for the GPU machine."""
    for path in pack(src, Path(out), max_bytes, val_every):
        click.echo(f"{path}  {path.stat().st_size / 1e6:.1f} MB")
