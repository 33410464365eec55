"""DeepLabV3+-style decoder with one extra stage (detectron2 ``DeepLabV3PlusHead.layers``, reference §1.4).

ASPP on the deepest feature (res5), then for each lower-level feature, deepest first
(res3, then res2): project it with a 1x1 conv, upsample the running map bilinearly to its size,
concatenate ``[projected, upsampled]`` (detectron2's order; the old code and DeepLab2 use the
opposite) and fuse with a 5x5 DSConv or two 3x3 convs.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from panopticlab.models.panoptic_deeplab.aspp import ASPP
from panopticlab.models.panoptic_deeplab.heads import ConvBNReLU, DepthwiseSeparableConv, HeadVariant, two_conv3x3


class DecoderStage(nn.Module):
    """One upsample-and-fuse step.

    ``forward(y, feature)``: y float [B,Cy,h,w], feature [B,Cf,H,W] -> [B,out_channels,H,W].
    """

    def __init__(
        self, feature_channels: int, projection_channels: int, in_channels: int, out_channels: int, variant: HeadVariant
    ) -> None:
        super().__init__()
        self.project = ConvBNReLU(feature_channels, projection_channels, 1)
        fuse_in = projection_channels + in_channels
        if variant == "dsconv":
            self.fuse: nn.Module = DepthwiseSeparableConv(fuse_in, out_channels, 5)
        elif variant == "conv":
            self.fuse = two_conv3x3(fuse_in, out_channels, out_channels)
        else:
            raise ValueError(f"unknown head variant {variant!r}: expected 'dsconv' or 'conv'")

    def forward(self, y: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        projected = self.project(feature)
        y = F.interpolate(y, size=projected.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([projected, y], dim=1))


class PanopticDeepLabDecoder(nn.Module):
    """ASPP + decoder stages; ``forward(features)`` -> float [B,channels,H/4,W/4] (at the
    resolution of the last stage's feature).

    Args:
        aspp: applied to ``features[aspp_feature]``.
        stages: name of the low-level feature -> its stage, deepest first (``res3``, ``res2``).
        aspp_feature: name of the deepest feature (``res5``).
    """

    def __init__(self, aspp: ASPP, stages: Mapping[str, DecoderStage], aspp_feature: str = "res5") -> None:
        super().__init__()
        self.aspp_feature = aspp_feature
        self.aspp = aspp
        self.stages = nn.ModuleDict(stages)

    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        y = self.aspp(features[self.aspp_feature])
        for name, stage in self.stages.items():
            y = stage(y, features[name])
        return y


def build_decoder(
    feature_channels: Mapping[str, int],
    *,
    low_level_features: Sequence[str] = ("res3", "res2"),
    projection_channels: Sequence[int] = (64, 32),
    decoder_channels: int = 256,
    aspp_feature: str = "res5",
    aspp_channels: int = 256,
    aspp_dilations: Sequence[int] = (6, 12, 18),
    aspp_depthwise_separable: bool = True,
    aspp_pool_size: tuple[int, int] | None = None,
    aspp_dropout: float = 0.1,
    variant: HeadVariant = "dsconv",
) -> PanopticDeepLabDecoder:
    """Build one decoder branch from plain numbers.

    ``feature_channels`` gives each backbone feature's channels (``{"res2": 256, ...}``);
    ``low_level_features`` and ``projection_channels`` pair up, deepest first. detectron2:
    projections (64, 32) in both branches, ``decoder_channels`` 256 (semantic) / 128 (instance).
    """
    if len(low_level_features) != len(projection_channels):
        raise ValueError(
            f"{len(low_level_features)} low-level features {tuple(low_level_features)} but "
            f"{len(projection_channels)} projection widths {tuple(projection_channels)}"
        )
    aspp = ASPP(
        feature_channels[aspp_feature],
        aspp_channels,
        aspp_dilations,
        depthwise_separable=aspp_depthwise_separable,
        pool_size=aspp_pool_size,
        dropout=aspp_dropout,
    )
    stages = {}
    in_channels = aspp_channels
    for name, proj in zip(low_level_features, projection_channels):
        stages[name] = DecoderStage(feature_channels[name], proj, in_channels, decoder_channels, variant)
        in_channels = decoder_channels
    return PanopticDeepLabDecoder(aspp, stages, aspp_feature)
