"""The Panoptic-DeepLab seed's own backbones, layer for layer, for its released checkpoints.

bowenc0221/panoptic-deeplab publishes Cityscapes and COCO models with an Xception-65 and an
HRNet backbone (detectron2 pickles of its ``d2_xception_65`` and ``d2_hrnet`` backbones). They are
not timm's networks of the same names (timm's aligned Xception orders ReLU and BN differently
and taps other layers), so they are built here as the seed defines them, with the seed's module
names: a checkpoint's ``backbone.*`` keys are this module's state-dict keys as they are.
Use timm (``timm:<name>``) for new work; these exist for the seed's weights.

* ``seed:xception65`` (:class:`Xception65`): DeepLab's Xception-65 (entry flow of 3 blocks,
  middle flow of 16, exit flow of 2). ``res2`` and ``res3`` are taken inside blocks 2 and 3
  (after their second separable conv, before the striding third), ``res4`` after block 19,
  ``res5`` after block 21. Output stride 16: the exit flow keeps stride 16, its last block dilated 2.
* ``seed:hrnet_w18`` / ``seed:hrnet_w32`` / ``seed:hrnet_w48`` (:class:`HRNet`): HRNet-V2 (stem of
  two stride-2 3x3 convs, four stages of 1 / 2 / 3 / 4 parallel branches); its four branches are
  ``res2``..``res5`` at strides 4, 8, 16, 32 (no dilation).

Every backbone returns ``{name: [B, C, H / stride, W / stride]}`` for its ``out_features`` and has
``feature_channels`` / ``feature_strides``, like :mod:`panopticlab.models.backbones`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

HRNET_WIDTHS = (18, 32, 48)


# -- Xception-65 ---------------------------------------------------------------------------------


class SeparableConv(nn.Module):
    """3x3 depthwise + BN, 1x1 pointwise + BN, under the name ``block``.

    ``relu_first``: ReLU, depthwise, BN, pointwise, BN (no ReLU after); otherwise ReLU after each
    BN (the last block of the exit flow). The depthwise conv carries the stride and dilation.
    """

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1, dilation: int = 1, relu_first: bool = True):
        super().__init__()
        depthwise = nn.Conv2d(
            in_channels, in_channels, 3, stride=stride, padding=dilation, dilation=dilation, groups=in_channels, bias=False
        )
        pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        if relu_first:
            # not in place: the block's input also feeds its shortcut
            layers = [("relu", nn.ReLU()), ("depthwise", depthwise), ("bn_depth", nn.BatchNorm2d(in_channels)),
                      ("pointwise", pointwise), ("bn_point", nn.BatchNorm2d(out_channels))]  # fmt: skip
        else:
            layers = [("depthwise", depthwise), ("bn_depth", nn.BatchNorm2d(in_channels)), ("relu1", nn.ReLU(inplace=True)),
                      ("pointwise", pointwise), ("bn_point", nn.BatchNorm2d(out_channels)), ("relu2", nn.ReLU(inplace=True))]  # fmt: skip
        self.block = nn.Sequential(OrderedDict(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class XceptionBlock(nn.Module):
    """Three separable convs (the third strided) and a shortcut: ``conv`` (1x1 + BN, strided),
    ``sum`` (identity) or ``none``. ``forward`` returns the output and the second conv's output."""

    def __init__(
        self,
        channels: Sequence[int],
        *,
        stride: int = 1,
        dilation: int = 1,
        shortcut: str = "conv",
        relu_first: bool = True,
    ):
        super().__init__()
        c0, c1, c2, c3 = channels
        self.shortcut = shortcut
        if shortcut == "conv":
            self.conv = nn.Conv2d(c0, c3, 1, stride=stride, bias=False)
            self.bn = nn.BatchNorm2d(c3)
        self.sep_conv1 = SeparableConv(c0, c1, dilation=dilation, relu_first=relu_first)
        self.sep_conv2 = SeparableConv(c1, c2, dilation=dilation, relu_first=relu_first)
        self.sep_conv3 = SeparableConv(c2, c3, stride=stride, dilation=dilation, relu_first=relu_first)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inner = self.sep_conv2(self.sep_conv1(x))
        out = self.sep_conv3(inner)
        if self.shortcut == "conv":
            out = out + self.bn(self.conv(x))
        elif self.shortcut == "sum":
            out = out + x
        return out, inner


