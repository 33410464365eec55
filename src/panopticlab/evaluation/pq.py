"""Panoptic quality: matching one image, summing counts, and averaging them as panopticapi does.

Rules (panopticapi ``pq_compute``; ``docs/evaluation.md`` has a worked example of each):

* Id 0 is VOID on both sides. Ground-truth areas are the listed ``area`` values; predicted
  areas are pixel counts.
* A ground-truth segment G and a predicted segment P match when G is not crowd, both have
  the same category and ``IoU > 0.5`` (strictly), with
  ``IoU = |G∩P| / (|P| + area(G) - |G∩P| - |P∩VOID_gt|)``: only the part of P lying on
  ground-truth VOID leaves the union. Above 0.5 a match is unique both ways.
* Each match is a TP of its category and adds its IoU. Each unmatched non-crowd ground-truth
  segment is an FN. An unmatched prediction is an FP unless more than half of its pixels lie
  on VOID plus the crowd region of its own category (the last crowd segment listed for that
  category, as panopticapi keeps only one per category).
* Per category ``PQ = iou / (TP + FP/2 + FN/2)``, ``SQ = iou / TP`` (0 without TP),
  ``RQ = TP / (TP + FP/2 + FN/2)``; the All/Things/Stuff values are unweighted means over the
  categories with ``TP + FP + FN > 0``, taken in ground-truth category order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from panopticlab.errors import InputError
from panopticlab.evaluation.categories import CategoryTable
from panopticlab.evaluation.pairs import PairHistogram
from panopticlab.evaluation.segments import SegmentTable


@dataclass
class ImageMatch:
    """The outcome of matching one image (category indices refer to :class:`CategoryTable`).

    Attributes:
        image_id: the image's id (int or str).
        tp_category: int64 [TP], the category of each match, in panopticapi's visiting order.
        tp_iou: float64 [TP], the IoU of each match.
        fp_category: int64 [FP], the category of each false positive.
        fn_category: int64 [FN], the category of each false negative.
        semantic: (gt_category int64 [M], pred_category int64 [M], pixels int64 [M]):
            confusion-matrix entries; pred_category C means predicted VOID. Pixels on
            ground-truth VOID (or on unlisted ground-truth ids) are left out.
        instances: optional instance masks for AP, filled by the caller (see ``instance.py``).
        tp_ids: int64 [TP, 2], the (ground-truth id, predicted id) of each match.
        fp_ids: int64 [FP], the predicted id of each false positive.
        fn_ids: int64 [FN], the ground-truth id of each false negative.
        things_as_one: the same image matched with every thing category taken as the first
            one (:func:`things_as_one`), for the class-agnostic thing PQ; None where not computed.
    """

    image_id: Any
    tp_category: np.ndarray
    tp_iou: np.ndarray
    fp_category: np.ndarray
    fn_category: np.ndarray
    semantic: tuple[np.ndarray, np.ndarray, np.ndarray]
    instances: Any = None
    tp_ids: np.ndarray | None = None
    fp_ids: np.ndarray | None = None
    fn_ids: np.ndarray | None = None
    things_as_one: "ImageMatch | None" = None


def _lookup(sorted_ids: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of each value in ``sorted_ids`` and whether it is there at all."""
    if len(sorted_ids) == 0:
        return np.zeros(len(values), dtype=np.int64), np.zeros(len(values), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_ids, values), len(sorted_ids) - 1)
    return pos, sorted_ids[pos] == values


def _per_segment(index: np.ndarray, weights: np.ndarray, size: int) -> np.ndarray:
    """Sum int64 ``weights`` by segment ``index`` (exact, unlike bincount's float64 weights)."""
    out = np.zeros(size, dtype=np.int64)
    np.add.at(out, index, weights)
    return out


