"""UPSNet's semantic head (reference sognet.md §1.4) and its two losses.

One sub-network of deformable 3x3 convolutions (torchvision's :class:`DeformConv2d`, each
with a plain 3x3 conv predicting its offsets, zero-initialised so training starts from a
regular grid) is shared by P2..P5; no normalisation. The outputs of P3..P5 are upsampled
bilinearly to P2's size (stride 4), concatenated, and a 1x1 conv gives the logits of every
class (stuff and things, contiguous ids). Channel plan: the layer before the last maps
``in_channels -> channels``; the others keep their input width (COCO, 3 layers:
256 -> 256 -> 128 -> 128).

Losses: cross-entropy of the logits upsampled x4 against the full-resolution semantic
target, and UPSNet's "RoI loss": the 1x1 classifier applied to the concatenated features
RoIAligned (28x28) at the GT boxes, against the target cropped to each box.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import DeformConv2d, roi_align

from panopticlab.models.common import IGNORE_LABEL


class DeformableConvLayer(nn.Module):
    """ReLU(DeformConv3x3(x, offsets(x))), offsets from a zero-initialised 3x3 conv (18 channels)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.offset = nn.Conv2d(in_channels, 18, 3, padding=1)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)
        self.conv = DeformConv2d(in_channels, out_channels, 3, padding=1)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_autocast_enabled(x.device.type):
            # torchvision's CPU deformable convolution has no bfloat16 kernel: run it in float32
            with torch.autocast(x.device.type, enabled=False):
                x = x.float()
                return F.relu(self.conv(x, self.offset(x)))
        return F.relu(self.conv(x, self.offset(x)))


class PlainConvLayer(nn.Module):
    """ReLU(Conv3x3(x)): the cheaper stand-in for :class:`DeformableConvLayer` (same init)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.conv(x))


class SemanticHead(nn.Module):
    """Deformable FCN shared over P2..P5 -> semantic logits at stride 4.

    Args:
        in_channels: the FPN's channels.
        num_classes: C, all categories (contiguous ids).
        num_layers: deformable layers in the shared sub-network (>= 1).
        channels: width of each level's output (the concatenation has ``4 * channels``).
        deformable: deformable 3x3 convolutions (UPSNet, SOGNet) or plain ones (cheaper: the
            deformable backward is slow on CPUs).
    """

    def __init__(self, in_channels: int, num_classes: int, num_layers: int = 3, channels: int = 128, deformable: bool = True):
        super().__init__()
        layer = DeformableConvLayer if deformable else PlainConvLayer
        layers = []
        width = in_channels
        for k in range(num_layers):
            out = channels if k >= num_layers - 2 else width
            layers.append(layer(width, out))
            width = out
        self.subnet = nn.Sequential(*layers)
        self.classifier = nn.Conv2d(4 * channels, num_classes, 1)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """P2..P5 -> (logits float [B, C, H/4, W/4], concatenated features float [B, 4 * channels, H/4, W/4])."""
        if len(features) != 4:
            raise ValueError(f"the semantic head takes P2..P5, got {len(features)} maps")
        size = features[0].shape[-2:]
        outputs = []
        for level, x in enumerate(features):
            y = self.subnet(x)
            if level > 0:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            outputs.append(y)
        fused = torch.cat(outputs, dim=1)
        return self.classifier(fused), fused


def semantic_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy of the logits upsampled to the target's size, mean over labelled pixels.

    Args:
        logits: float [B, C, h, w] at stride 4.
        target: int64 [B, H, W] contiguous ids, 255 = ignore (H, W = 4 h, 4 w: the padded input).

    Returns:
        float scalar; 0 (connected to ``logits``) when no pixel is labelled.
    """
    upsampled = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    return _mean_cross_entropy(upsampled, target)


def semantic_roi_loss(
    fused: Tensor, classifier: nn.Module, boxes: list[Tensor], target: Tensor, *, size: int = 28
) -> Tensor:
    """UPSNet's semantic RoI loss on the GT boxes.

    The concatenated stride-4 features are RoIAligned at each box (``size`` x ``size``,
    ``aligned=False`` like the original's RoIAlign), classified by the head's 1x1 conv, and
    compared with the semantic target inside the box, nearest-resampled to ``size`` x ``size``.

    Args:
        fused: float [B, F, h, w], :class:`SemanticHead`'s concatenated features.
        classifier: the head's 1x1 conv.
        boxes: per image float [N_b, 4] in input pixels.
        target: int64 [B, H, W] full-resolution semantic target (255 = ignore).

    Returns:
        float scalar, mean over the labelled cells of all boxes; 0 (connected) without boxes.
    """
    if sum(len(b) for b in boxes) == 0:
        return fused.sum() * 0.0
    pooled = roi_align(fused, boxes, size, spatial_scale=0.25, sampling_ratio=2, aligned=False)
    logits = classifier(pooled)  # [N, C, size, size]
    crops = torch.cat([box_targets(target[b], image_boxes, size) for b, image_boxes in enumerate(boxes)])
    return _mean_cross_entropy(logits, crops)


def box_targets(target: Tensor, boxes: Tensor, size: int) -> Tensor:
    """The label map inside each box, nearest-resampled to size x size.

    Cell (u, v) of box (x0, y0, x1, y1) takes the pixel under its centre,
    ``(y0 + (u + 0.5) (y1 - y0) / size, x0 + (v + 0.5) (x1 - x0) / size)``.

    Args:
        target: int64 [H, W].
        boxes: float [N, 4], (x0, y0, x1, y1) in pixels.

    Returns:
        int64 [N, size, size].
    """
    height, width = target.shape
    steps = (torch.arange(size, device=boxes.device, dtype=boxes.dtype) + 0.5) / size
    rows = (boxes[:, 1:2] + steps[None, :] * (boxes[:, 3:4] - boxes[:, 1:2])).floor().long().clamp(0, height - 1)
    cols = (boxes[:, 0:1] + steps[None, :] * (boxes[:, 2:3] - boxes[:, 0:1])).floor().long().clamp(0, width - 1)
    return target[rows[:, :, None], cols[:, None, :]]


def _mean_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    total = F.cross_entropy(logits, target, ignore_index=IGNORE_LABEL, reduction="sum")
    return total / (target != IGNORE_LABEL).sum().clamp(min=1)
