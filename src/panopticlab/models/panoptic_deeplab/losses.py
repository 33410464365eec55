"""Panoptic-DeepLab losses: hard-pixel-mining cross-entropy, weighted centre MSE, weighted offset L1.

Normalisers follow detectron2 (D2) by default; the original PyTorch code's (BC) and
DeepLab2's (DL2) offset normaliser is an option. All predictions are expected at input
resolution (the model upsamples before calling these), targets as batched by
:func:`~panopticlab.models.panoptic_deeplab.targets.collate_targets`.
"""

from __future__ import annotations

from typing import Literal, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

OffsetNormalizer = Literal["pixels", "elements"]


def deeplab_cross_entropy(
    logits: Tensor,
    labels: Tensor,
    weights: Tensor | None = None,
    *,
    ignore_label: int = 255,
    top_k_percent_pixels: float = 1.0,
    class_weight: Tensor | None = None,
) -> Tensor:
    """Per-pixel cross-entropy, optionally weighted, averaged over the hardest pixels of the batch.

    Args:
        logits: float [B, C, H, W].
        labels: int64 [B, H, W]; ``ignore_label`` pixels contribute a loss of 0.
        weights: optional float [B, H, W] multiplying each pixel's loss (``sem_seg_weights``).
        top_k_percent_pixels: fraction in (0, 1] of the B·H·W pixel losses kept, largest
            first. The count includes ignored pixels (D2, BC), so with 1.0 this is the sum of
            the losses divided by B·H·W, not by the number of labelled pixels.
        class_weight: optional float [C], as ``torch.nn.CrossEntropyLoss``'s ``weight``.

    Returns:
        float scalar.
    """
    if not 0.0 < top_k_percent_pixels <= 1.0:
        raise ValueError(f"top_k_percent_pixels must lie in (0, 1], got {top_k_percent_pixels}")
    pixel_losses = F.cross_entropy(logits, labels, weight=class_weight, ignore_index=ignore_label, reduction="none")
    if weights is not None:
        pixel_losses = pixel_losses * weights
    pixel_losses = pixel_losses.reshape(-1)
    if top_k_percent_pixels < 1.0:
        # At least one pixel, where D2 would take the mean of nothing (NaN) on tiny inputs.
        k = max(1, int(top_k_percent_pixels * pixel_losses.numel()))
        pixel_losses = pixel_losses.topk(k).values
    return pixel_losses.mean()


class DeepLabCE(nn.Module):
    """:func:`deeplab_cross_entropy` as a module (D2's ``DeepLabCE``); ``weight`` is the class weight [C]."""

    def __init__(self, ignore_label: int = 255, top_k_percent_pixels: float = 1.0, weight: Tensor | None = None):
        super().__init__()
        self.ignore_label = ignore_label
        self.top_k_percent_pixels = top_k_percent_pixels
        self.register_buffer("weight", weight)

    def forward(self, logits: Tensor, labels: Tensor, weights: Tensor | None = None) -> Tensor:
        return deeplab_cross_entropy(
            logits,
            labels,
            weights,
            ignore_label=self.ignore_label,
            top_k_percent_pixels=self.top_k_percent_pixels,
            class_weight=self.weight,
        )


def center_loss(prediction: Tensor, target: Tensor, weights: Tensor) -> Tensor:
    """Weighted MSE of the raw centre heatmap, divided by the sum of the weights (0 when it is 0).

    Args:
        prediction, target: float [B, 1, H, W].
        weights: float [B, 1, H, W] (``center_weights``).

    Returns:
        float scalar.
    """
    _check_shapes("center", prediction, target, weights)
    weighted = F.mse_loss(prediction, target, reduction="none") * weights
    return _weighted_mean(weighted, weights.sum())


