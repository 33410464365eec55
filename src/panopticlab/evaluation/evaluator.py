"""The streaming panoptic evaluator (the evaluator protocol, :mod:`.protocol`): PQ, mIoU, AP.

``process(items, results)`` per batch takes dataset items and in-memory results, ``add(gt, pred)``
one image (a :class:`~panopticlab.structures.PanopticResult` or an ``(id_map, segments)`` pair
each); it never writes a PNG. The file-based :func:`~panopticlab.evaluation.panoptic_files.pq_compute`
feeds the same evaluator with the images it decodes, so both give the same numbers by construction.

Under ``torch.distributed`` each rank processes its share; ``evaluate()`` gathers every rank's
counts and sums them (every rank gets the full result). Outside a process group,
``state_dict()`` / ``merge()`` do the same by hand.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from panopticlab import distributed
from panopticlab.errors import InputError
from panopticlab.evaluation.categories import CategoryTable, as_categories
from panopticlab.evaluation.instance import InstanceAP, InstanceData, encode_id_map, encode_mask
from panopticlab.evaluation.pairs import pair_histogram
from panopticlab.evaluation.pq import ImageMatch, PQCounts, category_scores, match_image, summarize_pq, things_as_one
from panopticlab.evaluation.segments import SegmentTable, segment_table
from panopticlab.evaluation.semantic import ConfusionMatrix
from panopticlab.structures import PanopticResult


def to_id_map(id_map: Any, *, where: str) -> np.ndarray:
    """A numpy or torch integer map [H, W] -> numpy array (no copy when already numpy)."""
    if hasattr(id_map, "detach"):  # torch.Tensor, possibly on a GPU
        id_map = id_map.detach().cpu().numpy()
    id_map = np.asarray(id_map)
    if id_map.ndim != 2 or not np.issubdtype(id_map.dtype, np.integer):
        raise InputError(f"{where}: expected an integer id map [H, W], got {id_map.dtype} of shape {id_map.shape}")
    return id_map


def evaluate_image(
    gt_map: np.ndarray,
    gt_segments: Iterable[Any],
    pred_map: np.ndarray,
    pred_segments: Iterable[Any],
    categories: CategoryTable,
    *,
    image_id: Any = None,
    check_gt: bool = True,
    compute_ap: bool = False,
    class_agnostic: bool = False,
    detections: Sequence[Mapping[str, Any]] | None = None,
    where: str = "",
) -> ImageMatch:
    """Match one image: PQ counts, confusion entries and, with ``compute_ap``, instance masks.

    Args:
        gt_map, pred_map: integer id maps [H, W], 0 = VOID.
        gt_segments, pred_segments: ``segments_info`` dicts or ``Segment`` objects.
        categories: the categories scored.
        image_id: kept in the result and in error messages.
        check_gt: see :func:`~panopticlab.evaluation.pq.match_image`.
        compute_ap: also encode the instances for AP: the ground truth's thing segments and
            ``detections`` (dicts with ``mask`` [H, W] or ``segmentation`` (RLE),
            ``category_id``, ``score``), or, without ``detections``, the predicted thing
            segments with their ``score``.
        class_agnostic: also match the image with every thing class taken as one
            (``match.things_as_one``, :func:`.pq.things_as_one`); a second match, so opt-in.
        where: prefix for error messages (defaults to the image id).
    """
    where = where or f"image {image_id!r}"
    gt_table = segment_table(
        gt_segments, categories, ground_truth=True, allow_unknown_category=not check_gt, where=where
    )
    pred_table = segment_table(pred_segments, categories, ground_truth=False, where=where)
    try:
        hist = pair_histogram(gt_map, pred_map)
    except ValueError as e:
        raise InputError(f"{where}: {e}") from None
    match = match_image(hist, gt_table, pred_table, categories, image_id=image_id, check_gt=check_gt, where=where)
    if class_agnostic and categories.isthing.any():
        merged_gt, merged_pred = things_as_one(gt_table, categories), things_as_one(pred_table, categories)
        match.things_as_one = match_image(hist, merged_gt, merged_pred, categories, image_id=image_id, check_gt=False, where=where)
    if compute_ap:
        match.instances = _instance_data(gt_map, gt_table, pred_map, pred_table, categories, detections, where)
    return match


def _instance_data(
    gt_map: np.ndarray,
    gt: SegmentTable,
    pred_map: np.ndarray,
    pred: SegmentTable,
    categories: CategoryTable,
    detections: Sequence[Mapping[str, Any]] | None,
    where: str,
) -> InstanceData:
    """Thing instances of one image as RLEs (ground truth, and detections or predicted segments)."""
    cat_ids = np.asarray(categories.ids + (-1,), dtype=np.int64)  # index C: unlisted category
    isthing = np.append(categories.isthing, False)
    h, w = gt_map.shape
    data = InstanceData(height=h, width=w)
    things = np.flatnonzero(isthing[gt.category])
    data.gt = [
        (rle, int(cat_ids[gt.category[k]]), bool(gt.iscrowd[k]))
        for rle, k in zip(encode_id_map(gt_map, gt.ids[things].tolist()), things)
    ]
    if detections is not None:
        for k, det in enumerate(detections):
            mask = det.get("mask", det.get("segmentation"))
            if mask is None or "category_id" not in det or "score" not in det:
                raise InputError(f"{where}: detection #{k} needs 'mask' (or 'segmentation'), 'category_id' and 'score'")
            data.detections.append((encode_mask(mask), int(det["category_id"]), float(det["score"])))
        return data
    things = np.flatnonzero(isthing[pred.category])
    missing = things[np.isnan(pred.score[things])]
    if len(missing):
        raise InputError(
            f"{where}: AP needs a 'score' for every predicted thing segment; "
            f"segment {int(pred.ids[missing[0]])} has none"
        )
    data.detections = [
        (rle, int(cat_ids[pred.category[k]]), float(pred.score[k]))
        for rle, k in zip(encode_id_map(pred_map, pred.ids[things].tolist()), things)
    ]
    return data


def _image_summary(match: ImageMatch, num_categories: int) -> dict[str, Any]:
    """Per-image TP/FP/FN and PQ (averaged over the image's categories with TP + FP + FN > 0)."""
    size = num_categories + 1
    tp = np.bincount(match.tp_category, minlength=size)[:num_categories]
    fp = np.bincount(match.fp_category, minlength=size)[:num_categories]
    fn = np.bincount(match.fn_category, minlength=size)[:num_categories]
    iou = np.bincount(match.tp_category, weights=match.tp_iou, minlength=size)[:num_categories]
    seen = np.flatnonzero(tp + fp + fn)
    pqs = [category_scores(float(iou[k]), int(tp[k]), int(fp[k]), int(fn[k]))["pq"] for k in seen]
    return {
        "image_id": match.image_id,
        "pq": float(np.mean(pqs)) if pqs else math.nan,
        "n": len(pqs),
        "tp": int(tp.sum()),
        "fp": int(fp.sum()),
        "fn": int(fn.sum()),
    }


class PanopticEvaluator:
    """Streaming panoptic evaluation: PQ/SQ/RQ, mIoU and (optionally) instance AP.

    Example::

        evaluator = PanopticEvaluator(dataset.categories)
        for batch in loader:                                      # lists of dataset items
            predictions = model.predict([item["image"] for item in batch])
            evaluator.process(batch, predictions)
        results = evaluator.evaluate()
        results["panoptic"]["All"]["pq"]

    Args:
        categories: COCO ``categories`` dicts (``id``, ``isthing``, ``name``) or :class:`CategoryTable`.
        compute_ap: also collect instance masks and report COCO segm AP of the thing classes.
        class_agnostic: also report ``things_class_agnostic``, the things matched whatever
            their class (a second match per image: about twice the in-memory time).
        check_gt: require ground-truth maps and lists to agree (see ``pq.match_image``).
    """

    def __init__(self, categories: Any, *, compute_ap: bool = False, check_gt: bool = True, class_agnostic: bool = False) -> None:
        self.categories = as_categories(categories)
        self.compute_ap = compute_ap
        self.class_agnostic = class_agnostic
        self.check_gt = check_gt
        self.reset()

    def reset(self) -> None:
        """Forget everything processed so far."""
        c = len(self.categories)
        self.counts = PQCounts(c)
        self.counts_things_as_one = PQCounts(c)  # only the first thing category's entries are read
        self.confusion = ConfusionMatrix(c)
        self.instances = InstanceAP(self.categories)
        self.images: list[dict[str, Any]] = []

    # -- adding images -------------------------------------------------------------------------

    def process(self, inputs: Sequence[Mapping[str, Any]], outputs: Sequence[Any]) -> None:
        """Add a batch: per image a dataset item (its ``panoptic`` ground truth, a ``PanopticResult``
        or ``(id_map, segments)`` whose segments have ``area`` and ``iscrowd``; its ``image_id``
        when it has one, for the per-image report) and the prediction (a ``PanopticResult`` or
        ``(id_map, segments)``)."""
        if len(inputs) != len(outputs):
            raise InputError(f"{len(inputs)} ground truths but {len(outputs)} predictions")
        for item, prediction in zip(inputs, outputs):
            self.add(item["panoptic"], prediction, image_id=item.get("image_id"))

    def add(
        self, gt: Any, pred: Any, *, image_id: Any = None, instances: Sequence[Mapping[str, Any]] | None = None
    ) -> ImageMatch:
        """Add one image and return its match.

        Args:
            gt, pred: a ``PanopticResult`` or ``(id_map, segments)`` each (see :meth:`process`).
            image_id: for the per-image report (default: a running count).
            instances: detections for AP instead of the predicted thing segments (see :func:`evaluate_image`).
        """
        if image_id is None:
            image_id = len(self.images)
        where = f"image {image_id!r}"
        gt_map, gt_segments = _unpack(gt, where=f"{where} (ground truth)")
        pred_map, pred_segments = _unpack(pred, where=f"{where} (prediction)")
        match = evaluate_image(
            gt_map,
            gt_segments,
            pred_map,
            pred_segments,
            self.categories,
            image_id=image_id,
            check_gt=self.check_gt,
            compute_ap=self.compute_ap,
            class_agnostic=self.class_agnostic,
            detections=instances,
            where=where,
        )
        self.add_match(match)
        return match

    def add_match(self, match: ImageMatch) -> None:
        """Add an image matched elsewhere (e.g. in a worker process)."""
        self.counts.add(match)
        if match.things_as_one is not None:
            self.counts_things_as_one.add(match.things_as_one)
        self.confusion.add(*match.semantic)
        if match.instances is not None:
            self.instances.add(match.instances)
        self.images.append(_image_summary(match, len(self.categories)))

    # -- merging across processes --------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything accumulated, as picklable plain data."""
        return {
            "tp": self.counts.tp,
            "fp": self.counts.fp,
            "fn": self.counts.fn,
            "iou": self.counts.iou,
            "things_as_one": [getattr(self.counts_things_as_one, k) for k in ("tp", "fp", "fn", "iou")],
            "confusion": self.confusion.matrix,
            "images": self.images,
            "instances": self.instances.images,
        }

    def merge(self, state: Mapping[str, Any]) -> None:
        """Add another evaluator's :meth:`state_dict` (same categories) into this one."""
        if state["confusion"].shape != self.confusion.matrix.shape:
            raise InputError("cannot merge evaluator states with different category lists")
        self.counts.tp += state["tp"]
        self.counts.fp += state["fp"]
        self.counts.fn += state["fn"]
        self.counts.iou += state["iou"]
        for key, part in zip(("tp", "fp", "fn", "iou"), state["things_as_one"]):
            getattr(self.counts_things_as_one, key)[:] += part
        self.confusion.matrix += state["confusion"]
        self.images.extend(state["images"])
        self.instances.images.extend(state["instances"])

    def _gathered(self) -> "PanopticEvaluator":
        """This evaluator, or under torch.distributed a new one holding every rank's sum."""
        states = distributed.all_gather(self.state_dict())
        if len(states) == 1:
            return self
        total = PanopticEvaluator(self.categories, compute_ap=self.compute_ap, check_gt=self.check_gt, class_agnostic=self.class_agnostic)
        for state in states:  # rank order, so every rank gets the same floats
            total.merge(state)
        return total

    # -- results -------------------------------------------------------------------------------

    def evaluate(self, *, worst: int = 10) -> dict[str, Any]:
        """Scores of everything processed (on every rank, all ranks together).

        Returns:
            ``panoptic``: panopticapi's dict (``All``/``Things``/``Stuff`` with ``pq, sq, rq, n``
            and ``per_class``); ``semantic``: ``miou``, ``pixel_accuracy``, ``per_class``;
            ``instance`` (with ``compute_ap``): ``AP, AP50, AP75, APs, APm, APl, per_class``;
            ``categories``: per category id, name, isthing, TP/FP/FN, IoU sum, PQ/SQ/RQ and
            semantic IoU; ``images``: per image TP/FP/FN and PQ; ``worst_images``: the
            ``worst`` images of lowest PQ; ``num_images``; with ``class_agnostic``,
            ``things_class_agnostic``: ``pq, sq, rq, tp, fp, fn`` of the things matched whatever their class
            (:func:`.pq.things_as_one`). Scores lie in [0, 1]; NaN where undefined (no
            category to average).
        """
        source = self._gathered()
        cats = self.categories
        panoptic = summarize_pq(source.counts, cats)
        semantic = source.confusion.summarize(cats)
        per_category = [
            {
                "id": cat_id,
                "name": cats.names[k],
                "isthing": bool(cats.isthing[k]),
                "tp": int(source.counts.tp[k]),
                "fp": int(source.counts.fp[k]),
                "fn": int(source.counts.fn[k]),
                "iou_sum": float(source.counts.iou[k]),
                **panoptic["per_class"][cat_id],
                "semantic_iou": semantic["per_class"][cat_id],
            }
            for k, cat_id in enumerate(cats.ids)
        ]
        ranked = sorted((im for im in source.images if not math.isnan(im["pq"])), key=lambda im: im["pq"])
        results: dict[str, Any] = {
            "num_images": len(source.images),
            "panoptic": panoptic,
            "semantic": semantic,
            "categories": per_category,
            "images": source.images,
            "worst_images": ranked[:worst],
        }
        if self.class_agnostic:
            results["things_class_agnostic"] = _class_agnostic_things(source.counts_things_as_one, cats)
        if self.compute_ap:
            results["instance"] = source.instances.summarize()
        return results


def _class_agnostic_things(counts: PQCounts, categories: CategoryTable) -> dict[str, Any]:
    """PQ/SQ/RQ (in [0, 1]) and TP/FP/FN of the things matched whatever their class; NaN
    scores where there are no thing categories or no thing segments at all."""
    things = np.flatnonzero(categories.isthing)
    iou, tp, fp, fn = (0.0, 0, 0, 0)
    if len(things):
        k = things[0]
        iou, tp, fp, fn = float(counts.iou[k]), int(counts.tp[k]), int(counts.fp[k]), int(counts.fn[k])
    scores = category_scores(iou, tp, fp, fn) if tp + fp + fn else {"pq": math.nan, "sq": math.nan, "rq": math.nan}
    return {**scores, "tp": tp, "fp": fp, "fn": fn}


def _unpack(item: Any, *, where: str) -> tuple[np.ndarray, list[Any]]:
    """``PanopticResult`` or ``(id_map, segments)`` -> (numpy id map, segment list)."""
    if isinstance(item, PanopticResult):
        return item.id_map, item.segments
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return to_id_map(item[0], where=where), list(item[1])
    raise InputError(f"{where}: expected a PanopticResult or an (id_map, segments) pair, got {type(item).__name__}")
