"""A written shapes split read back: its instances (amodal masks, depth order) and occlusions."""

from __future__ import annotations

import os
from collections.abc import Iterator
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from panopticlab.data.synthetic.scene import ShapeInstance
from panopticlab.errors import InputError
from panopticlab.fileio import read_json


def occlusion_pairs(instances: list[ShapeInstance]) -> list[tuple[int, int]]:
    """Pairs ``(front_index, back_index)`` of non-crowd things whose amodal masks overlap.

    Indices are positions in ``instances``; ``front`` has the smaller depth. Where the two
    masks overlap, the front one is visible (or something further in front, or VOID).
    """
    shapes = [k for k, inst in enumerate(instances) if not inst.iscrowd]
    pairs = []
    for a, b in combinations(shapes, 2):
        if np.any(instances[a].mask & instances[b].mask):
            pairs.append((a, b) if instances[a].depth < instances[b].depth else (b, a))
    return pairs


def iter_split_instances(
    split_dir: str | os.PathLike,
) -> Iterator[tuple[dict[str, Any], list[ShapeInstance]]]:
    """Read a written split's ``instances.json``: per image (in file order) its image entry
    and its instances, front to back, with the amodal masks decoded from RLE."""
    json_file = Path(split_dir) / "instances.json"
    document = read_json(json_file)
    try:
        by_image: dict[Any, list[ShapeInstance]] = {img["id"]: [] for img in document["images"]}
        for ann in document["annotations"]:
            rle = {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode("ascii")}
            by_image[ann["image_id"]].append(
                ShapeInstance(
                    mask=mask_utils.decode(rle).astype(bool),
                    category_id=int(ann["category_id"]),
                    depth=int(ann["depth"]),
                    iscrowd=bool(ann["iscrowd"]),
                    panoptic_segment_id=ann["panoptic_segment_id"],
                )
            )
    except (KeyError, TypeError, AttributeError) as e:
        raise InputError(f"{json_file}: not an overlapping-shapes instances file ({e!r})") from None
    for img in document["images"]:
        yield img, sorted(by_image[img["id"]], key=lambda inst: inst.depth)


def count_occlusion_pairs(split_dir: str | os.PathLike) -> int:
    """Number of overlapping (front, back) thing pairs in a written split (see :func:`occlusion_pairs`)."""
    return sum(len(occlusion_pairs(instances)) for _, instances in iter_split_instances(split_dir))
