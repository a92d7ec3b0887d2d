"""lsq.training: training the lsq models (DESIGN.md, section 8).

Built for a GPU machine that has PyTorch but no network and may be taken away after half an
hour: the decoded training set lives on the GPU as uint8 and is cropped there, checkpoints
(files of at most 16 MiB) are written every few minutes and picked up again automatically,
and several GPUs go through torchrun (DDP). One module per job: ``config`` (what a run
depends on), ``data``, ``loss``, ``step``, ``validate``, ``throughput``, ``checkpoint``,
``warm_start``, ``export``, ``distributed``, ``callbacks`` (the policies) and ``trainer``;
``cli`` is ``python -m lsq.training``, which needs neither click nor tqdm.
"""

from lsq.training.callbacks import Callback, TrainingDiverged
from lsq.training.config import ConfigError, TrainConfig
from lsq.training.trainer import Trainer, train

__all__ = ["Callback", "ConfigError", "TrainConfig", "Trainer", "TrainingDiverged", "train"]
