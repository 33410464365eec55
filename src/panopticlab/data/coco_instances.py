"""COCO detection-format instance annotations (RLE or polygon masks), as datasets and ``prepare`` read them.

The shapes dataset writes extra keys per annotation, read when present: ``depth`` (0 = front)
and ``panoptic_segment_id`` (its visible segment; ``prepare coco`` adds it to COCO's files).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from panopticlab.data.coco_panoptic import Categories
from panopticlab.errors import InputError
from panopticlab.fileio import read_json
from panopticlab.masks import masks_to_boxes


def read_instances_json(instances_json: Path, categories: Categories) -> dict[Any, list[dict[str, Any]]]:
    """A COCO detection JSON's annotations grouped by image id, each checked for the keys it needs
    and a category of ``categories``."""
    raw = read_json(instances_json)
    if not isinstance(raw, dict) or not isinstance(raw.get("annotations"), list):
        raise InputError(f"{instances_json}: expected a COCO detection JSON with an 'annotations' list")
    grouped: dict[Any, list[dict[str, Any]]] = {}
    for k, ann in enumerate(raw["annotations"]):
        if not isinstance(ann, dict) or not {"image_id", "category_id", "segmentation"} <= ann.keys():
            raise InputError(f"{instances_json}: annotations[{k}] needs 'image_id', 'category_id' and 'segmentation'")
        if ann["category_id"] not in categories:
            raise InputError(f"{instances_json}: annotation {ann.get('id', k)} has unknown category {ann['category_id']}")
        grouped.setdefault(ann["image_id"], []).append(ann)
    return grouped


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """COCO RLE (compressed or not) or polygons -> bool [H, W]."""
    if isinstance(segmentation, list):  # polygons
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    return mask_utils.decode(rle).astype(bool)


def instance_tensors(
    annotations: list[dict[str, Any]], height: int, width: int, categories: Categories, source: Path | None
) -> dict[str, torch.Tensor]:
    """One image's annotations as the dataset item's ``instances`` tensors (see :mod:`.dataset`)."""
    masks = np.zeros((len(annotations), height, width), dtype=bool)
    for k, ann in enumerate(annotations):
        try:
            masks[k] = decode_segmentation(ann["segmentation"], height, width)
        except (ValueError, TypeError, KeyError) as e:
            raise InputError(f"{source}: annotation {ann.get('id', k)} has an unreadable segmentation ({e})") from None
    masks = torch.from_numpy(masks)
    return {
        "masks": masks,
        "boxes": masks_to_boxes(masks),
        "labels": torch.tensor([categories.to_contiguous(a["category_id"]) for a in annotations], dtype=torch.int64),
        "iscrowd": torch.tensor([bool(a.get("iscrowd", 0)) for a in annotations], dtype=torch.bool),
        "depth": torch.tensor([a.get("depth", -1) for a in annotations], dtype=torch.int64),
        "panoptic_segment_ids": torch.tensor(
            [a.get("panoptic_segment_id") or 0 for a in annotations], dtype=torch.int64
        ),
    }
