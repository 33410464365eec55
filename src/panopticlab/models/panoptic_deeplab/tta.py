"""Test-time augmentation of Panoptic-DeepLab's head outputs: several scales and the mirror image.

As in the original Panoptic-DeepLab code: the network runs on each scaled (and flipped) copy of
the image; semantic probabilities, centre heatmaps and offsets are brought back to the input size
and averaged; offsets are divided by their scale, and the x offset of a flipped pass changes sign.

The caller runs the network between :func:`tta_input` and :func:`tta_average`, so the same code
serves the eager model, an onnxruntime network and the TorchScript export (these functions are
written in TorchScript's subset of Python).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def is_single_pass(scales: list[float], flip: bool) -> bool:
    """No augmentation: the network's outputs are used as they are (no softmax-and-log round trip)."""
    return scales == [1.0] and not flip


def tta_passes(scales: list[float], flip: bool) -> list[tuple[float, bool]]:
    """The (scale, flipped) of every network pass, in the order they are averaged."""
    passes: list[tuple[float, bool]] = []
    for scale in scales:
        passes.append((scale, False))
        if flip:
            passes.append((scale, True))
    return passes


def tta_input(images: Tensor, scale: float, flipped: bool) -> Tensor:
    """float [B, 3, H, W] -> the pass's input [B, 3, round(H * scale), round(W * scale)].

    Sizes round half to even, as OpenCV's resize (the original code's) rounds them.
    """
    height, width = images.shape[-2], images.shape[-1]
    if scale != 1.0:
        size = [_scaled(height, scale), _scaled(width, scale)]
        images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
    return images.flip(-1) if flipped else images


def _scaled(length: int, scale: float) -> int:
    return max(1, int(torch.round(torch.tensor(length * scale, dtype=torch.float64))))


def tta_average(
    outputs: list[tuple[Tensor, Tensor, Tensor]], passes: list[tuple[float, bool]], height: int, width: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Average the passes' head outputs (semantic logits, centre, offset) at the input size.

    Args:
        outputs: per pass, ``(sem_seg [B, C, h, w] logits, center [B, 1, h, w], offset [B, 2, h, w])``.
        passes: their (scale, flipped), from :func:`tta_passes`.
        height, width: the input size.

    Returns:
        ``(sem_seg, center, offset)`` at [B, *, height, width]; ``sem_seg`` as log-probabilities
        (its argmax and softmax are those of the averaged probabilities).
    """
    size = [height, width]
    probs = torch.zeros(0)
    centers = torch.zeros(0)
    offsets = torch.zeros(0)
    for i in range(len(passes)):
        scale, flipped = passes[i]
        sem, center, offset = outputs[i]
        sem = sem.softmax(1)
        if flipped:
            sem, center, offset = sem.flip(-1), center.flip(-1), offset.flip(-1)
            offset = offset * torch.tensor([1.0, -1.0], device=offset.device).view(1, 2, 1, 1)
        sem = F.interpolate(sem, size=size, mode="bilinear", align_corners=False)
        center = F.interpolate(center, size=size, mode="bilinear", align_corners=False)
        offset = F.interpolate(offset, size=size, mode="bilinear", align_corners=False) / scale
        if i == 0:
            probs, centers, offsets = sem, center, offset
        else:
            probs, centers, offsets = probs + sem, centers + center, offsets + offset
    count = len(passes)
    return (probs / count).clamp_min(1e-12).log(), centers / count, offsets / count
