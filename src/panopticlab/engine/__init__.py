"""Training, evaluation and prediction for any panopticlab model (see docs/training.md)."""

from panopticlab.engine.inference import evaluate, inference_on_dataset, standard_evaluators, test
from panopticlab.engine.predictions import PredictionWriter, predict_files
from panopticlab.engine.trainer import train

__all__ = ["PredictionWriter", "evaluate", "inference_on_dataset", "predict_files", "standard_evaluators", "test", "train"]