def match_image(
    hist: PairHistogram,
    gt: SegmentTable,
    pred: SegmentTable,
    categories: CategoryTable,
    *,
    image_id: Any,
    check_gt: bool = True,
    where: str = "",
) -> ImageMatch:
    """Apply panopticapi's matching rules to one image.

    Args:
        hist: pixel counts of the (gt id, pred id) pairs of the image.
        gt, pred: the listed segments.
        categories: the categories scored.
        image_id: stored in the result.
        check_gt: also require that the ground-truth PNG and its list agree (every non-zero id
            listed, every listed segment present with ``area`` equal to its pixel count).
            panopticapi does not check this; on ground truth that passes, numbers are the same.
        where: file/image for error messages.

    Raises:
        InputError: a predicted id missing from the list, a listed prediction missing from the
            pixels, or (with ``check_gt``) a ground-truth mismatch.
    """
    gt_index, gt_known = _lookup(gt.ids, hist.gt_ids)
    pred_index, pred_known = _lookup(pred.ids, hist.pred_ids)
    gt_void = hist.gt_ids == 0
    pred_void = hist.pred_ids == 0

    unlisted = ~pred_known & ~pred_void
    if unlisted.any():
        seg = int(hist.pred_ids[unlisted][0])
        raise InputError(f"{where}: predicted segment id {seg} is in the PNG but not in segments_info")
    pred_area = _per_segment(pred_index[pred_known], hist.counts[pred_known], len(pred))
    if (pred_area == 0).any():
        seg = int(pred.ids[np.flatnonzero(pred_area == 0)[0]])
        raise InputError(f"{where}: predicted segment {seg} is in segments_info but not in the PNG")
    if check_gt:
        _check_ground_truth(hist, gt, categories, gt_index, gt_known, gt_void, where)

    both = gt_known & pred_known
    g, p, inter = gt_index[both], pred_index[both], hist.counts[both]
    gt_cat, pred_cat = gt.category[g], pred.category[p]
    pred_on_void = _per_segment(pred_index[gt_void & pred_known], hist.counts[gt_void & pred_known], len(pred))

    # Matches. The union is built in panopticapi's order of operations so that a non-integer
    # listed area gives the same float.
    candidate = ~gt.iscrowd[g] & (gt_cat == pred_cat)
    union = pred_area[p] + gt.area[g] - inter - pred_on_void[p]
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(candidate, inter / union, 0.0)
    matched = candidate & (iou > 0.5)
    gt_matched = np.zeros(len(gt), dtype=bool)
    gt_matched[g[matched]] = True
    pred_matched = np.zeros(len(pred), dtype=bool)
    pred_matched[p[matched]] = True

    fn = ~gt_matched & ~gt.iscrowd

    # The crowd region that may excuse a prediction: the last crowd segment listed per category.
    crowd_of_category = np.full(len(categories) + 1, -1, dtype=np.int64)
    crowd = np.flatnonzero(gt.iscrowd)
    crowd = crowd[np.argsort(gt.position[crowd])]
    crowd_of_category[gt.category[crowd]] = crowd  # later entries overwrite earlier ones
    on_own_crowd = g == crowd_of_category[pred_cat]
    pred_on_crowd = _per_segment(p[on_own_crowd], inter[on_own_crowd], len(pred))
    ignored = (pred_on_void + pred_on_crowd) / pred_area > 0.5
    fp = ~pred_matched & ~ignored

    return ImageMatch(
        image_id=image_id,
        tp_category=gt_cat[matched],
        tp_iou=iou[matched],
        fp_category=pred.category[fp],
        fn_category=gt.category[fn],
        semantic=_semantic_entries(hist, gt, pred, gt_index, gt_known, pred_index, pred_known, categories),
        tp_ids=np.stack([gt.ids[g[matched]], pred.ids[p[matched]]], axis=1).astype(np.int64),
        fp_ids=pred.ids[fp].astype(np.int64),
        fn_ids=gt.ids[fn].astype(np.int64),
    )


def things_as_one(table: SegmentTable, categories: CategoryTable) -> SegmentTable:
    """``table`` with every thing category index replaced by the first thing category's.

    Matched with :func:`match_image`, any predicted thing then matches any ground-truth thing at
    IoU > 0.5 whatever their classes, and a prediction is excused by the last listed crowd
    segment of any thing class: the first thing category's counts give the class-agnostic thing
    PQ, whose gap to PQ_th is what wrong classes cost (the segments and their grouping being
    the same). Stuff and unlisted categories are left as they are.
    """
    things = np.flatnonzero(categories.isthing)
    if len(things) == 0:
        return table
    merged = np.arange(len(categories) + 1)
    merged[things] = things[0]
    return replace(table, category=merged[table.category])


