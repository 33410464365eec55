"""Backbones that return a dict of named feature maps: ``{"res2": [B,C2,H/4,W/4], "res3": ..., "res5": ...}``.

Names follow detectron2: ``resN`` has stride ``2**N`` (res5 is stride 16 when dilated).

* ``"r52_dc5"``: detectron2's "R52" = ResNet-50 with the DeepLab stem (three 3x3 convs
  64/64/128, reference §1.2) and a dilated res5 (dilation 2, multi-grid 1,2,4 -> 2,4,8), output stride 16.
* ``"resnet50"``, ``"resnet101"``: torchvision ResNets (7x7 stem), output stride 16 or 32.
* ``"timm:<name>"``: any timm model through ``features_only`` (Xception-65 ``timm:xception65``,
  HRNet-W48 ``timm:hrnet_w48``, MobileNetV3-Large ``timm:mobilenetv3_large_100``...). No weights
  are downloaded: load them from a file with :func:`panopticlab.models.backbone_weights.load_backbone_weights`.
* ``"seed:xception65"``, ``"seed:hrnet_w48"`` (w18, w32): the Panoptic-DeepLab seed's own
  networks, for its released checkpoints (:mod:`panopticlab.models.seed_backbones`; timm's
  networks of the same names differ).

Every backbone has ``feature_channels`` and ``feature_strides`` dicts for the features it returns.
ResNet modules keep torchvision's names (``layer1``.. ``layer4``, ``bn1``, ``downsample``) under
``stem``/``layerN``, so torchvision state dicts load with one rename of the stem.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck

from panopticlab.models.seed_backbones import build_seed_backbone

RESNET_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
RESNET_NAMES = {"r52_dc5": (50, "deeplab"), "resnet50": (50, "torchvision"), "resnet101": (101, "torchvision")}


class DeepLabStem(nn.Module):
    """Three 3x3 conv+BN+ReLU (3->64 stride 2, 64->64, 64->128), then 3x3 max-pool stride 2.

    float [B,3,H,W] -> [B,128,H/4,W/4].
    """

    out_channels = 128

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(128)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.relu(self.bn3(self.conv3(x)))
        return self.maxpool(x)


class TorchvisionStem(nn.Module):
    """torchvision's 7x7 conv stride 2 + BN + ReLU + 3x3 max-pool stride 2: [B,3,H,W] -> [B,64,H/4,W/4]."""

    out_channels = 64

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))


def resnet_stage(in_channels: int, width: int, num_blocks: int, stride: int, dilations: Sequence[int]) -> nn.Sequential:
    """``num_blocks`` torchvision bottlenecks (stride in the 3x3 conv), ``width * 4`` output channels.

    Block ``i`` has dilation ``dilations[i]`` (multi-grid); the first block projects the shortcut
    when the stride or the channel count changes.
    """
    out_channels = width * Bottleneck.expansion
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
        )
    blocks = [Bottleneck(in_channels, width, stride, downsample, dilation=dilations[0])]
    blocks += [Bottleneck(out_channels, width, dilation=d) for d in dilations[1:]]
    return nn.Sequential(*blocks)


class ResNetBackbone(nn.Module):
    """A stem and four bottleneck stages; ``forward(images)`` -> dict of the ``out_features``.

    Args:
        stem: :class:`DeepLabStem` or :class:`TorchvisionStem`.
        depth: 50 or 101.
        output_stride: 32 (res5 stride 2) or 16 (res5 stride 1, dilated).
        multi_grid: res5 per-block dilation multipliers; res5 block i has dilation
            ``(output_stride == 16 ? 2 : 1) * multi_grid[i]``. detectron2 R52: (1, 2, 4).
            Deliberate difference to torchvision's ``replace_stride_with_dilation``, which leaves
            the first res5 block at dilation 1: here every block follows detectron2.
        out_features: names among res2..res5. Stages beyond the deepest one asked for are not
            built (without res5, no layer4: no parameters that nothing uses).
    """

    def __init__(
        self,
        stem: nn.Module,
        *,
        depth: int = 50,
        output_stride: int = 16,
        multi_grid: Sequence[int] = (1, 1, 1),
        out_features: Sequence[str] = ("res2", "res3", "res5"),
    ) -> None:
        super().__init__()
        if depth not in RESNET_DEPTHS:
            raise ValueError(f"ResNet depth must be one of {sorted(RESNET_DEPTHS)}, got {depth}")
        if output_stride not in (16, 32):
            raise ValueError(f"ResNet output stride must be 16 or 32, got {output_stride}")
        blocks = RESNET_DEPTHS[depth]
        if len(multi_grid) != blocks[3]:
            raise ValueError(f"multi_grid needs {blocks[3]} values (one per res5 block), got {tuple(multi_grid)}")
        res5_dilation = 2 if output_stride == 16 else 1
        all_channels = {"res2": 256, "res3": 512, "res4": 1024, "res5": 2048}
        all_strides = {"res2": 4, "res3": 8, "res4": 16, "res5": output_stride}
        unknown = [name for name in out_features if name not in all_channels]
        if unknown:
            raise ValueError(f"unknown backbone features {unknown}: expected names among res2..res5")
        deepest = max(int(name[-1]) for name in out_features)  # res2..res5 -> 2..5
        self.stem = stem
        self.layer1 = resnet_stage(stem.out_channels, 64, blocks[0], 1, [1] * blocks[0])
        if deepest >= 3:
            self.layer2 = resnet_stage(256, 128, blocks[1], 2, [1] * blocks[1])
        if deepest >= 4:
            self.layer3 = resnet_stage(512, 256, blocks[2], 2, [1] * blocks[2])
        if deepest >= 5:
            self.layer4 = resnet_stage(
                1024, 512, blocks[3], 2 if output_stride == 32 else 1, [res5_dilation * m for m in multi_grid]
            )
        self.out_features = tuple(out_features)
        self.feature_channels = {k: all_channels[k] for k in out_features}
        self.feature_strides = {k: all_strides[k] for k in out_features}
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")  # = c2_msra_fill

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(images)
        features = {}
        for name, layer_name in zip(("res2", "res3", "res4", "res5"), ("layer1", "layer2", "layer3", "layer4")):
            if not hasattr(self, layer_name):  # beyond the deepest feature asked for
                break
            x = getattr(self, layer_name)(x)
            if name in self.out_features:
                features[name] = x
        return features


