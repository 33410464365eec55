"""Mask maths shared by data, models and evaluation: boxes of masks, and which masks overlap.

Pure functions of bool tensors [N, H, W]; nothing here knows of a model or a dataset.
"""

from __future__ import annotations

import torch
from torch import Tensor


def masks_to_boxes(masks: Tensor) -> Tensor:
    """Boxes (x0, y0, x1, y1) with x1 = last column + 1 of bool masks [N, H, W]; zeros for empty masks.

    Returns:
        float32 [N, 4].
    """
    boxes = torch.zeros((masks.shape[0], 4), dtype=torch.float32)
    if masks.numel() == 0:
        return boxes
    rows = masks.any(dim=2)  # [N, H]
    cols = masks.any(dim=1)  # [N, W]
    present = rows.any(dim=1)
    h, w = masks.shape[-2:]
    y0 = rows.float().argmax(dim=1)
    y1 = h - rows.flip(1).float().argmax(dim=1)
    x0 = cols.float().argmax(dim=1)
    x1 = w - cols.flip(1).float().argmax(dim=1)
    boxes[present] = torch.stack([x0, y0, x1, y1], dim=1).float()[present]
    return boxes


def overlap_graph(masks: Tensor, threshold: float = 0.1) -> Tensor:
    """Which masks overlap: ``G_ij = 1`` where ``|M_i & M_j| / min(|M_i|, |M_j|) >= threshold``.

    SOGNet's relation ground truth (on amodal masks, threshold 0.1) and the overlap-relation
    metric's "does overlap" are this graph.

    Args:
        masks: bool [N, H, W] (e.g. the full, overlapping instance masks).
        threshold: the overlap fraction of the smaller mask.

    Returns:
        float32 [N, N], symmetric, zero diagonal. An empty mask overlaps nothing.
    """
    flat = masks.flatten(1)
    # Pixel counts are exact in float32 up to 2**24 pixels; beyond that count in float64.
    dtype = torch.float32 if flat.shape[1] <= 2**24 else torch.float64
    flat = flat.to(dtype)
    intersection = (flat @ flat.T).double()  # [N, N]
    area = intersection.diagonal()
    smaller = torch.minimum(area[:, None], area[None, :])
    overlap = (smaller > 0) & (intersection / smaller.clamp(min=1) >= threshold)
    overlap.fill_diagonal_(False)
    return overlap.float()
