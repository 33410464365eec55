"""The Panoptic-DeepLab network: backbone, dual decoder, semantic / centre / offset heads.

``PanopticDeepLabNetwork`` composes modules handed to it (torchvision detection style);
``build_panoptic_deeplab`` builds one from plain arguments. Defaults reproduce detectron2's
R52 DSConv config (reference §12.2; 30,271,350 parameters at 19 classes) except the ASPP image
pooling, which is global by default so that any input size works; pass
``aspp_pooling_crop_size=(512, 1024)`` (Cityscapes) or ``(640, 640)`` (COCO) for detectron2's
exact crop-sized pooling. ``PAPER_OPTIONS`` switches to the paper / DeepLab2 design (in a
config: the same three keys of ``model.panoptic_deeplab``).

Data flow (shapes for input [B,3,H,W], R52 at output stride 16)::

    (images - mean) / std
    backbone -> res2 [B,256,H/4,W/4], res3 [B,512,H/8,W/8], res5 [B,2048,H/16,W/16]
    semantic_decoder -> [B,256,H/4,W/4] -> semantic_head -> [B,C,H/4,W/4]
    instance_decoder -> [B,128,H/4,W/4] -> center_head -> [B,1,H/4,W/4], offset_head -> [B,2,H/4,W/4]
    bilinear x4 (align_corners=False); offsets x4 (stride-4 units -> input pixels)
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from panopticlab.errors import InputError
from panopticlab.models.backbones import build_backbone
from panopticlab.models.common import PIXEL_MEAN, PIXEL_STD
from panopticlab.models.norm import convert_sync_batchnorm_if_distributed
from panopticlab.models.panoptic_deeplab.decoder import PanopticDeepLabDecoder, build_decoder
from panopticlab.models.panoptic_deeplab.heads import HeadVariant, center_head, offset_head, semantic_head

# Where the paper / DeepLab2 / original PyTorch code differ from detectron2 (reference §11):
# narrower instance projections, a DSConv centre head, regular-conv ASPP branches.
PAPER_OPTIONS: dict[str, Any] = {
    "instance_projection_channels": (32, 16),
    "center_head_variant": "dsconv",
    "aspp_depthwise_separable": False,
}


class PanopticDeepLabNetwork(nn.Module):
    """Normalisation + backbone + two decoders + three heads, up to the raw head outputs.

    Args:
        backbone: images [B,3,H,W] -> dict of named features (see ``models/backbones.py``).
        semantic_decoder, instance_decoder: features -> [B,C,H/s,W/s] at ``common_stride`` s.
        semantic_head: -> [B,num_classes,H/s,W/s] logits.
        center_head: -> [B,1,H/s,W/s] raw heatmap.
        offset_head: -> [B,2,H/s,W/s] (dy, dx) in stride-s pixels.
        pixel_mean, pixel_std: per-channel RGB statistics in 0..255 (non-persistent buffers).
        common_stride: stride of the head outputs (4).
        size_divisibility: pad the normalised images with zeros at the bottom/right to a multiple
            of this before the backbone (detectron2's ``ImageList``), and crop the outputs back;
            0 = no padding (detectron2's Cityscapes behaviour, any size works with global pooling).
    """

    def __init__(
        self,
        backbone: nn.Module,
        semantic_decoder: PanopticDeepLabDecoder,
        instance_decoder: PanopticDeepLabDecoder,
        semantic_head: nn.Module,
        center_head: nn.Module,
        offset_head: nn.Module,
        *,
        pixel_mean: Sequence[float] = PIXEL_MEAN,
        pixel_std: Sequence[float] = PIXEL_STD,
        common_stride: int = 4,
        size_divisibility: int = 0,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.semantic_decoder = semantic_decoder
        self.instance_decoder = instance_decoder
        self.semantic_head = semantic_head
        self.center_head = center_head
        self.offset_head = offset_head
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(1, 3, 1, 1), False)
        self.common_stride = common_stride
        self.size_divisibility = size_divisibility

    def forward_heads(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw head outputs at input resolution, before post-processing.

        Args:
            images: float [B,3,H,W], RGB values in 0..255.

        Returns:
            ``{"sem_seg": [B,C,H,W] logits, "center": [B,1,H,W] raw heatmap,
            "offset": [B,2,H,W] (dy, dx) in input pixels}``, float (the autocast dtype under autocast).
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise InputError(f"expected images of shape [B,3,H,W], got {tuple(images.shape)}")
        height, width = images.shape[-2:]
        x = (images - self.pixel_mean) / self.pixel_std
        if self.size_divisibility > 0:
            d = self.size_divisibility
            x = F.pad(x, (0, (d - width % d) % d, 0, (d - height % d) % d))
        features = self.backbone(x)
        semantic = self.semantic_decoder(features)
        instance = self.instance_decoder(features)
        outputs = {
            "sem_seg": self.semantic_head(semantic),
            "center": self.center_head(instance),
            "offset": self.offset_head(instance),
        }
        s = self.common_stride
        outputs = {
            k: F.interpolate(v, scale_factor=s, mode="bilinear", align_corners=False)[..., :height, :width]
            for k, v in outputs.items()
        }
        outputs["offset"] = outputs["offset"] * s
        return outputs

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Same as :meth:`forward_heads` (so hooks, DDP and export see the whole network)."""
        return self.forward_heads(images)

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part, grouped as detectron2 reports them: ``backbone``, ``semantic``
        (detectron2's ``sem_seg_head``: decoder + head), ``instance`` (``ins_embed_head``: decoder
        + centre and offset heads) and ``total``."""
        parts = {
            "backbone": [self.backbone],
            "semantic": [self.semantic_decoder, self.semantic_head],
            "instance": [self.instance_decoder, self.center_head, self.offset_head],
        }
        counts = {k: sum(p.numel() for m in mods for p in m.parameters()) for k, mods in parts.items()}
        counts["total"] = sum(p.numel() for p in self.parameters())
        return counts


def build_panoptic_deeplab(
    num_classes: int,
    *,
    backbone: str | nn.Module = "r52_dc5",
    output_stride: int = 16,
    head_variant: HeadVariant = "dsconv",
    center_head_variant: Literal["d2", "dsconv"] = "d2",
    low_level_features: Sequence[str] = ("res3", "res2"),
    aspp_feature: str = "res5",
    semantic_projection_channels: Sequence[int] = (64, 32),
    instance_projection_channels: Sequence[int] = (64, 32),
    semantic_decoder_channels: int = 256,
    instance_decoder_channels: int = 128,
    semantic_head_channels: int = 256,
    instance_head_channels: int = 32,
    aspp_channels: int = 256,
    aspp_dilations: Sequence[int] | None = None,
    aspp_depthwise_separable: bool | None = None,
    aspp_pooling_crop_size: tuple[int, int] | None = None,
    aspp_dropout: float = 0.1,
    norm: Literal["BN", "SyncBN"] = "BN",
    pixel_mean: Sequence[float] = PIXEL_MEAN,
    pixel_std: Sequence[float] = PIXEL_STD,
    size_divisibility: int = 0,
) -> PanopticDeepLabNetwork:
    """Build Panoptic-DeepLab from plain arguments (defaults: detectron2 R52 DSConv).

    Args:
        num_classes: semantic classes (19 Cityscapes, 133 COCO).
        backbone: a name for :func:`~panopticlab.models.backbones.build_backbone` (``"r52_dc5"``,
            ``"resnet50"``, ``"resnet101"``, ``"timm:xception65"``...) or a built module with
            ``feature_channels`` / ``feature_strides`` dicts.
        output_stride: of a named backbone: 16 (res5 dilated) or 32.
        head_variant: ``"dsconv"`` (5x5 depthwise-separable fuses and heads) or ``"conv"`` (3x3 pairs).
        center_head_variant: ``"d2"`` (two 3x3 convs) or ``"dsconv"`` (paper).
        low_level_features: decoder stages, deepest first; HRNet uses ("res4", "res3", "res2").
        aspp_feature: the backbone feature the ASPP reads: ``res5`` (detectron2), or ``res4`` to
            leave out the last stage (at a small input its stride-16 map costs much, adds little).
        semantic_projection_channels, instance_projection_channels: 1x1 projection widths per
            stage; instance (64, 32) in detectron2, (32, 16) in the paper / DeepLab2.
        aspp_dilations: default (6, 12, 18) when res5 has stride 16, (3, 6, 9) at stride 32.
        aspp_depthwise_separable: default follows ``head_variant`` (detectron2's
            ``USE_DEPTHWISE_SEPARABLE_CONV`` switches both); DeepLab2 uses regular convs.
        aspp_pooling_crop_size: ``None`` = global image pooling (any input size); a train crop
            (h, w) = detectron2's fixed ``crop / stride`` kernel (exact parity with its checkpoints).
        aspp_dropout: 0.1 (detectron2, DeepLab2); 0.5 in the old PyTorch code.
        norm: ``"SyncBN"`` converts BatchNorm to SyncBatchNorm only when a process group is initialised.
        size_divisibility: see :class:`PanopticDeepLabNetwork`.
    """
    if isinstance(backbone, str):
        backbone = build_backbone(
            backbone, output_stride=output_stride, out_features=(aspp_feature, *low_level_features)
        )
    channels, strides = backbone.feature_channels, backbone.feature_strides
    aspp_stride = strides[aspp_feature]
    if aspp_dilations is None:
        aspp_dilations = (6, 12, 18) if aspp_stride <= 16 else (3, 6, 9)
    if aspp_depthwise_separable is None:
        aspp_depthwise_separable = head_variant == "dsconv"
    pool_size = None
    if aspp_pooling_crop_size is not None:
        crop_h, crop_w = aspp_pooling_crop_size
        if crop_h % aspp_stride or crop_w % aspp_stride:
            raise ValueError(f"ASPP pooling crop size {aspp_pooling_crop_size} must be a multiple of {aspp_stride}")
        pool_size = (crop_h // aspp_stride, crop_w // aspp_stride)
    aspp_options = dict(
        aspp_channels=aspp_channels,
        aspp_dilations=aspp_dilations,
        aspp_depthwise_separable=aspp_depthwise_separable,
        aspp_pool_size=pool_size,
        aspp_dropout=aspp_dropout,
        variant=head_variant,
        low_level_features=low_level_features,
        aspp_feature=aspp_feature,
    )
    semantic_decoder = build_decoder(
        channels,
        projection_channels=semantic_projection_channels,
        decoder_channels=semantic_decoder_channels,
        **aspp_options,
    )
    instance_decoder = build_decoder(
        channels,
        projection_channels=instance_projection_channels,
        decoder_channels=instance_decoder_channels,
        **aspp_options,
    )
    network = PanopticDeepLabNetwork(
        backbone,
        semantic_decoder,
        instance_decoder,
        semantic_head(semantic_decoder_channels, semantic_head_channels, num_classes, head_variant),
        center_head(instance_decoder_channels, instance_head_channels, center_head_variant),
        offset_head(instance_decoder_channels, instance_head_channels, head_variant),
        pixel_mean=pixel_mean,
        pixel_std=pixel_std,
        common_stride=strides[low_level_features[-1]],
        size_divisibility=size_divisibility,
    )
    if norm == "SyncBN":
        return convert_sync_batchnorm_if_distributed(network)
    if norm != "BN":
        raise ValueError(f"norm must be 'BN' or 'SyncBN', got {norm!r}")
    return network