class Xception65(nn.Module):
    """The seed's Xception-65 (``d2_xception_65``); see the module docstring.

    Args:
        output_stride: 16 (the seed's Panoptic-DeepLab configs: ``RES5_DILATION: 2``) or 32.
        out_features: names among res2..res5.
    """

    all_channels = {"res2": 256, "res3": 728, "res4": 728, "res5": 2048}

    def __init__(self, *, output_stride: int = 16, out_features: Sequence[str] = ("res2", "res3", "res5")):
        super().__init__()
        if output_stride not in (16, 32):
            raise ValueError(f"Xception-65 output stride must be 16 or 32, got {output_stride}")
        unknown = [name for name in out_features if name not in self.all_channels]
        if unknown:
            raise ValueError(f"unknown backbone features {unknown}: expected names among res2..res5")
        exit_stride, exit_dilations = (2, (1, 1)) if output_stride == 32 else (1, (1, 2))
        self.conv1 = nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        # entry flow
        self.block1 = XceptionBlock((64, 128, 128, 128), stride=2)
        self.block2 = XceptionBlock((128, 256, 256, 256), stride=2)
        self.block3 = XceptionBlock((256, 728, 728, 728), stride=2)
        # middle flow: blocks 4..19
        for k in range(4, 20):
            setattr(self, f"block{k}", XceptionBlock((728,) * 4, shortcut="sum"))
        # exit flow
        self.block20 = XceptionBlock((728, 728, 1024, 1024), stride=exit_stride, dilation=exit_dilations[0])
        self.block21 = XceptionBlock((1024, 1536, 1536, 2048), dilation=exit_dilations[1], shortcut="none", relu_first=False)
        self.out_features = tuple(out_features)
        strides = {"res2": 4, "res3": 8, "res4": 16, "res5": output_stride}
        self.feature_channels = {k: self.all_channels[k] for k in out_features}
        self.feature_strides = {k: strides[k] for k in out_features}

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.relu(self.bn1(self.conv1(images)))
        x = self.relu(self.bn2(self.conv2(x)))
        x, _ = self.block1(x)
        x, res2 = self.block2(x)  # res2: inside block 2, stride 4
        x, res3 = self.block3(x)  # res3: inside block 3, stride 8
        for k in range(4, 20):
            x, _ = getattr(self, f"block{k}")(x)
        features = {"res2": res2, "res3": res3, "res4": x}
        if "res5" in self.out_features:
            x, _ = self.block20(x)
            features["res5"], _ = self.block21(x)
        return {name: features[name] for name in self.out_features}


# -- HRNet ------------------------------------------------------------------------------------------


def _conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int, relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _blocks(block: type[nn.Module], in_channels: int, planes: int, count: int) -> nn.Sequential:
    """``count`` residual blocks; the first projects its shortcut when the width changes."""
    out_channels = planes * block.expansion
    downsample = None
    if in_channels != out_channels:
        downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
    layers = [block(in_channels, planes, 1, downsample)]
    layers += [block(out_channels, planes) for _ in range(count - 1)]
    return nn.Sequential(*layers)


class HRModule(nn.Module):
    """One exchange unit: each branch runs 4 basic blocks, then every output branch i sums all
    branches, resampled to it (``fuse_layers[i][j]``: 1x1 conv + BN and bilinear upsampling,
    align_corners=True, from a coarser j; a chain of stride-2 3x3 convs from a finer j), then ReLU."""

    def __init__(self, channels: Sequence[int], blocks_per_branch: int = 4):
        super().__init__()
        n = len(channels)
        self.branches = nn.ModuleList(_blocks(BasicBlock, c, c, blocks_per_branch) for c in channels)
        self.fuse_layers = None
        if n > 1:
            rows = []
            for i in range(n):
                row: list[nn.Module | None] = []
                for j in range(n):
                    if j > i:
                        row.append(_conv_bn(channels[j], channels[i], 1, 1, relu=False))
                    elif j == i:
                        row.append(None)
                    else:
                        steps = [_conv_bn(channels[j], channels[j], 3, 2, relu=True) for _ in range(i - j - 1)]
                        steps.append(_conv_bn(channels[j], channels[i], 3, 2, relu=False))
                        row.append(nn.Sequential(*steps))
                rows.append(nn.ModuleList(row))
            self.fuse_layers = nn.ModuleList(rows)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        x = [branch(t) for branch, t in zip(self.branches, inputs)]
        if self.fuse_layers is None:
            return x
        fused = []
        for i, row in enumerate(self.fuse_layers):
            y = None
            for j, layer in enumerate(row):  # summed in branch order, as the seed does
                if j > i:
                    term = F.interpolate(layer(x[j]), size=x[i].shape[-2:], mode="bilinear", align_corners=True)
                else:
                    term = x[j] if j == i else layer(x[j])
                y = term if y is None else y + term
            fused.append(self.relu(y))
        return fused