def offset_loss(
    prediction: Tensor, target: Tensor, weights: Tensor, *, normalizer: OffsetNormalizer = "pixels"
) -> Tensor:
    """Weighted L1 of the (dy, dx) offsets.

    Args:
        prediction, target: float [B, 2, H, W], in input pixels.
        weights: float [B, 1, H, W] (``offset_weights``), shared by both channels.
        normalizer: ``"pixels"`` (D2) divides the sum over both channels by the sum of the
            weights, i.e. averages ``|dy| + |dx|`` per weighted pixel; ``"elements"`` (BC,
            and DL2 for 0/1 weights) divides by the weights summed over both channels, i.e.
            averages over pixels and channels: half of D2's value.

    Returns:
        float scalar (0 when all weights are 0).
    """
    _check_shapes("offset", prediction, target, weights)
    if normalizer not in ("pixels", "elements"):
        raise ValueError(f"normalizer must be 'pixels' or 'elements', got {normalizer!r}")
    weighted = F.l1_loss(prediction, target, reduction="none") * weights
    total_weight = weights.sum()
    if normalizer == "elements":
        total_weight = total_weight * prediction.shape[1]
    return _weighted_mean(weighted, total_weight)


def panoptic_deeplab_losses(
    outputs: Mapping[str, Tensor],
    targets: Mapping[str, Tensor],
    *,
    semantic_weight: float = 1.0,
    center_weight: float = 200.0,
    offset_weight: float = 0.01,
    top_k_percent: float = 0.2,
    ignore_label: int = 255,
    class_weight: Tensor | None = None,
    offset_normalizer: OffsetNormalizer = "pixels",
) -> dict[str, Tensor]:
    """The three Panoptic-DeepLab losses, each already multiplied by its weight.

    Defaults are D2's Cityscapes recipe (COCO: ``top_k_percent=1.0``).

    Args:
        outputs: ``sem_seg`` float [B, C, H, W] logits, ``center`` float [B, 1, H, W],
            ``offset`` float [B, 2, H, W], all at the targets' resolution.
        targets: the batched targets of ``collate_targets`` (``sem_seg``, ``center``,
            ``offset``, ``center_weights``, ``offset_weights``, optional ``sem_seg_weights``).

    Returns:
        ``{"loss_sem_seg", "loss_center", "loss_offset"}`` float scalars (D2's names); their
        sum is the training loss.
    """
    sem = deeplab_cross_entropy(
        outputs["sem_seg"],
        targets["sem_seg"],
        targets.get("sem_seg_weights"),
        ignore_label=ignore_label,
        top_k_percent_pixels=top_k_percent,
        class_weight=class_weight,
    )
    center = center_loss(outputs["center"], targets["center"], targets["center_weights"])
    offset = offset_loss(outputs["offset"], targets["offset"], targets["offset_weights"], normalizer=offset_normalizer)
    return {
        "loss_sem_seg": sem * semantic_weight,
        "loss_center": center * center_weight,
        "loss_offset": offset * offset_weight,
    }


def _weighted_mean(weighted: Tensor, total_weight: Tensor) -> Tensor:
    """``weighted.sum() / total_weight``, and 0 (still in the graph) when the total is 0.

    Clamping the divisor instead of D2's ``if weights.sum() > 0`` gives the same numbers
    (with zero weights the sum is 0 too) without a host-device sync.
    """
    return weighted.sum() / total_weight.clamp(min=torch.finfo(weighted.dtype).tiny)


def _check_shapes(name: str, prediction: Tensor, target: Tensor, weights: Tensor) -> None:
    """Catch [B, H, W] vs [B, 1, H, W] mix-ups, which would otherwise broadcast silently."""
    if prediction.shape != target.shape:
        raise ValueError(f"{name}: prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ")
    if weights.shape != (prediction.shape[0], 1, *prediction.shape[2:]):
        raise ValueError(
            f"{name}: weights must be [B, 1, H, W] for prediction {tuple(prediction.shape)}, got {tuple(weights.shape)}"
        )
