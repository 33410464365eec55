"""A plain re-implementation of detectron2's Panoptic-DeepLab post-processing.

This module is the *oracle*: it follows detectron2's algorithm
(``projects/Panoptic-DeepLab/panoptic_deeplab/post_processing.py`` and the instance scores of
``panoptic_seg.py``) step by step, with the same tensor operations and the same memory
behaviour (a ``[K, H*W, 2]`` distance tensor, a Python loop over instances and classes), so
that the fast version in :mod:`panopticlab.models.panoptic_deeplab.postprocess` can be tested for identical outputs and
benchmarked against it. Do not use it for inference: it is slow and memory-hungry on purpose.

One liberty: the heatmap is indexed (``[0]``) instead of ``squeeze()``d, so that images with H
or W = 1 work (detectron2 fails an assert there); outputs are otherwise detectron2's.

Shapes follow detectron2: ``sem_seg`` int64 [1, H, W], ``center_heatmap`` float [1, H, W],
``offsets`` float [2, H, W] with channels (dy, dx), centres int64 [K, 2] as (y, x).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor


def find_instance_center_reference(
    center_heatmap: Tensor, threshold: float = 0.1, nms_kernel: int = 3, top_k: int | None = None
) -> Tensor:
    """Centre points of a raw heatmap [1, H, W] -> int64 [K, 2] (y, x), row-major order."""
    # Values <= threshold become -1.
    heatmap = F.threshold(center_heatmap, threshold, -1.0)
    pooled = F.max_pool2d(heatmap, kernel_size=nms_kernel, stride=1, padding=(nms_kernel - 1) // 2)
    heatmap[heatmap != pooled] = -1
    heatmap = heatmap[0]
    if top_k is None:
        return torch.nonzero(heatmap > 0)
    kth_largest = torch.topk(heatmap.flatten(), top_k).values[-1]
    return torch.nonzero(heatmap > kth_largest.clamp(min=0))


def group_pixels_reference(center_points: Tensor, offsets: Tensor) -> Tensor:
    """Nearest-centre id (1..K) of every pixel: int64 [1, H, W].

    Builds the full [K, H*W] distance matrix, exactly as detectron2 does.
    """
    height, width = offsets.shape[1:]
    ys = torch.arange(height, dtype=offsets.dtype, device=offsets.device)
    xs = torch.arange(width, dtype=offsets.dtype, device=offsets.device)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    predicted_center = torch.stack((grid_y, grid_x)) + offsets  # [2, H, W]
    predicted_center = predicted_center.flatten(1).T.unsqueeze(0)  # [1, H*W, 2]
    distance = torch.norm(center_points.unsqueeze(1) - predicted_center, dim=-1)  # [K, H*W]
    return (torch.argmin(distance, dim=0) + 1).reshape(1, height, width)


def merge_semantic_and_instance_reference(
    sem_seg: Tensor,
    ins_seg: Tensor,
    thing_seg: Tensor,
    label_divisor: int,
    thing_ids: Iterable[int],
    stuff_area: int,
    void_label: int,
) -> Tensor:
    """Majority-vote class per instance, then stuff regions above ``stuff_area``: int64 [1, H, W]."""
    thing_ids = {int(t) for t in thing_ids}
    panoptic = torch.full_like(sem_seg, void_label)
    is_thing = (ins_seg > 0) & (thing_seg > 0)

    instances_of_class: dict[int, int] = {}
    for instance_id in torch.unique(ins_seg).tolist():
        if instance_id == 0:
            continue
        mask = (ins_seg == instance_id) & is_thing
        if not mask.any():
            continue
        class_id = int(torch.mode(sem_seg[mask]).values)
        instances_of_class[class_id] = instances_of_class.get(class_id, 0) + 1
        panoptic[mask] = class_id * label_divisor + instances_of_class[class_id]

    for class_id in torch.unique(sem_seg).tolist():
        if class_id in thing_ids:
            continue
        mask = (sem_seg == class_id) & (ins_seg == 0)
        if mask.sum().item() >= stuff_area:
            panoptic[mask] = class_id * label_divisor
    return panoptic


def get_panoptic_segmentation_reference(
    sem_seg: Tensor,
    center_heatmap: Tensor,
    offsets: Tensor,
    thing_ids: Iterable[int],
    label_divisor: int,
    stuff_area: int,
    void_label: int,
    threshold: float = 0.1,
    nms_kernel: int = 7,
    top_k: int | None = 200,
    foreground_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """detectron2's ``get_panoptic_segmentation``: (panoptic int64 [1, H, W], centres int64 [1, K, 2])."""
    thing_ids = list(thing_ids)
    if foreground_mask is not None:
        thing_seg = foreground_mask
    else:
        thing_seg = torch.zeros_like(sem_seg)
        for thing_class in thing_ids:
            thing_seg[sem_seg == thing_class] = 1

    centers = find_instance_center_reference(center_heatmap, threshold, nms_kernel, top_k)
    if centers.shape[0] == 0:
        ins_seg = torch.zeros_like(sem_seg)
    else:
        ins_seg = thing_seg * group_pixels_reference(centers, offsets)
    panoptic = merge_semantic_and_instance_reference(
        sem_seg, ins_seg, thing_seg, label_divisor, thing_ids, stuff_area, void_label
    )
    return panoptic, centers.unsqueeze(0)


def instance_scores_reference(
    panoptic: Tensor, sem_logits: Tensor, center_heatmap: Tensor, thing_ids: Iterable[int], label_divisor: int
) -> dict[int, float]:
    """detectron2's instance score of every thing label in ``panoptic`` [H, W].

    ``score = mean(softmax(sem_logits)[class] over the mask) * center_heatmap[0, int(mean y), int(mean x)]``
    with the mean of the mask's pixel coordinates taken in float32, as detectron2 does.
    ``sem_logits`` is float [C, H, W]. Returns {panoptic label: score}.
    """
    thing_ids = {int(t) for t in thing_ids}
    probabilities = F.softmax(sem_logits, dim=0)
    scores = {}
    for label in torch.unique(panoptic).tolist():
        if label == -1 or label // label_divisor not in thing_ids:
            continue
        mask = panoptic == label
        class_score = probabilities[label // label_divisor][mask].mean()
        coords = torch.nonzero(mask).float()
        center_y, center_x = coords[:, 0].mean(), coords[:, 1].mean()
        scores[label] = float(class_score * center_heatmap[0, int(center_y.item()), int(center_x.item())])
    return scores
