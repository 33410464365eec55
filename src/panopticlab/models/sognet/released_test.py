"""The released SOGNet / UPSNet test pipeline's pixel rules (``test_pipeline: released``).

panopticlab's own pipeline merges at the image's own resolution, with boxes pasted and cropped
by one continuous rule (:func:`.panoptic_head.box_support`). The released code
(``sognet/models/sognet.py`` at test, ``tools/test_net.py``) instead works on the resized input
and rounds boxes to pixels, in three different ways, all built here:

* :func:`paste_mask_logits_released` (``MaskRemoval``): the inclusive box truncated to integers,
  the 28 x 28 logits resized bilinearly to its ``(x2 - x1 + 1) x (y2 - y1 + 1)`` pixels by
  ``cv2.resize`` itself and pasted, 0 elsewhere;
* :func:`semantic_crop_support` (``SegTerm``): each instance's semantic logit kept on rows
  ``int(y1) .. round(y2)`` and columns ``int(x1) .. round(x2)`` of the inclusive box;
* :func:`nearest_to_image` (``cv2.resize(..., fx=1 / im_scale, INTER_NEAREST)``): the panoptic
  and semantic argmax maps of the input brought to the image's pixels, pixel ``x`` reading input
  pixel ``floor(x * im_scale)`` (up to float32 rounding of the scale). The majority-class relabelling and the stuff area limit
  (``get_unified_pan_result``) then run at the image's resolution.

Boxes are panopticlab's continuous ones (the released inclusive box with ``x2 + 1, y2 + 1``).
"""

from __future__ import annotations

import torch
from torch import Tensor


def paste_mask_logits_released(mask_logits: Tensor, boxes: Tensor, height: int, width: int) -> Tensor:
    """``MaskRemoval``'s paste of M x M logits into their boxes on an H x W canvas.

    Args:
        mask_logits: float [N, M, M]; boxes: float [N, 4] continuous, canvas pixels.

    Returns:
        float [N, H, W], 0 outside each (truncated, inclusive) box.
    """
    cv2 = _opencv()
    canvas = mask_logits.new_zeros((len(boxes), height, width))
    inclusive = torch.trunc(boxes.detach().float() - boxes.new_tensor([0.0, 0.0, 1.0, 1.0])).to(torch.int64)
    for i, (bx0, by0, bx1, by1) in enumerate(inclusive.tolist()):
        w, h = max(bx1 - bx0 + 1, 1), max(by1 - by0 + 1, 1)
        logits = torch.from_numpy(cv2.resize(mask_logits[i].detach().float().cpu().numpy(), (w, h))).to(canvas.device)
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
    """Maps [..., h, w] of the input (un-padded) -> [..., H, W] as ``tools/test_net.py`` does it:
    ``cv2.resize(..., fx=1 / im_info[2], INTER_NEAREST)`` with ``im_info`` float32, so ``fx`` is
    ``1 / float32(scale)`` in float32, and OpenCV's nearest rule reads input pixel
    ``min(floor(x * (1 / fx)), w - 1)`` (``1 / fx`` in float64)."""
    height, width = image_size
    fx = 1.0 / torch.tensor(scale, dtype=torch.float32)  # float32, as numpy divides a float32 scalar
    step = 1.0 / fx.double()
    rows = torch.floor(torch.arange(height, dtype=torch.float64) * step).to(torch.int64).clamp(max=maps.shape[-2] - 1)
    cols = torch.floor(torch.arange(width, dtype=torch.float64) * step).to(torch.int64).clamp(max=maps.shape[-1] - 1)
    return maps[..., rows.to(maps.device)[:, None], cols.to(maps.device)[None, :]]


def released_overlap_graph(masks: Tensor, threshold: float = 0.1) -> Tensor:
    """float32 [N, N]: which of N masks (bool [N, H, W]) overlap, as the released test decides it
    (``SOGNet.get_new_index``): ``|M_i & M_j| / min(|M_i|, |M_j|) > threshold`` in float32, strictly
    (:func:`~panopticlab.masks.overlap_graph`, the training rule, takes ``>=`` in float64: the two
    differ where the fraction is exactly the threshold, e.g. 10 of 100 pixels)."""
    flat = masks.flatten(1).float()
    intersection = flat @ flat.T  # pixel counts, exact in float32 below 2**24
    area = intersection.diagonal()
    fraction = intersection / torch.minimum(area[:, None], area[None, :])  # 0 / 0 = nan: no overlap
    overlap = fraction - torch.eye(len(masks), device=masks.device) > threshold
    return overlap.float()


def released_overlapping_order(overlap: Tensor) -> Tensor:
    """int64 [M]: the instances that overlap another, most partners first, in the released order:
    ``(-partners).argsort()`` on float32, torch's default (not stable) sort, the call the released
    code makes, so that instances with as many partners come in the order it gives them."""
    partners = (overlap > 0).float().sum(dim=1)
    return (-partners).argsort()[: int((partners > 0).sum())]


def released_network_input(image: Tensor, mean: tuple[float, ...], std: tuple[float, ...], scale: float, bgr: bool) -> Tensor:
    """The released ``prep_im_for_blob``: an image float [3, H, W] (RGB 0..255) -> the network's
    input float32 [3, round(H * scale), round(W * scale)] before padding.

    The released order and arithmetic: channels reversed (BGR), the means subtracted in float64 and
    rounded to float32 (numpy's in-place ``im -= pixel_means``), then OpenCV's own
    ``cv2.resize(im, fx=scale, fy=scale, INTER_LINEAR)`` on the H x W x 3 array. OpenCV runs it
    rather than a rewrite of its rule: a rewrite differed from its kernel by one or two float32
    ulps at half of the pixels, which the deformable semantic head turned into 7 % of the final
    pixels (docs/model_zoo.md).
    """
    if bgr:
        image = image.flip(0)
    mean64 = torch.tensor(mean, dtype=torch.float64, device=image.device).view(3, 1, 1)
    std64 = torch.tensor(std, dtype=torch.float64, device=image.device).view(3, 1, 1)
    normalised = ((image.double() - mean64) / std64).float()
    if scale == 1.0:
        return normalised
    cv2 = _opencv()
    resized = cv2.resize(normalised.permute(1, 2, 0).cpu().numpy(), None, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy(resized).permute(2, 0, 1).contiguous().to(image.device)


def _opencv():
    """OpenCV (``cv2``), which the released pipeline resizes with, as the released code does."""
    try:
        import cv2
    except ImportError as error:  # pragma: no cover - the test extra installs it
        raise ImportError(
            "model.sognet.test_pipeline: released resizes with OpenCV, as the released code does; "
            "install it with: pip install 'panopticlab[released]'"
        ) from error
    return cv2
