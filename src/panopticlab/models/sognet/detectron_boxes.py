"""Detectron's box conventions, as the released SOGNet / UPSNet code uses them (``box_convention: detectron``).

The released code (Detectron / py-faster-rcnn lineage) counts a box's pixels inclusively: a box
``[x1, y1, x2, y2]`` covers ``x2 - x1 + 1`` pixels. Here every box stays in torchvision's
continuous form, the released box with ``x2 + 1, y2 + 1``; then, with no further change:

* the released decoding (``bbox_transform``: width ``x2 - x1 + 1``, centre ``x1 + w / 2``,
  ``x2 = ctr + w' / 2 - 1``, ``dw`` clamped at ``log(1000 / 16)``) is torchvision's ``BoxCoder``;
  its encoding (``bbox_transform_inv``) likewise;
* the released IoU and NMS (``(x2 - x1 + 1) (y2 - y1 + 1)`` areas, ``min(x2) - max(x1) + 1``
  overlaps, suppression at IoU ``>`` the threshold) are ``torchvision.ops.box_iou`` / ``nms``;
* the released minimum-size filter (``x2 - x1 + 1 >= min_size``) is ``remove_small_boxes``.

What does differ, and is built here:

* :class:`DetectronAnchorGenerator`: Detectron's ``generate_anchors`` (the base box
  ``[0, 0, s - 1, s - 1]``, rounded ratio sizes, then scaled), so anchors are centred on
  ``stride / 2`` of each cell with sizes that differ from torchvision's zero-centred ones; the
  level strides are fixed (4..64), not inferred from the padded image.
* :func:`clip_boxes_legacy`: the released clipping of every coordinate to ``[0, W - 1]``, which
  in continuous form is ``x1 in [0, W - 1]``, ``x2 in [1, W]`` (torchvision: both in ``[0, W]``).
* :func:`released_proposals`: the released proposal step (``PyramidProposal`` with
  ``individual_proposals``): per level the top ``pre_nms_top_n`` by score, clip, size filter,
  NMS, the top ``post_nms_top_n`` of that level; then all levels together, by decreasing score,
  cut to ``post_nms_top_n`` once more (so at most 1,000 proposals at test, not 5,000).
* :class:`DetectronRoIAlign`: the released ``FPNRoIAlign``: level
  ``floor(2 + log2(sqrt(w h) / 224 + 1e-6))`` clipped to P2..P5 with the inclusive ``w, h``, and
  the legacy RoIAlign (``aligned=False``, 2 x 2 samples per bin) on the inclusive box
  ``(x1, y1, x2 - 1, y2 - 1)`` of the continuous one.
* :func:`keep_top_detections`: ``test.max_det`` as the released ``MaskROI`` applies it (every
  detection scoring at least the ``max_det``-th score stays, ties included).
* the released order of equal scores: the released code sorts with numpy's default (unstable)
  sort, ``scores.argsort()[::-1]`` (:func:`released_descending`, its NMS: :func:`released_nms`,
  per class: :func:`released_class_nms`) and ``argpartition`` + ``argsort(-scores)`` (its per-level
  top-n: :func:`released_top_n`). Exactly equal float32 scores (a saturated sigmoid or softmax,
  1.0) then come in numpy's order, which decides which of two overlapping boxes NMS keeps; these
  helpers make the same numpy calls on the same scores.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import boxes as box_ops
from torchvision.ops import roi_align

#: the released FPN levels' strides: P2..P6 for the RPN, P2..P5 for the RoI heads
RPN_STRIDES = (4, 8, 16, 32, 64)
ROI_STRIDES = (4, 8, 16, 32)


def detectron_cell_anchors(stride: int, sizes: tuple[int, ...], aspect_ratios: tuple[float, ...]) -> Tensor:
    """The anchors of one cell at the origin, Detectron's ``generate_anchors(stride, sizes, ratios)``,
    in continuous form.

    For each ratio r (h / w), then each size: the base box ``[0, 0, s - 1, s - 1]`` (s = stride)
    gets width ``round(sqrt(s^2 / r))`` and height ``round(width r)`` (half to even, numpy's
    rounding) about its centre ``(s - 1) / 2``, then both are multiplied by ``size / s``.

    Returns:
        float32 [len(ratios) * len(sizes), 4], ratio-major (the released and torchvision's order).
    """
    centre = 0.5 * (stride - 1)
    anchors = []
    for ratio in aspect_ratios:
        width = float(round(math.sqrt(stride * stride / ratio)))
        height = float(round(width * ratio))
        for size in sizes:
            w, h = width * size / stride, height * size / stride
            # inclusive [ctr - (w - 1) / 2, ctr + (w - 1) / 2], then x2 + 1
            anchors.append([centre - 0.5 * (w - 1), centre - 0.5 * (h - 1), centre + 0.5 * (w - 1) + 1, centre + 0.5 * (h - 1) + 1])
    return torch.tensor(anchors, dtype=torch.float64).float()


class DetectronAnchorGenerator(nn.Module):
    """Detectron's anchors on every level (see :func:`detectron_cell_anchors`), shifted by
    ``(x, y) * stride`` for each cell in (row, column, anchor) order, as torchvision's RPN expects.

    Args:
        sizes: per level P2..P6 the anchor sizes (sqrt of the area), e.g. ``((32,), (64,), ...)``.
        aspect_ratios: h / w, the same on every level.
        strides: the levels' strides.
    """

    def __init__(self, sizes: tuple[tuple[int, ...], ...], aspect_ratios: tuple[float, ...], strides: tuple[int, ...] = RPN_STRIDES):
        super().__init__()
        if len(sizes) != len(strides):
            raise ValueError(f"{len(sizes)} levels of anchor sizes for {len(strides)} strides")
        self.strides = strides
        self.cell_anchors = [detectron_cell_anchors(s, level, aspect_ratios) for s, level in zip(strides, sizes)]

    def num_anchors_per_location(self) -> list[int]:
        return [len(a) for a in self.cell_anchors]

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        """Per image float32 [sum over levels of h * w * A, 4] (the same for every image of the batch)."""
        levels = []
        for cell, stride, feature in zip(self.cell_anchors, self.strides, feature_maps):
            height, width = feature.shape[-2:]
            device = feature.device
            shift_x = torch.arange(width, dtype=torch.float32, device=device) * stride
            shift_y = torch.arange(height, dtype=torch.float32, device=device) * stride
            y, x = torch.meshgrid(shift_y, shift_x, indexing="ij")
            shifts = torch.stack([x, y, x, y], dim=-1).reshape(-1, 1, 4)
            levels.append((shifts + cell.to(device)[None]).reshape(-1, 4))
        anchors = torch.cat(levels)
        return [anchors for _ in range(len(image_list.image_sizes))]


def clip_boxes_legacy(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """The released ``clip_boxes`` in continuous form: ``x1, y1`` in ``[0, W - 1]``, ``x2, y2`` in ``[1, W]``.

    Args:
        boxes: float [..., 4] continuous boxes; size: (H, W) of the image before padding.
    """
    height, width = size
    low = boxes.new_tensor([0.0, 0.0, 1.0, 1.0])
    high = boxes.new_tensor([width - 1.0, height - 1.0, float(width), float(height)])
    return torch.minimum(torch.maximum(boxes, low), high)


def released_proposals(
    proposals: Tensor,
    objectness: Tensor,
    image_shapes: list[tuple[int, int]],
    num_anchors_per_level: list[int],
    *,
    pre_nms_top_n: int,
    post_nms_top_n: int,
    min_size: float,
    nms_threshold: float,
) -> tuple[list[Tensor], list[Tensor]]:
    """The released proposal step on decoded anchors (in place of torchvision's ``filter_proposals``):
    per level the top ``pre_nms_top_n`` by score, :func:`clip_boxes_legacy`, the ``min_size``
    filter, NMS and that level's top ``post_nms_top_n``; then the levels together, by decreasing
    score, cut to ``post_nms_top_n`` again (``PyramidProposal.forward`` sorts the function's output).

    Args:
        proposals: float [B, A, 4] decoded anchors (continuous boxes); objectness: float [B, A] logits.
        image_shapes: per image (H, W) before padding.

    Returns:
        per image the proposals float [P, 4] and their sigmoid scores float [P].
    """
    scores_all = torch.sigmoid(objectness.detach().reshape(proposals.shape[0], -1))
    final_boxes, final_scores = [], []
    for boxes_image, scores_image, size in zip(proposals, scores_all, image_shapes):
        kept_boxes, kept_scores = [], []
        for boxes, scores in zip(boxes_image.split(num_anchors_per_level), scores_image.split(num_anchors_per_level)):
            top = released_top_n(scores, pre_nms_top_n)
            boxes, scores = clip_boxes_legacy(boxes[top], size), scores[top]
            keep = box_ops.remove_small_boxes(boxes, min_size)
            boxes, scores = boxes[keep], scores[keep]
            keep = released_nms(boxes, scores, nms_threshold)[:post_nms_top_n]
            kept_boxes.append(boxes[keep])
            kept_scores.append(scores[keep])
        boxes, scores = torch.cat(kept_boxes), torch.cat(kept_scores)
        # then the top post_nms_top_n of all levels: the released PyramidProposal module's own call
        top = torch.sort(-scores, 0).indices[:post_nms_top_n]
        final_boxes.append(boxes[top])
        final_scores.append(scores[top])
    return final_boxes, final_scores


def released_roi_levels(boxes: Tensor) -> Tensor:
    """int64 [N]: the released ``FPNRoIAlign`` level index (0 = P2 .. 3 = P5) of continuous boxes [N, 4].

    ``floor(2 + log2(sqrt(w h) / 224 + 1e-6))`` clipped to 0..3, with the inclusive w, h (the
    continuous widths), in float32 as the released numpy code computes it. torchvision's
    ``LevelMapper`` adds the 1e-6 outside the logarithm.
    """
    boxes = boxes.float()
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return torch.floor(2 + torch.log2(torch.sqrt(area) / 224 + 1e-6)).clamp(0, 3).to(torch.int64)


class DetectronRoIAlign(nn.Module):
    """The released ``FPNRoIAlign``: :func:`released_roi_levels`, then per level the legacy
    RoIAlign (``aligned=False``, ``sampling_ratio`` 2) on the inclusive boxes at ``1 / stride``.

    Called as torchvision's :class:`~torchvision.ops.MultiScaleRoIAlign` is: ``pool(features,
    boxes, image_shapes)`` with ``features`` the FPN's OrderedDict and continuous boxes in
    input pixels; returns float [sum N, C, output_size, output_size] in the boxes' order.
    """

    def __init__(self, featmap_names: list[str], output_size: int, sampling_ratio: int = 2, strides: tuple[int, ...] = ROI_STRIDES):
        super().__init__()
        self.featmap_names = featmap_names
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.strides = strides

    def forward(self, features: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)])
        levels = released_roi_levels(rois[:, 1:])
        inclusive = rois - rois.new_tensor([0.0, 0.0, 0.0, 1.0, 1.0])
        first = features[self.featmap_names[0]]
        pooled = first.new_zeros((len(rois), first.shape[1], self.output_size, self.output_size))
        for level, (name, stride) in enumerate(zip(self.featmap_names, self.strides)):
            index = torch.where(levels == level)[0]
            if len(index):
                feature = features[name]
                pooled[index] = roi_align(
                    feature, inclusive[index].to(feature.dtype), self.output_size,
                    spatial_scale=1.0 / stride, sampling_ratio=self.sampling_ratio, aligned=False,
                )  # fmt: skip
        return pooled


def released_descending(scores: Tensor) -> Tensor:
    """int64 [N]: the indices of float [N] scores by decreasing score as the released code orders
    them, numpy's ``scores.argsort()[::-1]`` on float32 (equal scores in numpy's order)."""
    order = np.argsort(scores.detach().float().cpu().numpy())[::-1].copy()
    return torch.from_numpy(order).to(scores.device)


def released_top_n(scores: Tensor, n: int) -> Tensor:
    """int64 [min(n, N)]: the released per-level top ``n`` of float [N] scores, decreasing
    (``np.argpartition(-scores, n)[:n]``, then those sorted by ``np.argsort(-scores)``)."""
    negated = -scores.detach().float().cpu().numpy()
    if n <= 0 or n >= len(negated):
        order = np.argsort(negated)
    else:
        candidates = np.argpartition(negated, n)[:n]
        order = candidates[np.argsort(negated[candidates])]
    return torch.from_numpy(order).to(scores.device)


def released_nms(boxes: Tensor, scores: Tensor, threshold: float) -> Tensor:
    """The released ``py_nms`` / ``gpu_nms`` (both visit the boxes in :func:`released_descending`
    order): torchvision's NMS (the same suppression rule on continuous boxes) run on that order.

    Returns:
        int64 [K]: the kept indices into ``boxes`` float [N, 4], in the order kept.
    """
    order = released_descending(scores)
    # strictly decreasing stand-in scores: torchvision then visits the boxes in exactly this order
    ranks = torch.arange(len(order), 0, -1, dtype=torch.float32, device=boxes.device)
    return order[box_ops.nms(boxes[order].float(), ranks, threshold)]


def released_class_nms(boxes: Tensor, scores: Tensor, labels: Tensor, threshold: float) -> Tensor:
    """The released ``MaskROI``'s class-specific NMS: per class in increasing order, its boxes in
    proposal order through :func:`released_nms`, the classes' kept indices concatenated."""
    kept = []
    for label in torch.unique(labels).tolist():  # sorted
        members = torch.where(labels == label)[0]
        kept.append(members[released_nms(boxes[members], scores[members], threshold)])
    return torch.cat(kept) if kept else torch.zeros(0, dtype=torch.int64, device=boxes.device)


def keep_top_detections(scores: Tensor, max_detections: int) -> Tensor:
    """bool [D]: the released ``MaskROI`` cut to ``max_det`` over all classes: when more than
    ``max_detections`` remain, those scoring at least the ``max_detections``-th highest score stay
    (so ties at the cut all stay)."""
    if len(scores) <= max_detections:
        return torch.ones_like(scores, dtype=torch.bool)
    threshold = scores.sort(descending=True).values[max_detections - 1]
    return scores >= threshold
