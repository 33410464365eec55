"""The ``model.panoptic_deeplab`` section of a config: network, targets, losses, post-processing.

Defaults are detectron2's R52-DSConv Cityscapes model (reference §12); the paper/DeepLab2
variants are options (``instance_projection_channels: [32, 16]``, ``center_head_variant: dsconv``,
``ignore_crowd_in_center: true``, ``offset_normalizer: elements``...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional


@dataclass
class PanopticDeepLabConfig:
    # network (see network.build_panoptic_deeplab)
    backbone: str = "r52_dc5"
    output_stride: int = 16
    head_variant: Literal["dsconv", "conv"] = "dsconv"
    center_head_variant: Literal["d2", "dsconv"] = "d2"
    semantic_projection_channels: tuple[int, int] = (64, 32)
    instance_projection_channels: tuple[int, int] = (64, 32)
    semantic_decoder_channels: int = 256
    instance_decoder_channels: int = 128
    semantic_head_channels: int = 256
    instance_head_channels: int = 32
    aspp_channels: int = 256
    aspp_dilations: Optional[tuple[int, int, int]] = None
    #: None = global image pooling (any input size); detectron2's parity: the train crop, e.g. [512, 1024]
    aspp_pooling_crop_size: Optional[tuple[int, int]] = None
    aspp_dropout: float = 0.1
    size_divisibility: int = 0
    # targets (see targets.PanopticDeepLabTargetGenerator)
    sigma: int = 10
    small_instance_area: int = 4096
    small_instance_weight: float = 3.0
    ignore_stuff_in_offset: bool = True
    ignore_crowd_in_semantic: bool = False
    ignore_crowd_in_center: bool = False
    # losses (see losses.panoptic_deeplab_losses)
    semantic_loss_weight: float = 1.0
    center_loss_weight: float = 200.0
    offset_loss_weight: float = 0.01
    top_k_percent: float = 0.2
    offset_normalizer: Literal["pixels", "elements"] = "pixels"
    # post-processing (see postprocess.panoptic_deeplab_inference)
    center_threshold: float = 0.1
    nms_kernel: int = 7
    top_k: int = 200
    stuff_area: int = 2048
