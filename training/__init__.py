"""lsq.training: training the lsq models (docs/design.md section 8).

Built for a GPU machine that has PyTorch but no network and may be taken away after half an
hour: the decoded training set lives on the GPU as uint8 and is cropped there, checkpoints
(files of at most 16 MiB) are written every few minutes and picked up again automatically,
and several GPUs go through torchrun (DDP). One module per job: ``config`` (what a run
depends on), ``data``, ``loss``, ``step``, ``validate``, ``throughput``, ``checkpoint``,
``warm_start``, ``sessions`` (the run's history), ``export``, ``distributed``,
``callbacks`` (the policies) and ``trainer``;
``cli`` is ``python -m lsq.training``, which needs neither click nor tqdm.
"""

import importlib

#: Public names and their modules, imported on first use so that ``python -m
#: lsq.training.export`` (or ``.checkpoint``) does not import its own module twice.
_EXPORTS = {"Callback": "callbacks", "TrainingDiverged": "callbacks", "ConfigError": "config",
            "TrainConfig": "config", "Trainer": "trainer", "train": "trainer"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lsq.training' has no attribute {name!r}")
    return getattr(importlib.import_module(f"lsq.training.{_EXPORTS[name]}"), name)