class TimmBackbone(nn.Module):
    """A timm model built with ``features_only=True``; its outputs are named by stride.

    The last feature is ``res5``; among the others, ``resN`` is the last one with stride ``2**N``
    (so res4 is the stride-16 map before a dilated res5). Without ``res5`` in ``out_features``
    the model is built up to the deepest feature asked for only. Weights are never downloaded
    (``pretrained=False``); the timm module is ``self.body``, so a timm state dict loads with a
    ``body.`` prefix.

    Args:
        model_name: a timm model name, e.g. ``"xception65"``.
        output_stride: passed to timm (16 dilates the last stage of models that support it, 8 the last two).
        out_features: names among res2..res5.
        timm_kwargs: more ``timm.create_model`` arguments (e.g. ``feature_location="expansion"``
            for DeepLab2's MobileNetV3 endpoints).
    """

    def __init__(
        self,
        model_name: str,
        *,
        output_stride: int = 16,
        out_features: Sequence[str] = ("res2", "res3", "res5"),
        **timm_kwargs: Any,
    ) -> None:
        super().__init__()
        try:
            import timm
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("timm backbones need the timm package: pip install timm") from e
        kwargs = {"output_stride": output_stride} if output_stride != 32 else {}
        self.body = timm.create_model(model_name, pretrained=False, features_only=True, **kwargs, **timm_kwargs)
        channels, strides = self.body.feature_info.channels(), self.body.feature_info.reduction()
        # A level is named by its stride (res1 = 2, res2 = 4 ... res5 = 32) until dilation repeats a stride
        # (output stride 16 or 8); then each later level is the next name. The last level is res5 either way.
        index = {"res5": len(strides) - 1}
        level = 0
        for i, stride in enumerate(strides[:-1]):
            level = stride.bit_length() - 1 if i == 0 or stride > strides[i - 1] else level + 1
            if 1 <= level <= 4:
                index[f"res{level}"] = i
        missing = [name for name in out_features if name not in index]
        if missing:
            raise ValueError(f"timm model {model_name!r} has no feature for {missing} (feature strides {strides})")
        needed = sorted({index[name] for name in out_features})
        position = {i: i for i in range(len(strides))}
        if needed[-1] < len(strides) - 1:  # later stages unused: timm then builds up to the last one asked for
            self.body = timm.create_model(
                model_name, pretrained=False, features_only=True, out_indices=tuple(needed), **kwargs, **timm_kwargs
            )
            position = {i: k for k, i in enumerate(needed)}
        self.out_features = tuple(out_features)
        self._index = {name: position[index[name]] for name in out_features}
        self.feature_channels = {name: channels[index[name]] for name in out_features}
        self.feature_strides = {name: strides[index[name]] for name in out_features}

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = self.body(images)
        return {name: outputs[i] for name, i in self._index.items()}


def build_backbone(
    name: str = "r52_dc5",
    *,
    output_stride: int = 16,
    multi_grid: Sequence[int] | None = None,
    out_features: Sequence[str] = ("res2", "res3", "res5"),
    **timm_kwargs: Any,
) -> nn.Module:
    """Build a backbone by name: ``"r52_dc5"``, ``"resnet50"``, ``"resnet101"``, ``"timm:<name>"`` or
    ``"seed:<name>"`` (``xception65``, ``hrnet_w18|w32|w48``).

    ``multi_grid`` defaults to (1, 2, 4) for ``r52_dc5`` (detectron2) and (1, 1, 1) for the
    torchvision ResNets; it does not apply to timm models.
    """
    if name.startswith("timm:"):
        if multi_grid is not None:
            raise ValueError("multi_grid applies to the ResNet backbones only")
        return TimmBackbone(name[len("timm:") :], output_stride=output_stride, out_features=out_features, **timm_kwargs)
    if name.startswith("seed:"):
        if multi_grid is not None or timm_kwargs:
            raise ValueError("the seed's backbones take no multi_grid or timm arguments")
        return build_seed_backbone(name[len("seed:") :], output_stride=output_stride, out_features=out_features)
    if name not in RESNET_NAMES:
        raise ValueError(
            f"unknown backbone {name!r}: expected one of {sorted(RESNET_NAMES)}, 'timm:<model name>' or 'seed:<name>'"
        )
    if timm_kwargs:
        raise ValueError(f"unexpected arguments for a ResNet backbone: {sorted(timm_kwargs)}")
    depth, stem_type = RESNET_NAMES[name]
    stem = DeepLabStem() if stem_type == "deeplab" else TorchvisionStem()
    if multi_grid is None:
        multi_grid = (1, 2, 4) if name == "r52_dc5" else (1, 1, 1)
    return ResNetBackbone(
        stem, depth=depth, output_stride=output_stride, multi_grid=multi_grid, out_features=out_features
    )
