"""The argparse command line of ``python -m lsq.training`` (the GPU machine may lack click):
one flag per TrainConfig field, and one-line errors with exit status 1 for what the user got
wrong."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from .callbacks import TrainingDiverged
from .config import ConfigError, TrainConfig, config_fields

# compressai calls torch.jit.script at import; its deprecation notice is noise for users.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated")


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(
        prog="python -m lsq.training", description="Train one lsq model; resumes from OUT's "
        "checkpoint and exports OUT/final.safetensors.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f, scalar, is_list in config_fields():
        flag = "--" + f.name.replace("_", "-")
        default = f.default_factory() if is_list else f.default
        if scalar is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default,
                                help=f.metadata["help"])
        else:
            parser.add_argument(flag, type=scalar, default=default,
                                nargs="+" if is_list else None, help=f.metadata["help"])
    return TrainConfig(**vars(parser.parse_args(argv)))


def main(argv: Sequence[str] | None = None) -> None:
    from .trainer import train

    cfg = parse_args(argv)
    try:
        train(cfg)
    except (ConfigError, TrainingDiverged, OSError) as e:
        sys.exit(f"lsq.training: {' '.join(str(e).split())}")
