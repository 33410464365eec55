"""Training, evaluation and prediction for any panopticlab model (see docs/training.md)."""

from panopticlab.engine.inference import evaluate, predict_files, test
from panopticlab.engine.trainer import train

__all__ = ["evaluate", "predict_files", "test", "train"]
