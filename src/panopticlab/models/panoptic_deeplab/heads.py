"""Conv blocks shared by the ASPP, the decoders and the heads, and the three prediction heads.

Every block follows detectron2's conventions: a conv followed by BatchNorm has no bias, and
weights are initialised as detectron2 does (``c2_xavier_fill`` for plain convs,
``c2_msra_fill`` for depthwise-separable convs, ``normal(0, 0.001)`` for the predictors).

Head variants (reference §1.5):

=========  =================================  ==================================
head       ``"dsconv"`` (D2 DSConv config)    ``"conv"`` (D2 regular config)
=========  =================================  ==================================
semantic   5x5 DSConv 256->256, 1x1 -> C      3x3 256->256, 3x3 256->256, 1x1 -> C
offset     5x5 DSConv 128->32, 1x1 -> 2       3x3 128->128, 3x3 128->32, 1x1 -> 2
=========  =================================  ==================================

The centre head is two 3x3 convs (128->128->32) in both detectron2 configs (``"d2"``) and a
5x5 DSConv 128->32 in the paper / DeepLab2 (``"dsconv"``); it outputs a raw heatmap (no sigmoid).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

HeadVariant = Literal["dsconv", "conv"]


def c2_xavier_fill(conv: nn.Conv2d) -> None:
    """detectron2's ``c2_xavier_fill``: kaiming-uniform with a=1, bias 0."""
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def c2_msra_fill(conv: nn.Conv2d) -> None:
    """detectron2's ``c2_msra_fill``: kaiming-normal, fan-out, ReLU gain, bias 0."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class ConvBNReLU(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> ReLU; float [B,Cin,H,W] -> [B,Cout,H',W'].

    ``padding`` defaults to "same" for odd kernels: ``dilation * (kernel_size - 1) // 2``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        dilation: int = 1,
        groups: int = 1,
        init: Literal["xavier", "msra"] = "xavier",
    ) -> None:
        super().__init__()
        padding = dilation * (kernel_size - 1) // 2
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, groups=groups, bias=False
        )
        self.norm = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)
        (c2_xavier_fill if init == "xavier" else c2_msra_fill)(self.conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class DepthwiseSeparableConv(nn.Module):
    """Depthwise kxk conv + BN + ReLU, then pointwise 1x1 conv + BN + ReLU (detectron2's
    ``DepthwiseSeparableConv2d`` with norm and activation after both convs).

    float [B,Cin,H,W] -> [B,Cout,H,W].
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, dilation: int = 1) -> None:
        super().__init__()
        self.depthwise = ConvBNReLU(
            in_channels, in_channels, kernel_size, dilation=dilation, groups=in_channels, init="msra"
        )
        self.pointwise = ConvBNReLU(in_channels, out_channels, 1, init="msra")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


def two_conv3x3(in_channels: int, mid_channels: int, out_channels: int) -> nn.Sequential:
    """Two 3x3 :class:`ConvBNReLU`: ``in -> mid -> out`` (detectron2's regular-conv blocks)."""
    return nn.Sequential(ConvBNReLU(in_channels, mid_channels, 3), ConvBNReLU(mid_channels, out_channels, 3))


def head_tower(in_channels: int, out_channels: int, variant: HeadVariant) -> nn.Module:
    """The block before a predictor: ``"dsconv"`` = 5x5 DSConv in->out; ``"conv"`` = 3x3 in->in,
    3x3 in->out (same 5x5 receptive field, much heavier)."""
    if variant == "dsconv":
        return DepthwiseSeparableConv(in_channels, out_channels, 5)
    if variant == "conv":
        return two_conv3x3(in_channels, in_channels, out_channels)
    raise ValueError(f"unknown head variant {variant!r}: expected 'dsconv' or 'conv'")


class PredictionHead(nn.Module):
    """A conv tower followed by a 1x1 predictor conv (with bias, ``normal(0, 0.001)`` init).

    float [B,Cin,H/4,W/4] -> [B,out_channels,H/4,W/4]; no activation on the output.
    """

    def __init__(self, tower: nn.Module, tower_channels: int, out_channels: int) -> None:
        super().__init__()
        self.tower = tower
        self.predictor = nn.Conv2d(tower_channels, out_channels, kernel_size=1)
        nn.init.normal_(self.predictor.weight, 0.0, 0.001)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.tower(x))


def semantic_head(in_channels: int, head_channels: int, num_classes: int, variant: HeadVariant) -> PredictionHead:
    """Semantic head: ``num_classes`` logits."""
    return PredictionHead(head_tower(in_channels, head_channels, variant), head_channels, num_classes)


def offset_head(in_channels: int, head_channels: int, variant: HeadVariant) -> PredictionHead:
    """Offset head: 2 channels in (dy, dx) order, in stride-4 pixel units."""
    return PredictionHead(head_tower(in_channels, head_channels, variant), head_channels, 2)


def center_head(in_channels: int, head_channels: int, variant: Literal["d2", "dsconv"]) -> PredictionHead:
    """Centre head: 1 channel, a raw heatmap (no sigmoid).

    ``"d2"``: 3x3 in->in, 3x3 in->head (both detectron2 configs, whatever their head variant);
    ``"dsconv"``: 5x5 DSConv in->head (paper / DeepLab2 / original PyTorch code).
    """
    if variant not in ("d2", "dsconv"):
        raise ValueError(f"unknown centre head {variant!r}: expected 'd2' or 'dsconv'")
    tower = head_tower(in_channels, head_channels, "conv" if variant == "d2" else "dsconv")
    return PredictionHead(tower, head_channels, 1)