def _check_ground_truth(
    hist: PairHistogram,
    gt: SegmentTable,
    categories: CategoryTable,
    gt_index: np.ndarray,
    gt_known: np.ndarray,
    gt_void: np.ndarray,
    where: str,
) -> None:
    """Raise unless the ground-truth pixels and list agree (see ``match_image``'s ``check_gt``)."""
    unlisted = ~gt_known & ~gt_void
    if unlisted.any():
        seg = int(hist.gt_ids[unlisted][0])
        raise InputError(f"{where}: ground-truth segment id {seg} is in the PNG but not in segments_info")
    unknown = gt.category == categories.unknown
    if unknown.any():
        raise InputError(f"{where}: ground-truth segment {int(gt.ids[unknown][0])} has a category not in 'categories'")
    pixels = _per_segment(gt_index[gt_known], hist.counts[gt_known], len(gt))
    wrong = pixels != gt.area
    if wrong.any():
        k = int(np.flatnonzero(wrong)[0])
        raise InputError(
            f"{where}: ground-truth segment {int(gt.ids[k])} has area {gt.area[k]:g} in the JSON but "
            f"{int(pixels[k])} pixels in the PNG (check_gt=False / --no-check-gt trusts the JSON, as panopticapi does)"
        )


def _semantic_entries(
    hist: PairHistogram,
    gt: SegmentTable,
    pred: SegmentTable,
    gt_index: np.ndarray,
    gt_known: np.ndarray,
    pred_index: np.ndarray,
    pred_known: np.ndarray,
    categories: CategoryTable,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Confusion-matrix entries (gt category, pred category or C for VOID, pixels)."""
    pred_cat = np.full(len(hist.counts), len(categories), dtype=np.int64)  # predicted VOID by default
    pred_cat[pred_known] = pred.category[pred_index[pred_known]]
    keep = gt_known.copy()
    keep[gt_known] = gt.category[gt_index[gt_known]] != categories.unknown
    return gt.category[gt_index[keep]], pred_cat[keep], hist.counts[keep]


class PQCounts:
    """Per-category sums over images; arrays have C + 1 entries (the last: unlisted categories).

    Attributes:
        tp, fp, fn: int64 [C + 1].
        iou: float64 [C + 1], the sum of the IoUs of the matches.
    """

    def __init__(self, num_categories: int) -> None:
        self.tp = np.zeros(num_categories + 1, dtype=np.int64)
        self.fp = np.zeros(num_categories + 1, dtype=np.int64)
        self.fn = np.zeros(num_categories + 1, dtype=np.int64)
        self.iou = np.zeros(num_categories + 1, dtype=np.float64)

    def add(self, match: ImageMatch) -> None:
        # np.add.at adds the IoUs one by one in order, the same float sums as panopticapi's loop.
        np.add.at(self.iou, match.tp_category, match.tp_iou)
        np.add.at(self.tp, match.tp_category, 1)
        np.add.at(self.fp, match.fp_category, 1)
        np.add.at(self.fn, match.fn_category, 1)


def category_scores(iou: float, tp: int, fp: int, fn: int) -> dict[str, float]:
    """PQ, SQ, RQ of one category from its sums (0.0 each when TP + FP + FN = 0)."""
    if tp + fp + fn == 0:
        return {"pq": 0.0, "sq": 0.0, "rq": 0.0}
    denominator = tp + 0.5 * fp + 0.5 * fn
    return {"pq": iou / denominator, "sq": iou / tp if tp != 0 else 0.0, "rq": tp / denominator}


def summarize_pq(counts: PQCounts, categories: CategoryTable) -> dict[str, Any]:
    """panopticapi's result dict from summed counts.

    Returns:
        ``{"All" | "Things" | "Stuff": {"pq", "sq", "rq", "n"}, "per_class": {category_id:
        {"pq", "sq", "rq"}}}``. A split with no category to average (``n == 0``, where
        panopticapi raises ZeroDivisionError) gets NaN for pq, sq and rq.
    """
    per_class: dict[int, dict[str, float]] = {}
    for k, cat_id in enumerate(categories.ids):
        per_class[cat_id] = category_scores(
            float(counts.iou[k]), int(counts.tp[k]), int(counts.fp[k]), int(counts.fn[k])
        )
    results: dict[str, Any] = {}
    for split, wanted in (("All", None), ("Things", True), ("Stuff", False)):
        pq = sq = rq = 0.0
        n = 0
        for k, cat_id in enumerate(categories.ids):
            if wanted is not None and bool(categories.isthing[k]) != wanted:
                continue
            if counts.tp[k] + counts.fp[k] + counts.fn[k] == 0:
                continue
            n += 1
            pq += per_class[cat_id]["pq"]
            sq += per_class[cat_id]["sq"]
            rq += per_class[cat_id]["rq"]
        results[split] = (
            {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}
            if n
            else {"pq": math.nan, "sq": math.nan, "rq": math.nan, "n": 0}
        )
    results["per_class"] = per_class
    return results
