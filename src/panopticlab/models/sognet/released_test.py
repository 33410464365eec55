"""The released SOGNet / UPSNet test pipeline's pixel rules (``test_pipeline: released``).

panopticlab's own pipeline merges at the image's own resolution, with boxes pasted and cropped
by one continuous rule (:func:`.panoptic_head.box_support`). The released code
(``sognet/models/sognet.py`` at test, ``tools/test_net.py``) instead works on the resized input
and rounds boxes to pixels, in three different ways, all built here:

* :func:`paste_mask_logits_released` (``MaskRemoval``): the inclusive box truncated to integers,
  the 28 x 28 logits resized bilinearly to its ``(x2 - x1 + 1) x (y2 - y1 + 1)`` pixels
  (``cv2.resize``, half-pixel centres) and pasted, 0 elsewhere;
* :func:`semantic_crop_support` (``SegTerm``): each instance's semantic logit kept on rows
  ``int(y1) .. round(y2)`` and columns ``int(x1) .. round(x2)`` of the inclusive box;
* :func:`nearest_to_image` (``cv2.resize(..., fx=1 / im_scale, INTER_NEAREST)``): the panoptic
  and semantic argmax maps of the input brought to the image's pixels, pixel ``x`` reading input
  pixel ``floor(x * im_scale)``. The majority-class relabelling and the stuff area limit
  (``get_unified_pan_result``) then run at the image's resolution.

Boxes are panopticlab's continuous ones (the released inclusive box with ``x2 + 1, y2 + 1``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def paste_mask_logits_released(mask_logits: Tensor, boxes: Tensor, height: int, width: int) -> Tensor:
    """``MaskRemoval``'s paste of M x M logits into their boxes on an H x W canvas.

    Args:
        mask_logits: float [N, M, M]; boxes: float [N, 4] continuous, canvas pixels.

    Returns:
        float [N, H, W], 0 outside each (truncated, inclusive) box.
    """
    canvas = mask_logits.new_zeros((len(boxes), height, width))
    inclusive = torch.trunc(boxes.detach().float() - boxes.new_tensor([0.0, 0.0, 1.0, 1.0])).to(torch.int64)
    for i, (bx0, by0, bx1, by1) in enumerate(inclusive.tolist()):
        w, h = max(bx1 - bx0 + 1, 1), max(by1 - by0 + 1, 1)
        logits = F.interpolate(mask_logits[i][None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        x0, x1, y0, y1 = max(bx0, 0), min(bx1 + 1, width), max(by0, 0), min(by1 + 1, height)
        if x1 > x0 and y1 > y0:
            canvas[i, y0:y1, x0:x1] = logits[y0 - by0 : y1 - by0, x0 - bx0 : x1 - bx0]
    return canvas


def semantic_crop_support(boxes: Tensor, height: int, width: int) -> Tensor:
    """bool [N, H, W]: ``SegTerm``'s pixels of each box (continuous, canvas pixels): rows
    ``int(y1) .. round(y2 - 1)`` and columns ``int(x1) .. round(x2 - 1)`` (inclusive), i.e. the
    inclusive box's start truncated and its end rounded (half to even)."""
    boxes = boxes.detach().float()
    start = torch.trunc(boxes[:, :2]).to(torch.int64)
    end = torch.round(boxes[:, 2:] - 1).to(torch.int64) + 1  # exclusive
    ys = torch.arange(height, device=boxes.device)
    xs = torch.arange(width, device=boxes.device)
    rows = (ys[None, :] >= start[:, 1:2]) & (ys[None, :] < end[:, 1:2])
    cols = (xs[None, :] >= start[:, 0:1]) & (xs[None, :] < end[:, 0:1])
    return rows[:, :, None] & cols[:, None, :]


def nearest_to_image(maps: Tensor, image_size: tuple[int, int], scale: float) -> Tensor:
    """Maps [..., h, w] of the input (un-padded) -> [..., H, W]: pixel (y, x) reads input pixel
    ``(min(floor(y * scale), h - 1), min(floor(x * scale), w - 1))`` (OpenCV's nearest resize by
    ``1 / scale``)."""
    height, width = image_size
    rows = torch.floor(torch.arange(height, dtype=torch.float64) * scale).to(torch.int64).clamp(max=maps.shape[-2] - 1)
    cols = torch.floor(torch.arange(width, dtype=torch.float64) * scale).to(torch.int64).clamp(max=maps.shape[-1] - 1)
    return maps[..., rows.to(maps.device)[:, None], cols.to(maps.device)[None, :]]
