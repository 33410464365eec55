"""Instance AP of the thing classes (COCO ``segm`` AP through pycocotools).

The ground-truth instances are the thing segments of the panoptic ground truth (crowd kept as
``iscrowd``, which COCOeval ignores in matching); the detections are instance masks with scores,
either a model's own (possibly overlapping) instances or the thing segments of its panoptic
output. Masks are stored as COCO RLE, so keeping a whole validation set costs little memory.
"""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from panopticlab.evaluation.categories import CategoryTable


def encode_id_map(id_map: np.ndarray, ids: Sequence[int]) -> list[dict[str, Any]]:
    """COCO RLE of the pixels of each id, from one pass over the id map.

    Args:
        id_map: integer array [H, W].
        ids: the ids to encode (an absent id gives an empty mask).

    Returns:
        One compressed RLE (``{"size": [H, W], "counts": bytes}``) per id, as pycocotools'
        ``mask.encode`` would give for ``id_map == id``.
    """
    h, w = id_map.shape
    flat = np.ascontiguousarray(np.asarray(id_map).T).reshape(-1)  # RLE runs go down the columns
    n = flat.size
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change, [n]))
    values = flat[starts].astype(np.int64)
    order = np.argsort(values, kind="stable")  # runs grouped by id, in position order
    sorted_values = values[order]
    rles = []
    for seg_id in ids:
        lo, hi = np.searchsorted(sorted_values, [seg_id, seg_id + 1])
        s, e = starts[order[lo:hi]], ends[order[lo:hi]]
        if len(s) == 0:
            counts = [n]
        else:
            # Alternating run lengths, starting with background: s0, e0-s0, s1-e0, e1-s1, ..., n-e_last.
            runs = np.empty(2 * len(s) + 1, dtype=np.int64)
            runs[0] = s[0]
            runs[1::2] = e - s
            runs[2:-1:2] = s[1:] - e[:-1]
            runs[-1] = n - e[-1]
            counts = runs.tolist()
        rles.append(mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w))
    return rles


def encode_mask(mask: Any) -> dict[str, Any]:
    """A binary mask [H, W] (numpy or torch) or an RLE dict -> compressed COCO RLE."""
    if isinstance(mask, Mapping):
        if isinstance(mask.get("counts"), list):
            h, w = mask["size"]
            return mask_utils.frPyObjects(dict(mask), h, w)
        return dict(mask)
    if hasattr(mask, "detach"):
        mask = mask.detach().cpu().numpy()
    return mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))


@dataclass
class InstanceData:
    """The instances of one image.

    Attributes:
        height, width: image size.
        gt: ``(rle, category_id, iscrowd)`` per ground-truth thing instance.
        detections: ``(rle, category_id, score)`` per detected instance.
    """

    height: int
    width: int
    gt: list[tuple[dict[str, Any], int, bool]] = field(default_factory=list)
    detections: list[tuple[dict[str, Any], int, float]] = field(default_factory=list)


class InstanceAP:
    """Collects :class:`InstanceData` per image and scores it with pycocotools' COCOeval (segm).

    Only thing categories are scored; instances of other categories are dropped.
    """

    def __init__(self, categories: CategoryTable) -> None:
        self.category_ids = [c for c, thing in zip(categories.ids, categories.isthing.tolist()) if thing]
        self.images: list[InstanceData] = []

    def add(self, data: InstanceData) -> None:
        self.images.append(data)

    def summarize(self) -> dict[str, Any]:
        """COCO segm AP in [0, 1]: ``AP, AP50, AP75, APs, APm, APl`` and ``per_class`` (NaN where undefined)."""
        names = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
        things = set(self.category_ids)
        images, gt_anns, dt_anns = [], [], []
        for index, data in enumerate(self.images, start=1):
            images.append({"id": index, "height": data.height, "width": data.width})
            for rle, cat, crowd in data.gt:
                if cat in things:
                    gt_anns.append(_annotation(len(gt_anns) + 1, index, rle, cat, iscrowd=int(crowd)))
            for rle, cat, score in data.detections:
                if cat in things:
                    dt_anns.append(_annotation(len(dt_anns) + 1, index, rle, cat, iscrowd=0, score=float(score)))
        if not gt_anns:
            return {**{k: math.nan for k in names}, "per_class": {c: math.nan for c in self.category_ids}}

        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        category_list = [{"id": c} for c in self.category_ids]
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco_gt, coco_dt = COCO(), COCO()
            coco_gt.dataset = {"images": images, "annotations": gt_anns, "categories": category_list}
            coco_dt.dataset = {"images": images, "annotations": dt_anns, "categories": category_list}
            coco_gt.createIndex()
            coco_dt.createIndex()
            coco_eval = COCOeval(coco_gt, coco_dt, "segm")
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        stats = [math.nan if s < 0 else float(s) for s in coco_eval.stats[:6]]
        precision = coco_eval.eval["precision"]  # [IoU thresholds, recall, category, area, max dets]
        per_class = {}
        for k, cat in enumerate(coco_eval.params.catIds):
            p = precision[:, :, k, 0, -1]
            p = p[p > -1]
            per_class[cat] = float(p.mean()) if p.size else math.nan
        return {**dict(zip(names, stats)), "per_class": per_class}


def _annotation(
    ann_id: int, image: int, rle: dict[str, Any], category_id: int, *, iscrowd: int, score: float | None = None
) -> dict[str, Any]:
    """A COCO annotation with area and bbox from the RLE (what pycocotools' loadRes computes)."""
    ann = {
        "id": ann_id,
        "image_id": image,
        "category_id": category_id,
        "segmentation": rle,
        "area": float(mask_utils.area(rle)),
        "bbox": mask_utils.toBbox(rle).tolist(),
        "iscrowd": iscrowd,
    }
    if score is not None:
        ann["score"] = score
    return ann
