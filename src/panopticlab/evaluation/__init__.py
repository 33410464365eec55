"""Evaluation: panoptic quality with panopticapi's exact rules, mIoU and instance AP.

* :func:`pq_compute` — drop-in for panopticapi's function on COCO-panoptic files.
* :class:`PanopticEvaluator` — streaming ``reset / process / evaluate`` on in-memory results.
* :func:`evaluate_files` — the file-based path returning the filled evaluator (mIoU, AP,
  per-image breakdown).

See ``docs/evaluation.md``.
"""

from panopticlab.evaluation.categories import CategoryTable
from panopticlab.evaluation.evaluator import PanopticEvaluator, evaluate_image
from panopticlab.evaluation.instance import InstanceAP, encode_id_map
from panopticlab.evaluation.overlap import OverlapRelationEvaluator, front_from_depth, front_from_visible
from panopticlab.evaluation.panoptic_files import evaluate_files, pq_compute, read_id_png
from panopticlab.evaluation.pq import summarize_pq
from panopticlab.evaluation.semantic import ConfusionMatrix

__all__ = [
    "CategoryTable",
    "ConfusionMatrix",
    "InstanceAP",
    "OverlapRelationEvaluator",
    "PanopticEvaluator",
    "encode_id_map",
    "evaluate_files",
    "evaluate_image",
    "front_from_depth",
    "front_from_visible",
    "pq_compute",
    "read_id_png",
    "summarize_pq",
]
