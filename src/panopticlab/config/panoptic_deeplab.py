"""The ``model.panoptic_deeplab`` section of a config: network, targets, losses, post-processing.

Defaults are detectron2's R52-DSConv Cityscapes model (reference §12). The paper / DeepLab2
variants are values of this section (docs/panoptic_deeplab.md lists them), e.g. the paper's
network::

    instance_projection_channels: [32, 16]
    center_head_variant: dsconv
    aspp_depthwise_separable: false

and its targets and losses: ``ignore_crowd_in_center: true``, ``offset_normalizer: elements``,
``center_rounding: floor`` (the original PyTorch code), ``offset_to_peak: true`` (DeepLab2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from panopticlab.config.addons import KEYS_MOVED_TO_ADDONS
from panopticlab.config.loading import Section


@dataclass
class PanopticDeepLabConfig(Section):
    # -- network (network.build_panoptic_deeplab) ------------------------------------------
    #: r52_dc5 | resnet50 | resnet101 | timm:<name> | seed:xception65 | seed:hrnet_w48 (models/backbones.py;
    #: seed: the Panoptic-DeepLab seed's own networks, for its checkpoints)
    backbone: str = "r52_dc5"
    #: ImageNet weights of the backbone (torchvision, timm or detectron2 R-52.pkl), loaded when the model is built
    backbone_weights: Optional[str] = None
    output_stride: int = 16
    #: decoder stages, deepest first (HRNet-style backbones: [res4, res3, res2]); timm backbones also
    #: have res1 (stride 2), which brings the heads to stride 2
    low_level_features: tuple[str, ...] = ("res3", "res2")
    #: the feature the ASPP reads: res5 (detectron2), or res4 to leave out the backbone's last stage
    aspp_feature: Literal["res4", "res5"] = "res5"
    head_variant: Literal["dsconv", "conv"] = "dsconv"
    center_head_variant: Literal["d2", "dsconv"] = "d2"
    semantic_projection_channels: tuple[int, ...] = (64, 32)
    instance_projection_channels: tuple[int, ...] = (64, 32)
    semantic_decoder_channels: int = 256
    instance_decoder_channels: int = 128
    semantic_head_channels: int = 256
    instance_head_channels: int = 32
    aspp_channels: int = 256
    #: None: (6, 12, 18) at output stride 16, (3, 6, 9) at 32
    aspp_dilations: Optional[tuple[int, int, int]] = None
    #: None: as head_variant (detectron2's USE_DEPTHWISE_SEPARABLE_CONV switches both); DeepLab2: false
    aspp_depthwise_separable: Optional[bool] = None
    #: global: image pooling over the whole map (any input size); crop: detectron2's fixed
    #: crop / stride average-pooling kernel (exact parity with its checkpoints)
    aspp_pooling: Literal["global", "crop"] = "global"
    #: with aspp_pooling=crop, the training crop (h, w) the kernel comes from; None = input.crop_size
    aspp_pooling_crop_size: Optional[tuple[int, int]] = None
    aspp_dropout: float = 0.1
    #: BN, or SyncBN (BatchNorm converted when training with several processes on GPUs)
    norm: Literal["BN", "SyncBN"] = "BN"
    #: RGB statistics in 0..255 the network normalises with; None = ImageNet's (detectron2's PIXEL_MEAN/STD)
    pixel_mean: Optional[tuple[float, float, float]] = None
    pixel_std: Optional[tuple[float, float, float]] = None
    size_divisibility: int = 0

    # -- targets (targets.PanopticDeepLabTargetGenerator) -----------------------------------
    sigma: int = 10
    small_instance_area: int = 4096
    small_instance_weight: float = 3.0
    ignore_stuff_in_offset: bool = True
    ignore_crowd_in_semantic: bool = False
    ignore_crowd_in_center: bool = False
    #: the peak pixel of an instance: round (detectron2, DeepLab2) or floor (the original PyTorch code) its mass centre
    center_rounding: Literal["round", "floor"] = "round"
    #: offsets point to the integer peak pixel (DeepLab2) instead of the mass centre
    offset_to_peak: bool = False

    # -- losses (losses.panoptic_deeplab_losses) --------------------------------------------
    semantic_loss_weight: float = 1.0
    center_loss_weight: float = 200.0
    offset_loss_weight: float = 0.01
    top_k_percent: float = 0.2
    offset_normalizer: Literal["pixels", "elements"] = "pixels"

    # -- inference (postprocess.panoptic_deeplab_inference) ---------------------------------
    center_threshold: float = 0.1
    nms_kernel: int = 7
    top_k: int = 200
    stuff_area: int = 2048
    #: an instance's class: majority (detectron2: the most frequent argmax class of its pixels) or
    #: mean_probability (the thing class of the highest mean softmax probability over its pixels)
    class_vote: Literal["majority", "mean_probability"] = "majority"
    #: test-time augmentation: the scales to average over, and whether to add flipped images
    tta_scales: tuple[float, ...] = (1.0,)
    tta_flip: bool = False

    #: panopticlab's options for shapes left this section for model.addons (config/addons.py)
    moved = {
        "class_vote=silhouette": "model.addons.silhouette (with class_vote: mean_probability, the vote it replaces)",
        "class_vote=silhouette_mean_probability": (
            "model.addons.silhouette with semantic_prior: true (and class_vote: mean_probability)"
        ),
        **KEYS_MOVED_TO_ADDONS,
    }

    def problems(self) -> list[tuple[str, str]]:
        found = []
        b = self.backbone
        seed = ("seed:xception65", "seed:hrnet_w18", "seed:hrnet_w32", "seed:hrnet_w48")
        if not (b in ("r52_dc5", "resnet50", "resnet101", *seed) or (b.startswith("timm:") and len(b) > 5)):
            found.append(("backbone", f"must be r52_dc5, resnet50, resnet101, timm:<model name> or one of {', '.join(seed)}"))
        if self.output_stride not in (8, 16, 32):
            found.append(("output_stride", "must be 8, 16 or 32"))
        elif self.output_stride == 8 and not b.startswith("timm:"):
            found.append(("output_stride", "of 8 needs a timm backbone"))
        levels = ("res1", "res2", "res3", "res4") if b.startswith("timm:") else ("res2", "res3", "res4")
        if self.aspp_feature in self.low_level_features:
            found.append(("low_level_features", f"cannot hold the ASPP's feature {self.aspp_feature}"))
        if not self.low_level_features or any(f not in levels for f in self.low_level_features):
            found.append(("low_level_features", f"needs one or more of {list(levels)}, deepest first (res1: timm backbones)"))
        for key in ("semantic_projection_channels", "instance_projection_channels"):
            if len(getattr(self, key)) != len(self.low_level_features):
                found.append((key, f"needs one width per low-level feature ({len(self.low_level_features)})"))
        positive = [
            "semantic_decoder_channels", "instance_decoder_channels", "semantic_head_channels",
            "instance_head_channels", "aspp_channels", "sigma", "top_k",
        ]  # fmt: skip
        found += [(key, "must be at least 1") for key in positive if getattr(self, key) < 1]
        if self.aspp_pooling_crop_size is not None and self.aspp_pooling != "crop":
            found.append(("aspp_pooling_crop_size", "applies with aspp_pooling: crop only"))
        if not 0 <= self.aspp_dropout < 1:
            found.append(("aspp_dropout", "must lie in [0, 1)"))
        if self.pixel_std is not None and min(self.pixel_std) <= 0:
            found.append(("pixel_std", "must be positive"))
        if self.size_divisibility < 0:
            found.append(("size_divisibility", "must be >= 0 (0 = no padding)"))
        if not 0 < self.top_k_percent <= 1:
            found.append(("top_k_percent", "must lie in (0, 1]"))
        if self.nms_kernel < 1 or self.nms_kernel % 2 == 0:
            found.append(("nms_kernel", "must be an odd positive integer"))
        if not self.tta_scales or min(self.tta_scales) <= 0:
            found.append(("tta_scales", "needs one or more positive scales"))
        return found
