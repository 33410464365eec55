"""Evaluation over a configured split, for any model of the contract (``models/base.py``).

:func:`inference_on_dataset` runs ``model.predict`` over a loader and hands every batch to a
list of evaluators (the protocol of :mod:`panopticlab.evaluation.protocol`), whose results it
merges; it knows no evaluator and no model family by name. :func:`standard_evaluators` is the
list a config asks for (PQ / mIoU / AP, the Cityscapes instance AP when configured) plus the
model's own (``model.evaluators()``, e.g. SOGNet's overlap relation).

``test`` adds the prediction writer (COCO panoptic PNGs + JSON, :mod:`.predictions`) and writes
``metrics.json``. Under ``torchrun`` every process predicts its share of the images and the
evaluators gather across processes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from panopticlab import distributed
from panopticlab.config import Config
from panopticlab.data.build import build_dataset, build_test_loader, check_categories
from panopticlab.engine.predictions import PredictionWriter
from panopticlab.errors import InputError
from panopticlab.evaluation import CityscapesInstanceEvaluator, Evaluator, PanopticEvaluator, summarize
from panopticlab.evaluation.report import to_jsonable
from panopticlab.fileio import write_json
from panopticlab.models import load_model
from panopticlab.models.base import PanopticModel
from panopticlab.progress import ProgressFactory, no_progress

logger = logging.getLogger(__name__)


def standard_evaluators(model: PanopticModel, config: Config) -> list[Evaluator]:
    """PQ, mIoU (and AP with ``test.compute_ap``), the Cityscapes instance AP when
    ``test.cityscapes_instance_gt`` names a gtFine split, and the model's own evaluators."""
    evaluators: list[Evaluator] = [PanopticEvaluator(model.categories, compute_ap=config.test.compute_ap, class_agnostic=True)]
    if config.test.cityscapes_instance_gt:
        evaluators.append(CityscapesInstanceEvaluator(Path(config.data.root) / config.test.cityscapes_instance_gt))
    return evaluators + model.evaluators()


@torch.no_grad()
def inference_on_dataset(
    model: PanopticModel, loader: Any, evaluators: Sequence[Evaluator], *, progress: ProgressFactory = no_progress
) -> dict[str, Any]:
    """Predict every item of ``loader`` (lists of dataset items) and feed each batch to every
    evaluator; returns their merged results with ``summary`` (headline numbers in percent) added.
    ``progress`` counts the batches."""
    for evaluator in evaluators:
        evaluator.reset()
    with progress("evaluate", len(loader)) as advance:
        for batch in loader:
            predictions = model.predict([item["image"] for item in batch])
            for evaluator in evaluators:
                evaluator.process(batch, predictions)
            advance(1)
    results: dict[str, Any] = {}
    for evaluator in evaluators:
        results.update(evaluator.evaluate())
    results["summary"] = summarize(results)
    return results


def evaluate(model: PanopticModel, loader: Any, config: Config) -> dict[str, Any]:
    """:func:`inference_on_dataset` with the :func:`standard_evaluators` of ``config``."""
    return inference_on_dataset(model, loader, standard_evaluators(model, config))


def test(
    config: Config,
    weights: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    *,
    overwrite: bool = False,
    progress: ProgressFactory = no_progress,
) -> dict[str, Any]:
    """Evaluate ``weights`` on the config's ``data.test`` split (``progress``: a bar over its batches).

    Writes to ``output_dir`` (default ``<config.output_dir>/test``): ``predictions/panoptic/*.png``
    and ``predictions/panoptic.json`` (COCO panoptic, segments with scores), and
    ``metrics.json`` (the evaluators' results; ``summary`` in percent).

    Returns:
        the merged results of the evaluators (see :func:`inference_on_dataset`).
    """
    output_dir = Path(output_dir) if output_dir is not None else Path(config.output_dir) / "test"
    predictions_json = output_dir / "predictions" / "panoptic.json"
    if predictions_json.exists() and not overwrite:
        raise InputError(f"{predictions_json}: already exists (pass --overwrite to replace it)")
    process = distributed.setup(config.device)
    try:
        model = load_model(config, weights, device=process.device)
        dataset = build_dataset(config, "test", instances=model.uses_instances)
        check_categories(dataset, model.categories, where=f"data.test ({dataset.panoptic.json_file})")
        loader = build_test_loader(config, dataset, rank=process.rank, world_size=process.world_size)
        writer = PredictionWriter(predictions_json, dataset)
        evaluators = [writer, *standard_evaluators(model, config)]
        results = inference_on_dataset(model, loader, evaluators, progress=progress if process.is_main else no_progress)
        if process.is_main:
            write_json(output_dir / "metrics.json", to_jsonable(results), indent=1)
            logger.info("wrote predictions and metrics to %s", output_dir)
        return results
    finally:
        distributed.teardown(process)

