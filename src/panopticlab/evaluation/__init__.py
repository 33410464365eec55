"""Evaluation: panoptic quality with panopticapi's exact rules, mIoU, instance AP, Cityscapes
instance AP and the overlap-relation metric. It imports no model.

* :func:`pq_compute` — drop-in for panopticapi's function on COCO-panoptic files.
* The evaluator protocol (:class:`Evaluator`: ``reset / process / evaluate``, gathering across
  processes inside): :class:`PanopticEvaluator` (PQ, mIoU, AP), :class:`CityscapesInstanceEvaluator`,
  :class:`OverlapRelationEvaluator`.
* :func:`evaluate_files` — the file-based path returning the filled evaluator (mIoU, AP,
  per-image breakdown); :func:`summarize` — the headline numbers of merged results.

See ``docs/evaluation.md``.
"""

from panopticlab.evaluation.categories import CategoryTable
from panopticlab.evaluation.cityscapes_instance import CityscapesInstanceEvaluator, cityscapes_instance_ap
from panopticlab.evaluation.evaluator import PanopticEvaluator, evaluate_image
from panopticlab.evaluation.instance import InstanceAP, encode_id_map
from panopticlab.evaluation.overlap import OverlapRelationEvaluator, front_from_depth, front_from_visible
from panopticlab.evaluation.panoptic_files import evaluate_files, pq_compute
from panopticlab.evaluation.pq import summarize_pq
from panopticlab.evaluation.protocol import Evaluator
from panopticlab.evaluation.report import summarize
from panopticlab.evaluation.semantic import ConfusionMatrix

__all__ = [
    "CategoryTable",
    "CityscapesInstanceEvaluator",
    "ConfusionMatrix",
    "Evaluator",
    "InstanceAP",
    "OverlapRelationEvaluator",
    "PanopticEvaluator",
    "cityscapes_instance_ap",
    "encode_id_map",
    "evaluate_files",
    "evaluate_image",
    "front_from_depth",
    "front_from_visible",
    "pq_compute",
    "summarize",
    "summarize_pq",
]
