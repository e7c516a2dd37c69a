"""Training: the trainer subclass and the ``train(config)`` entry point."""

from slimepo.train.run import TrainResult, train
from slimepo.train.trainer import PreferenceTrainer

__all__ = ["PreferenceTrainer", "TrainResult", "train"]
