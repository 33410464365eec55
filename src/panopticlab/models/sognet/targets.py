"""SOGNet's input sizing and training targets, made per dataset item.

:class:`PrepareTrainingItem` is the model's ``targets_transform``: it runs in the loader's worker
processes after the augmentation, resizes the item to the network's input size (short side
``min_size``, long side at most ``max_size``) and adds ``item["targets"]``:

* ``semantic``: uint8 [H, W], contiguous category ids of the visible segments, 255 = VOID;
* ``id_map``: int32 [H, W], the panoptic segment ids (for the panoptic target at stride 4);
* ``segment_labels``: {segment id: contiguous category id};
* the training instances (non-crowd things whose visible segment is in the image), with
  ``boxes`` float [N, 4] (x0, y0, x1, y1), ``labels`` int64 [N] thing indices 0..K-1, ``masks``
  bool [N, H, W] (amodal where the dataset has amodal masks: the detector learns whole
  objects), ``segment_ids`` int64 [N] (each one's visible segment), ``relation`` float [N, N]
  (the relation ground truth from the masks, reference §5.1) and, when asked for
  (``relation_direction_loss_weight > 0``), ``direction`` int8 [N, N]
  (:func:`~panopticlab.models.sognet.relation.direction_target`: 1 where j is in front of i);
* ``crowd_boxes``: float [M, 4], the boxes of the visible crowd segments of thing classes
  (which the detector's samplers may ignore, ``crowd_ignore_iof``).

Instances come from ``item["instances"]`` (an instances JSON beside the panoptic one: the shapes
dataset's amodal masks, or COCO's ``instances_*.json`` joined to the panoptic segments by
``panopticlab prepare coco``). An instance without a visible segment in the (cropped) image is
left out: nothing of it can be seen, so neither the detector nor the panoptic head can learn it.
Without ``item["instances"]`` the visible thing segments are the instances; they never overlap,
so the relation ground truth is all zero (reference §9.2's pitfall) and the relation module
learns nothing; UPSNet and the heuristic merge do not need it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from panopticlab.data.transforms import resize
from panopticlab.masks import masks_to_boxes, overlap_graph
from panopticlab.models.base import TARGETS
from panopticlab.models.common import IGNORE_LABEL
from panopticlab.models.sognet.labels import LabelSpace
from panopticlab.models.sognet.relation import direction_target
from panopticlab.models.sognet.settings import InputSizing

Item = dict[str, Any]


def resize_image(image: Tensor, size: tuple[int, int], antialias: bool = True) -> Tensor:
    """float [3, H, W] -> float [3, h, w], bilinear, with antialiasing when shrinking unless told not to
    (the released code's ``cv2.resize``)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=antialias)[0]


def pad_to(tensor: Tensor, height: int, width: int, value: float) -> Tensor:
    """Pad the last two dimensions at the bottom and right to ``height`` x ``width``."""
    return F.pad(tensor, (0, width - tensor.shape[-1], 0, height - tensor.shape[-2]), value=value)


def padded_size(sizes: list[tuple[int, int]], divisibility: int) -> tuple[int, int]:
    """The batch canvas: the largest height and width, rounded up to ``divisibility``."""
    height = max(h for h, _ in sizes)
    width = max(w for _, w in sizes)
    return -(-height // divisibility) * divisibility, -(-width // divisibility) * divisibility


class PrepareTrainingItem:
    """``item -> item`` resized to the input size, with ``item["targets"]`` (see the module docstring).

    Picklable, so it runs in data-loader workers (the model's ``targets_transform``).

    Args:
        labels: the label spaces of the model's categories.
        category_ids: dataset category id -> contiguous id.
        sizing: the input sizing rule.
        overlap_threshold: the relation ground truth's overlap fraction.
        direction: also the direction target (``targets["direction"]``).
    """

    def __init__(
        self, labels: LabelSpace, category_ids: dict[int, int], sizing: InputSizing, overlap_threshold: float, direction: bool = False
    ):
        self.labels = labels
        self.category_ids = category_ids
        self.sizing = sizing
        self.overlap_threshold = overlap_threshold
        self.direction = direction

    def __call__(self, item: Item) -> Item:
        height, width = item["image"].shape[-2:]
        size = self.sizing.input_size(height, width)
        if size != (height, width):
            item = resize(item, size)
        item = dict(item)
        item[TARGETS] = training_targets(item, self.labels, self.category_ids, self.overlap_threshold, self.direction)
        return item


def training_targets(
    item: Item, labels: LabelSpace, category_ids: dict[int, int], overlap_threshold: float, direction: bool = False
) -> dict[str, Any]:
    """The targets of one item at its own resolution (see the module docstring)."""
    panoptic = item["panoptic"]
    id_map = torch.from_numpy(np.ascontiguousarray(panoptic.id_map))
    segment_labels = {s.id: category_ids[s.category_id] for s in panoptic.segments}
    semantic = _semantic_target(id_map, segment_labels)

    thing_set = set(labels.things)
    visible = {s.id for s in panoptic.segments if not s.iscrowd and segment_labels[s.id] in thing_set}
    if "instances" in item:
        instances = item["instances"]
        masks, contiguous = instances["masks"], instances["labels"]
        segment_ids = instances["panoptic_segment_ids"]
        keep, seen = [], set()
        for k in range(len(contiguous)):
            segment = int(segment_ids[k])
            usable = (
                not bool(instances["iscrowd"][k])
                and int(contiguous[k]) in thing_set
                and segment in visible
                and segment_labels[segment] == int(contiguous[k])
                and segment not in seen  # one instance per visible segment
                and bool(masks[k].any())
            )
            if usable:
                keep.append(k)
                seen.add(segment)
        keep_t = torch.tensor(keep, dtype=torch.int64)
        masks, contiguous, segment_ids = masks[keep_t], contiguous[keep_t], segment_ids[keep_t]
    else:
        ids = sorted(visible)
        segment_ids = torch.tensor(ids, dtype=torch.int64)
        contiguous = torch.tensor([segment_labels[i] for i in ids], dtype=torch.int64)
        masks = id_map[None] == segment_ids[:, None, None].to(id_map.dtype)
    masks = masks.bool()
    crowd = [s.id for s in panoptic.segments if s.iscrowd and segment_labels[s.id] in thing_set]
    crowd_masks = id_map[None] == torch.tensor(crowd, dtype=id_map.dtype)[:, None, None]
    targets = {
        "semantic": semantic,
        "id_map": id_map,
        "segment_labels": segment_labels,
        "boxes": masks_to_boxes(masks),
        "labels": labels.thing_index(contiguous),
        "masks": masks,
        "segment_ids": segment_ids.to(torch.int64),
        "relation": overlap_graph(masks, overlap_threshold),
        "crowd_boxes": masks_to_boxes(crowd_masks),
    }
    if direction:
        visible_masks = id_map[None] == segment_ids[:, None, None].to(id_map.dtype)
        targets["direction"] = direction_target(masks, visible_masks, targets["relation"])
    return targets


def _semantic_target(id_map: Tensor, segment_labels: dict[int, int]) -> Tensor:
    """uint8 [H, W]: each pixel's contiguous category, 255 on VOID (crowd regions keep their class)."""
    ids, inverse = torch.unique(id_map.to(torch.int64), return_inverse=True)
    table = torch.tensor([segment_labels.get(int(i), IGNORE_LABEL) for i in ids.tolist()], dtype=torch.uint8)
    return table[inverse]


def stride4_id_map(id_map: Tensor, height: int, width: int) -> Tensor:
    """The id map padded (VOID) to the batch canvas ``height`` x ``width`` and sampled at the
    centre of every 4 x 4 cell, where the stride-4 features sit: int64 [height / 4, width / 4]."""
    padded = pad_to(id_map.to(torch.int64), height, width, 0)
    return padded[2::4, 2::4]
