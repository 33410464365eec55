"""From network outputs to a panoptic segmentation (reference sognet.md §4.4, §7.4).

Everything here works at the image's own resolution on one image:

* :func:`resample_to_image`: stride-4 semantic logits -> the image's pixels;
* :func:`same_class_removal`: SOGNet's/UPSNet's duplicate removal (step 5);
* :func:`panoptic_assignment`: argmax of the panoptic logits (:func:`winner_assignment`), then
  the majority-class relabelling of instance regions (:func:`relabel_instances`; steps 7-9);
* :func:`heuristic_assignment`: the Panoptic-FPN style merge of instance masks and the
  semantic argmax (the baseline);
* :func:`remove_small_stuff` and :func:`assemble_result`: the stuff area limit and the
  :class:`PanopticResult` with dataset category ids and instance scores.

An *assignment* is two int64 maps [H, W]: ``instance`` (the index of the instance owning the
pixel, -1 for none) and ``category`` (the contiguous category of a pixel that no instance
owns, -1 for VOID).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import roi_align

from panopticlab.data.coco_panoptic import Categories
from panopticlab.models.sognet.labels import LabelSpace
from panopticlab.structures import PanopticResult, Segment, segment_stats


def resample_to_image(logits: Tensor, input_size: tuple[int, int], image_size: tuple[int, int]) -> Tensor:
    """Stride-4 logits of the padded input -> logits at the image's own pixels, bilinearly.

    Equal to upsampling x4 (``align_corners=False``), cropping the un-padded ``input_size``
    and resizing that to ``image_size``, done in one sampling step: the output pixel centre
    ``(y + 0.5)`` maps to ``(y + 0.5) * h_in / (4 H) - 0.5`` on the stride-4 grid. RoIAlign with
    one sample per bin and ``aligned=True`` samples exactly there (clamping at the borders as
    ``interpolate`` does), and never builds the padded full-resolution map.

    Args:
        logits: float [C, h, w] at stride 4 of the padded input.
        input_size: (h_in, w_in), the resized image inside the padded input.
        image_size: (H, W), the size to return.

    Returns:
        float [C, H, W].
    """
    (h_in, w_in), (height, width) = input_size, image_size
    box = torch.tensor([[0.0, 0.0, 0.0, w_in / 4, h_in / 4]], dtype=logits.dtype, device=logits.device)
    return roi_align(logits[None], box, (height, width), spatial_scale=1.0, sampling_ratio=1, aligned=True)[0]


def same_class_removal(masks: Tensor, labels: Tensor, fraction: float) -> Tensor:
    """Drop duplicates: instances (in the given order, highest score first) whose mask is empty
    or lies more than ``fraction`` on the kept masks of the same class.

    Args:
        masks: bool [N, H, W].
        labels: int64 [N].

    Returns:
        int64 [M], the kept indices in order.
    """
    occupied: dict[int, Tensor] = {}
    keep = []
    for i in range(masks.shape[0]):
        area = int(masks[i].sum())
        if area == 0:
            continue
        label = int(labels[i])
        taken = occupied.get(label)
        if taken is not None and int((masks[i] & taken).sum()) > fraction * area:
            continue
        occupied[label] = masks[i] if taken is None else taken | masks[i]
        keep.append(i)
    return torch.tensor(keep, dtype=torch.int64, device=masks.device)


def panoptic_assignment(
    panoptic_logits: Tensor,
    semantic_argmax: Tensor,
    instance_labels: Tensor,
    labels: LabelSpace,
    *,
    relabel_fraction: float,
    has_unknown: bool,
) -> tuple[Tensor, Tensor]:
    """Argmax over ``[stuff ; instances (; unknown)]`` (:func:`winner_assignment`), then the
    majority-class relabelling (:func:`relabel_instances`).

    Args:
        panoptic_logits: float [S + N (+ 1), H, W].
        semantic_argmax: int64 [H, W], contiguous ids.
        instance_labels: int64 [N], contiguous ids of the instances' classes.

    Returns:
        the assignment ``(instance, category)``, int64 [H, W] each.
    """
    instance, category = winner_assignment(panoptic_logits, instance_labels.shape[0], labels, has_unknown=has_unknown)
    return relabel_instances(instance, category, semantic_argmax, instance_labels, labels, relabel_fraction=relabel_fraction)


def winner_assignment(panoptic_logits: Tensor, num_instances: int, labels: LabelSpace, *, has_unknown: bool) -> tuple[Tensor, Tensor]:
    """The assignment of the argmax over ``[stuff ; instances (; unknown)]`` (float
    [S + N (+ 1), H, W]); unknown pixels are VOID."""
    num_stuff = labels.num_stuff
    if panoptic_logits.shape[0] != num_stuff + num_instances + int(has_unknown):
        raise ValueError(f"expected {num_stuff + num_instances + int(has_unknown)} panoptic channels, got {panoptic_logits.shape[0]}")
    winner = panoptic_logits.argmax(dim=0)
    stuff_ids = torch.as_tensor(labels.stuff, device=winner.device)
    category = torch.where(winner < num_stuff, stuff_ids[winner.clamp(max=num_stuff - 1)], -1)
    is_instance = (winner >= num_stuff) & (winner < num_stuff + num_instances)
    instance = torch.where(is_instance, winner - num_stuff, -1)
    return instance, category


def relabel_instances(
    instance: Tensor, category: Tensor, semantic_argmax: Tensor, instance_labels: Tensor, labels: LabelSpace, *, relabel_fraction: float
) -> tuple[Tensor, Tensor]:
    """The released majority-class relabelling of an assignment (int64 [H, W] each).

    An instance region whose most frequent semantic class (``semantic_argmax``, int64 [H, W]) is
    its own class (``instance_labels``, int64 [N] contiguous) stays; otherwise, when that class is
    a stuff class covering at least ``relabel_fraction`` of the region, the region becomes that
    stuff; otherwise it stays.
    """
    num_instances = instance_labels.shape[0]
    if num_instances == 0:
        return instance, category
    # votes[i, c]: pixels of instance i whose semantic argmax is c
    owned = instance >= 0
    num_classes = labels.num_classes
    votes = torch.bincount(instance[owned] * num_classes + semantic_argmax[owned], minlength=num_instances * num_classes)
    votes = votes.view(num_instances, num_classes)
    area = votes.sum(dim=1)
    majority = votes.argmax(dim=1)
    relabel = (
        (area > 0)
        & (majority != instance_labels)
        & labels.is_stuff(majority)
        & (votes.gather(1, majority[:, None])[:, 0] >= relabel_fraction * area)
    )
    if bool(relabel.any()):
        moved = owned & relabel[instance.clamp(min=0)]
        category = torch.where(moved, majority[instance.clamp(min=0)], category)
        instance = torch.where(moved, -1, instance)
    return instance, category


def heuristic_assignment(
    masks: Tensor, semantic_argmax: Tensor, labels: LabelSpace, *, min_unoccupied: float
) -> tuple[Tensor, Tensor]:
    """The Panoptic-FPN merge: instances in order (highest score first) take their still free
    pixels when at least ``min_unoccupied`` of their mask is free; the other pixels take the
    semantic argmax when it is a stuff class and are VOID when it is a thing class.

    Args:
        masks: bool [N, H, W], binary instance masks (logit > 0).
        semantic_argmax: int64 [H, W], contiguous ids.

    Returns:
        the assignment ``(instance, category)``, int64 [H, W] each.
    """
    instance = torch.full_like(semantic_argmax, -1)
    occupied = torch.zeros_like(semantic_argmax, dtype=torch.bool)
    for i in range(masks.shape[0]):
        area = int(masks[i].sum())
        free = masks[i] & ~occupied
        if area == 0 or int(free.sum()) < min_unoccupied * area:
            continue
        instance[free] = i
        occupied |= free
    category = torch.where(~occupied & labels.is_stuff(semantic_argmax), semantic_argmax, -1)
    return instance, category


def remove_small_stuff(instance: Tensor, category: Tensor, stuff_area: int) -> Tensor:
    """``category`` with every stuff class covering fewer than ``stuff_area`` free pixels set to VOID (-1)."""
    free = (instance < 0) & (category >= 0)
    counts = torch.bincount(category[free], minlength=1)
    small = torch.nonzero((counts > 0) & (counts < stuff_area)).flatten()
    if small.numel() == 0:
        return category
    return torch.where(free & torch.isin(category, small), -1, category)


def assemble_result(
    instance: Tensor, category: Tensor, instance_labels: Tensor, scores: Tensor, categories: Categories
) -> PanopticResult:
    """A :class:`PanopticResult` from an assignment: one segment per instance that kept pixels
    (ids 1, 2, ... in instance order, its score), then one per stuff class (no score).

    Args:
        instance, category: the assignment, int64 [H, W].
        instance_labels: int64 [N], contiguous ids.
        scores: float [N].
        categories: to write dataset category ids.
    """
    instance_np = instance.cpu().numpy()
    category_np = category.cpu().numpy()
    id_map = np.zeros(instance_np.shape, dtype=np.int32)
    owners: list[tuple[int, float | None]] = []  # per segment id - 1: (contiguous id, score)
    for i in np.unique(instance_np[instance_np >= 0]):
        owners.append((int(instance_labels[i]), float(scores[i])))
        id_map[instance_np == i] = len(owners)
    free = instance_np < 0
    for c in np.unique(category_np[free & (category_np >= 0)]):
        owners.append((int(c), None))
        id_map[free & (category_np == c)] = len(owners)
    segments = []
    for segment_id, area, bbox in segment_stats(id_map):
        if segment_id == 0:
            continue
        contiguous, score = owners[segment_id - 1]
        category_id = categories.from_contiguous(contiguous)
        segments.append(
            Segment(segment_id, category_id, categories.isthing(category_id), area, bbox, score=score)
        )
    return PanopticResult(id_map, segments)
