"""Semantic segmentation scores (mIoU) from the same pixel pairs that panoptic quality uses.

Each pixel's semantic label is the category of its segment. The confusion matrix has a row
per ground-truth category and a column per predicted category plus one for predicted VOID:

* pixels on ground-truth VOID (and on ground-truth ids that are not listed) are ignored;
* a predicted-VOID pixel on a labelled ground-truth pixel counts as a miss (FN) of that class;
* crowd regions keep their category.

Per class ``IoU = TP / (TP + FP + FN)``; ``mIoU`` is the mean over the classes with
``TP + FP + FN > 0`` (the classes seen in the ground truth or the prediction), which is also
detectron2's ``SemSegEvaluator`` mIoU. Pixel accuracy is ``sum(TP) / labelled GT pixels``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from panopticlab.evaluation.categories import CategoryTable


class ConfusionMatrix:
    """Pixel counts [C, C + 1]: rows ground-truth category, columns predicted category (+ VOID)."""

    def __init__(self, num_categories: int) -> None:
        self.matrix = np.zeros((num_categories, num_categories + 1), dtype=np.int64)

    def add(self, gt_category: np.ndarray, pred_category: np.ndarray, pixels: np.ndarray) -> None:
        """Add entries (int arrays [M]; ``pred_category == C`` means predicted VOID)."""
        np.add.at(self.matrix, (gt_category, pred_category), pixels)

    def summarize(self, categories: CategoryTable) -> dict[str, Any]:
        """``{"miou", "pixel_accuracy", "per_class": {category_id: iou or NaN}, "confusion"}``; NaN
        where undefined. ``confusion``: ``{"ids": category ids of the rows and first columns,
        "matrix": pixel counts [C][C + 1]}`` (the last column: predicted VOID)."""
        c = len(categories)
        tp = np.diagonal(self.matrix[:, :c]).astype(np.float64)
        gt_pixels = self.matrix.sum(axis=1).astype(np.float64)  # includes predicted VOID
        pred_pixels = self.matrix[:, :c].sum(axis=0).astype(np.float64)
        union = gt_pixels + pred_pixels - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, tp / union, math.nan)
        seen = union > 0
        total = gt_pixels.sum()
        return {
            "miou": float(iou[seen].mean()) if seen.any() else math.nan,
            "pixel_accuracy": float(tp.sum() / total) if total > 0 else math.nan,
            "per_class": {cat_id: float(iou[k]) for k, cat_id in enumerate(categories.ids)},
            "confusion": {"ids": list(categories.ids), "matrix": self.matrix.tolist()},
        }