class HRNet(nn.Module):
    """The seed's HRNet-V2 (``d2_hrnet``; HRNet-Image-Classification's W18 / W32 / W48 stages).

    Stage 1: 4 bottlenecks at 64 planes (256 channels); stages 2, 3, 4: 1, 4 and 3 modules of
    2, 3 and 4 branches of widths ``(w, 2w, 4w, 8w)``. ``transitionK`` adapts the branches between
    stages (a 3x3 conv where the width changes, a stride-2 3x3 conv from the coarsest branch for a
    new one).

    Args:
        width: 18, 32 or 48.
        out_features: names among res2..res5 (the four branches, strides 4..32).
    """

    def __init__(self, width: int = 48, *, out_features: Sequence[str] = ("res2", "res3", "res4", "res5")):
        super().__init__()
        if width not in HRNET_WIDTHS:
            raise ValueError(f"HRNet width must be one of {HRNET_WIDTHS}, got {width}")
        names = ("res2", "res3", "res4", "res5")
        unknown = [name for name in out_features if name not in names]
        if unknown:
            raise ValueError(f"unknown backbone features {unknown}: expected names among res2..res5")
        widths = [width * 2**k for k in range(4)]
        self.conv1 = nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = _blocks(Bottleneck, 64, 64, 4)
        self.transition1 = self._transition([256], widths[:2])
        self.stage2 = nn.Sequential(*[HRModule(widths[:2]) for _ in range(1)])
        self.transition2 = self._transition(widths[:2], widths[:3])
        self.stage3 = nn.Sequential(*[HRModule(widths[:3]) for _ in range(4)])
        self.transition3 = self._transition(widths[:3], widths)
        self.stage4 = nn.Sequential(*[HRModule(widths) for _ in range(3)])
        self.out_features = tuple(out_features)
        self.feature_channels = {name: widths[names.index(name)] for name in out_features}
        self.feature_strides = {name: 4 * 2 ** names.index(name) for name in out_features}

    @staticmethod
    def _transition(before: Sequence[int], after: Sequence[int]) -> nn.ModuleList:
        layers: list[nn.Module | None] = []
        for i, channels in enumerate(after):
            if i < len(before):
                layers.append(None if before[i] == channels else _conv_bn(before[i], channels, 3, 1, relu=True))
            else:  # a new, coarser branch from the coarsest one
                steps = [_conv_bn(before[-1], before[-1], 3, 2, relu=True) for _ in range(i - len(before))]
                steps.append(_conv_bn(before[-1], channels, 3, 2, relu=True))
                layers.append(nn.Sequential(*steps))
        return nn.ModuleList(layers)

    @staticmethod
    def _branches(transition: nn.ModuleList, previous: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(transition):
            source = previous[min(i, len(previous) - 1)]
            out.append(source if layer is None else layer(source))
        return out

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.relu(self.bn1(self.conv1(images)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.layer1(x)
        y = self.stage2(self._branches(self.transition1, [x]))
        y = self.stage3(self._branches(self.transition2, y))
        y = self.stage4(self._branches(self.transition3, y))
        return {name: y[("res2", "res3", "res4", "res5").index(name)] for name in self.out_features}


def build_seed_backbone(name: str, *, output_stride: int = 16, out_features: Sequence[str] = ("res2", "res3", "res5")) -> nn.Module:
    """``xception65`` or ``hrnet_w18`` / ``hrnet_w32`` / ``hrnet_w48`` (the part after ``seed:``).
    HRNet has fixed strides: ``output_stride`` applies to Xception-65 only."""
    if name == "xception65":
        return Xception65(output_stride=output_stride, out_features=out_features)
    widths = {f"hrnet_w{width}": width for width in HRNET_WIDTHS}
    if name in widths:
        return HRNet(widths[name], out_features=out_features)
    raise ValueError(f"unknown seed backbone {name!r}: expected xception65, hrnet_w18, hrnet_w32 or hrnet_w48")
