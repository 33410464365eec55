"""Atrous Spatial Pyramid Pooling, as detectron2's ``detectron2/layers/aspp.py`` (reference §1.3).

Five parallel branches on the deepest feature map, each -> ``out_channels``: a 1x1 conv, three
3x3 atrous convs (dilations 6/12/18 at output stride 16; depthwise-separable or regular) and
image pooling; concatenated, projected by a 1x1 conv, then dropout (training only).

Image pooling: detectron2 averages over a fixed kernel = train crop / 16 with stride 1, so at
test sizes the "image" pooling is a tiled average, and every res5 size that is not a multiple of
the kernel raises an error (the most reported Panoptic-DeepLab issue). Here ``pool_size=None``
(the default) pools globally and works at any size; ``pool_size=(h, w)`` reproduces
detectron2 exactly for checkpoints trained that way.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from panopticlab.errors import InputError
from panopticlab.models.panoptic_deeplab.heads import ConvBNReLU, DepthwiseSeparableConv, c2_xavier_fill


class ImagePooling(nn.Module):
    """Average pool -> 1x1 conv (with bias, no BN) -> ReLU -> bilinear resize to the input size.

    float [B,Cin,H,W] -> [B,Cout,H,W]. ``pool_size=None``: global average;
    ``(h, w)``: ``AvgPool2d(kernel=(h, w), stride=1)`` as detectron2 with a train crop.
    """

    def __init__(self, in_channels: int, out_channels: int, pool_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.pool_size = pool_size
        self.pool: nn.Module = nn.AdaptiveAvgPool2d(1) if pool_size is None else nn.AvgPool2d(pool_size, stride=1)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=True)
        self.act = nn.ReLU(inplace=True)
        c2_xavier_fill(self.conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        if self.pool_size is not None and (size[0] % self.pool_size[0] or size[1] % self.pool_size[1]):
            raise InputError(
                f"ASPP image pooling with a fixed {tuple(self.pool_size)} kernel needs a feature map whose size "
                f"is a multiple of it, got {tuple(size)}: pad the input (size_divisibility) or use global pooling"
            )
        y = self.act(self.conv(self.pool(x)))
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """float [B,Cin,H,W] -> [B,out_channels,H,W].

    Args:
        in_channels: channels of the input feature (2048 for res5 of a ResNet-50).
        out_channels: channels of every branch and of the output (256).
        dilations: the three atrous rates ((6, 12, 18) at output stride 16, (3, 6, 9) at 32).
        depthwise_separable: 3x3 branches as DSConv (detectron2 DSConv config) or regular convs
            (detectron2 regular config, DeepLab2).
        pool_size: ``None`` for global image pooling, or detectron2's fixed kernel (crop / stride).
        dropout: dropout after the projection, training only (detectron2/DeepLab2 0.1, old code 0.5).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        dilations: Sequence[int] = (6, 12, 18),
        *,
        depthwise_separable: bool = True,
        pool_size: tuple[int, int] | None = None,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if len(dilations) != 3:
            raise ValueError(f"ASPP takes 3 dilations, got {tuple(dilations)}")
        self.conv1x1 = ConvBNReLU(in_channels, out_channels, 1)
        self.atrous = nn.ModuleList(
            DepthwiseSeparableConv(in_channels, out_channels, 3, dilation=d)
            if depthwise_separable
            else ConvBNReLU(in_channels, out_channels, 3, dilation=d)
            for d in dilations
        )
        self.pooling = ImagePooling(in_channels, out_channels, pool_size)
        self.project = ConvBNReLU(5 * out_channels, out_channels, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.conv1x1(x), *(conv(x) for conv in self.atrous), self.pooling(x)]
        return self.dropout(self.project(torch.cat(branches, dim=1)))
