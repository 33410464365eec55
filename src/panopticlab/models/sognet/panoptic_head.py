"""UPSNet's parameter-free panoptic head, as SOGNet uses it: logits, target and loss.

Everything here lives on one canvas (the stride-4 semantic resolution in training, the
input resolution at test) with boxes ``(x0, y0, x1, y1)`` in canvas pixels, end exclusive.

Per pixel the head classifies over ``S`` stuff channels, one channel per instance and,
optionally, UPSNet's "unknown" channel:

* stuff channel k: the semantic logit of stuff class k;
* instance i: ``Y_i + X~_i`` (training) or ``X~_i + 2 Y_i sigmoid(X~_i)`` (SOGNet's test form,
  ``x2mask``), where ``Y_i`` is the semantic logit of i's class cropped to its box and ``X~_i``
  its pasted, overlap-resolved mask logits; both are 0 outside the box;
* unknown: ``max over thing classes of S - max_i Y_i``.

A pixel is "inside a box" when the pixel square ``[x, x+1) x [y, y+1)`` overlaps the box with
positive area. For integer boxes these are exactly the columns ``x0 .. x1-1`` and rows
``y0 .. y1-1``; a box thinner than a pixel still owns the pixels it touches. Pasting and
cropping share this rule (:func:`box_support`), so the two terms of an instance never leave a
one-pixel seam.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def box_support(boxes: Tensor, height: int, width: int) -> Tensor:
    """The canvas pixels inside each box.

    Args:
        boxes: float [N, 4], ``(x0, y0, x1, y1)`` in canvas pixels, end exclusive.

    Returns:
        bool [N, H, W]: True where the pixel square overlaps the box with positive area.
    """
    ys = torch.arange(height, device=boxes.device, dtype=boxes.dtype)
    xs = torch.arange(width, device=boxes.device, dtype=boxes.dtype)
    rows = (ys[None, :] < boxes[:, 3:4]) & (ys[None, :] + 1 > boxes[:, 1:2])  # [N, H]
    cols = (xs[None, :] < boxes[:, 2:3]) & (xs[None, :] + 1 > boxes[:, 0:1])  # [N, W]
    return rows[:, :, None] & cols[:, None, :]


def paste_mask_logits(mask_logits: Tensor, boxes: Tensor, height: int, width: int) -> Tensor:
    """Resize each M x M mask logit map into its box on an H x W canvas, 0 elsewhere.

    Bilinear (``grid_sample``, ``align_corners=False``: the M x M grid spans the box edge to
    edge), differentiable with respect to the logits. Pixels inside the box but with their
    centre beyond the box edge take the nearest edge value (border padding), so a constant map
    pastes as that constant on every pixel of the box. No 1-pixel expansion of the box.

    Args:
        mask_logits: float [N, M, M] (any M_h x M_w works), logits, not probabilities.
        boxes: float [N, 4], ``(x0, y0, x1, y1)`` in canvas pixels.
        height, width: the canvas size.

    Returns:
        float [N, H, W], exactly 0 outside each box (see :func:`box_support`).
    """
    n = mask_logits.shape[0]
    if mask_logits.dim() != 3 or boxes.shape != (n, 4):
        raise ValueError(
            f"expected mask_logits [N, M, M] and boxes [N, 4], got {tuple(mask_logits.shape)}, {tuple(boxes.shape)}"
        )
    # The support in float32 whatever the logits' dtype, exactly as crop_to_boxes computes it.
    support = box_support(boxes.float(), height, width)
    x0, y0, x1, y1 = boxes.to(mask_logits.dtype).unbind(dim=1)
    centres_x = torch.arange(width, device=boxes.device, dtype=mask_logits.dtype) + 0.5
    centres_y = torch.arange(height, device=boxes.device, dtype=mask_logits.dtype) + 0.5
    # Pixel centres in grid_sample's [-1, 1] frame of each box; the clamp keeps empty boxes finite.
    u = (centres_x[None, :] - x0[:, None]) / (x1 - x0).clamp(min=1e-4)[:, None] * 2 - 1  # [N, W]
    v = (centres_y[None, :] - y0[:, None]) / (y1 - y0).clamp(min=1e-4)[:, None] * 2 - 1  # [N, H]
    grid = torch.stack([u[:, None, :].expand(n, height, width), v[:, :, None].expand(n, height, width)], dim=-1)
    pasted = F.grid_sample(mask_logits[:, None], grid, mode="bilinear", padding_mode="border", align_corners=False)
    return torch.where(support, pasted[:, 0], pasted.new_zeros(()))


def crop_to_boxes(logits: Tensor, boxes: Tensor) -> Tensor:
    """Keep each map inside its box and set it to 0 outside (the same pixels as the paste).

    Args:
        logits: float [N, H, W], e.g. the semantic logit of each instance's class.
        boxes: float [N, 4], ``(x0, y0, x1, y1)`` in canvas pixels.

    Returns:
        float [N, H, W].
    """
    if logits.dim() != 3 or boxes.shape != (logits.shape[0], 4):
        raise ValueError(f"expected logits [N, H, W] and boxes [N, 4], got {tuple(logits.shape)}, {tuple(boxes.shape)}")
    support = box_support(boxes.float(), logits.shape[1], logits.shape[2])
    return torch.where(support, logits, logits.new_zeros(()))


def panoptic_logits(
    stuff_logits: Tensor,
    instance_semantic_logits: Tensor,
    resolved_mask_logits: Tensor,
    *,
    x2mask: bool = False,
    unknown_logits: Tensor | None = None,
    exclude_outside: Tensor | None = None,
) -> Tensor:
    """Stack the per-pixel panoptic logits ``[stuff ; instances (; unknown)]``.

    Args:
        stuff_logits: float [S, H, W], the semantic logits of the stuff classes.
        instance_semantic_logits: float [N, H, W], Y: each instance's class logit cropped to its box.
        resolved_mask_logits: float [N, H, W], X~: pasted mask logits after overlap removal.
        x2mask: False: ``Y + X~`` (training, and UPSNet throughout); True: ``X~ + 2 Y sigmoid(X~)``
            (the released SOGNet at test).
        unknown_logits: optional float [H, W] (:func:`unknown_logits`), appended as the last channel.
        exclude_outside: optional bool [N, H, W], each instance's box (:func:`box_support`): its
            channel is -inf outside, so it cannot take a pixel there (the released head gives it
            the logit 0 there, which beats negative stuff logits).

    Returns:
        float [S + N (+ 1), H, W].
    """
    if instance_semantic_logits.shape != resolved_mask_logits.shape:
        raise ValueError(
            f"instance semantic logits {tuple(instance_semantic_logits.shape)} and mask logits "
            f"{tuple(resolved_mask_logits.shape)} differ in shape"
        )
    if x2mask:
        instances = resolved_mask_logits + 2 * instance_semantic_logits * torch.sigmoid(resolved_mask_logits)
    else:
        instances = instance_semantic_logits + resolved_mask_logits
    if exclude_outside is not None:
        instances = torch.where(exclude_outside, instances, instances.new_full((), float("-inf")))
    channels = [stuff_logits, instances]
    if unknown_logits is not None:
        channels.append(unknown_logits[None])
    return torch.cat(channels, dim=0)


def unknown_logits(thing_semantic_logits: Tensor, instance_semantic_logits: Tensor) -> Tensor:
    """UPSNet's unknown-class logit: ``max_c S_c - max_i Y_i`` over thing classes c and instances i.

    High where the semantic head sees a thing that no instance box explains. It uses the
    cropped semantic logits Y, not the mask logits. With no instance, the second term is 0 (the
    value every cropped Y takes outside its box).

    Args:
        thing_semantic_logits: float [T, H, W], the semantic logits of the T thing classes.
        instance_semantic_logits: float [N, H, W], Y.

    Returns:
        float [H, W].
    """
    if thing_semantic_logits.shape[0] == 0:
        raise ValueError("unknown_logits needs at least one thing class")
    best_thing = thing_semantic_logits.max(dim=0).values
    if instance_semantic_logits.shape[0] == 0:
        return best_thing
    return best_thing - instance_semantic_logits.max(dim=0).values


def panoptic_target(
    id_map: Tensor,
    segment_labels: dict[int, int],
    stuff_channel: dict[int, int],
    instance_segment_ids: Tensor,
    *,
    unknown_segment_ids: Sequence[int] = (),
    ignore_index: int = 255,
) -> Tensor:
    """The per-pixel channel the panoptic head must pick, from the VISIBLE panoptic segments.

    SOGNet builds it from the visible segment matched to each instance (UPSNet painted the
    overlapping instance masks in file order, so a later big instance swallowed earlier small
    ones); an occluded instance's target is therefore only its visible pixels.

    Args:
        id_map: int [H, W], panoptic segment ids on the canvas (0 = VOID).
        segment_labels: segment id -> contiguous category id, for the segments of the image.
        stuff_channel: contiguous stuff category id -> its channel 0..S-1 (S = its length).
        instance_segment_ids: int64 [N], the visible segment of instance channel i (0: none).
        unknown_segment_ids: segments whose pixels go to the unknown channel S + N (UPSNet's
            dropped instances).
        ignore_index: the label of pixels nobody should be trained on.

    Returns:
        int64 [H, W]: stuff segment pixels -> its stuff channel; pixels of
        ``instance_segment_ids[i]`` -> S + i; unknown segments -> S + N; VOID, crowd regions and
        thing segments without an instance -> ``ignore_index``.
    """
    id_map = torch.as_tensor(id_map)
    num_stuff = len(stuff_channel)
    if sorted(stuff_channel.values()) != list(range(num_stuff)):
        raise ValueError(f"stuff_channel must map onto 0..{num_stuff - 1}, got {stuff_channel}")
    instance_ids = [int(s) for s in torch.as_tensor(instance_segment_ids).tolist()]
    num_channels = num_stuff + len(instance_ids) + (1 if unknown_segment_ids else 0)
    if num_channels > ignore_index >= 0:
        raise ValueError(f"{num_channels} panoptic channels collide with ignore_index {ignore_index}")

    channel_of: dict[int, int] = {}
    for segment_id, category in segment_labels.items():
        if segment_id != 0 and category in stuff_channel:
            channel_of[int(segment_id)] = stuff_channel[category]
    stuff_segments = set(channel_of)
    for i, segment_id in enumerate(instance_ids):
        if segment_id == 0:
            continue
        if segment_id in stuff_segments:
            raise ValueError(f"instance {i} is matched to segment {segment_id}, a stuff segment")
        if segment_id in channel_of:
            raise ValueError(f"segment {segment_id} is matched to more than one instance")
        channel_of[segment_id] = num_stuff + i
    for segment_id in unknown_segment_ids:
        if int(segment_id) in channel_of:
            raise ValueError(f"segment {segment_id} is both an unknown segment and a stuff or instance segment")
        channel_of[int(segment_id)] = num_stuff + len(instance_ids)

    ids, inverse = torch.unique(id_map, return_inverse=True)
    table = torch.tensor([channel_of.get(int(s), ignore_index) for s in ids.tolist()], dtype=torch.int64)
    return table.to(id_map.device)[inverse]


def panoptic_loss(logits: Tensor, target: Tensor, *, ignore_index: int = 255) -> Tensor:
    """Cross-entropy over the panoptic channels, averaged over the labelled pixels.

    Args:
        logits: float [C, H, W] from :func:`panoptic_logits`.
        target: int64 [H, W] from :func:`panoptic_target`.

    Returns:
        float scalar; 0 (still connected to ``logits``) when no pixel is labelled.
    """
    # Sum / count rather than the mean reduction: no NaN when nothing is labelled, no host sync.
    total = F.cross_entropy(logits[None], target[None], ignore_index=ignore_index, reduction="sum")
    labelled = (target != ignore_index).sum()
    return total / labelled.clamp(min=1)
