"""torchvision's Mask R-CNN, built from its parts and used through them.

SOGNet needs more than ``MaskRCNN.forward`` offers: mask logits for given boxes (the GT boxes
in training, its own candidates at test), the FPN features for the semantic head, and a
class-agnostic candidate set. So the parts are kept separate (reference sognet.md §9.1):

* ``backbone``: ResNet-50/101 (torchvision, frozen BN, ``trainable_layers``) or a timm model,
  + FPN with P6 by max-pooling, optionally with UPSNet's global-context term;
  ``features = backbone(images)`` is an OrderedDict ``'0'..'3'`` (P2..P5, strides 4..32) and ``'pool'`` (P6);
* ``rpn``: torchvision's :class:`RegionProposalNetwork` on P2..P6 (one or more anchor sizes
  per level);
* ``roi_heads``: torchvision's :class:`RoIHeads` (box head: RoIAlign 7x7 + two FC layers;
  mask head: RoIAlign 14x14, four 3x3 convs, a deconvolution, 28x28 class-specific logits).

Two additions, through subclasses that keep torchvision's parameter names: anchors, proposal
decoding and box predictions in float32 under autocast; and, as an option, crowd regions
ignored by the RPN and RoI samplers (``crowd_ignore_iof``).

The detector's labels are ``1..K`` (thing index + 1, see :mod:`.labels`), 0 = background.
The image transform (normalise, resize, pad) is SOGNet's own (:mod:`.targets`), shared with
the semantic head and the panoptic targets; torchvision's ``GeneralizedRCNNTransform`` is not used.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops import boxes as box_ops
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from panopticlab.models.backbone_weights import load_backbone_weights
from panopticlab.models.sognet import detectron_boxes
from panopticlab.models.backbones import TimmBackbone
from panopticlab.models.norm import EvalFrozenBatchNorm2d
from panopticlab.config.sognet import SOGNetConfig

#: the FPN levels the RoI heads and the semantic head read (P2..P5)
FPN_LEVELS = ("0", "1", "2", "3")
RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")


class GlobalContextLateral(nn.Module):
    """The FPN's top lateral with UPSNet's global context: ``lateral(C5) + Linear(GAP(C5))``.

    Replaces ``fpn.inner_blocks[-1]``, so the context is added before the top-down path.

    Args:
        lateral: the FPN's 1x1 lateral block of C5.
        in_channels: channels of C5.
        out_channels: the FPN's channels.
    """

    def __init__(self, lateral: nn.Module, in_channels: int, out_channels: int):
        super().__init__()
        self.lateral = lateral
        self.context = nn.Linear(in_channels, out_channels)
        nn.init.kaiming_uniform_(self.context.weight, a=1)
        nn.init.zeros_(self.context.bias)

    def forward(self, c5: Tensor) -> Tensor:
        """float [B, C5, h, w] -> [B, out_channels, h, w]."""
        return self.lateral(c5) + self.context(c5.mean(dim=(2, 3)))[:, :, None, None]


class TimmFPN(nn.Module):
    """A timm backbone's res2..res5 + torchvision's FPN (P6 by max-pooling).

    ``forward(images)`` -> OrderedDict ``'0'..'3'``, ``'pool'``, each [B, out_channels, ...].
    """

    def __init__(self, model_name: str, out_channels: int):
        super().__init__()
        self.body = TimmBackbone(model_name, output_stride=32, out_features=("res2", "res3", "res4", "res5"))
        strides = [self.body.feature_strides[f"res{k}"] for k in range(2, 6)]
        if strides != [4, 8, 16, 32]:
            raise ValueError(f"timm model {model_name!r} has feature strides {strides}, SOGNet needs 4, 8, 16, 32")
        channels = [self.body.feature_channels[f"res{k}"] for k in range(2, 6)]
        self.fpn = FeaturePyramidNetwork(channels, out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels
        self.levels = list(FPN_LEVELS)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        features = self.body(images)
        levels: dict[str, Tensor] = {}  # insertion-ordered, as the FPN needs (and TorchScript compiles)
        for k, level in enumerate(self.levels):
            levels[level] = features["res" + str(k + 2)]
        return self.fpn(levels)


def build_backbone_fpn(config: SOGNetConfig) -> nn.Module:
    """The backbone + FPN of a config, with ``out_channels``; ImageNet weights loaded when given."""
    name = config.backbone
    if name.startswith("timm:"):
        model = TimmFPN(name[len("timm:") :], config.fpn_channels)
        if config.backbone_weights:
            load_backbone_weights(model.body, config.backbone_weights)
        c5_channels = model.body.feature_channels["res5"]
        fpn = model.fpn
    else:
        norm = {"frozen_bn": FrozenBatchNorm2d, "eval_bn": EvalFrozenBatchNorm2d, "bn": nn.BatchNorm2d}[config.backbone_norm]
        body = getattr(torchvision.models, name)(weights=None, norm_layer=norm)
        if config.stride_in_1x1:
            move_stride_to_1x1(body)
        if config.backbone_weights:
            load_backbone_weights(body, config.backbone_weights)
        _freeze_resnet(body, config.trainable_layers)
        model = BackboneWithFPN(
            body,
            return_layers={stage: level for stage, level in zip(RESNET_STAGES, FPN_LEVELS)},
            in_channels_list=[256, 512, 1024, 2048],
            out_channels=config.fpn_channels,
            extra_blocks=LastLevelMaxPool(),
        )
        c5_channels = 2048
        fpn = model.fpn
    if config.fpn_global_context:
        fpn.inner_blocks[-1] = GlobalContextLateral(fpn.inner_blocks[-1], c5_channels, config.fpn_channels)
    return model


def move_stride_to_1x1(body: nn.Module) -> None:
    """A torchvision ResNet turned caffe-style: each stage's stride in its first block's 1x1 conv.

    torchvision (like the ResNet v1.5 paper code) strides the 3x3 conv of a stage's first block;
    the MSRA caffe ResNets, Detectron and the released SOGNet / UPSNet stride the first 1x1 conv
    (``resnet.py``: ``conv1 = Conv2d(inplanes, planes, 1, stride=stride)``, ``conv2`` stride 1).
    The shortcut (``downsample``: 1x1, stride 2) is the same in both. The parameters do not change.
    """
    for stage in RESNET_STAGES:
        first = getattr(body, stage)[0]
        stride = first.conv2.stride
        first.conv1.stride, first.conv2.stride = stride, (1, 1)


def _freeze_resnet(body: nn.Module, trainable_layers: int) -> None:
    """Train only the last ``trainable_layers`` of conv1, layer1..layer4 (torchvision's rule)."""
    trained = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    if trainable_layers == 5:
        trained.append("bn1")
    for name, parameter in body.named_parameters():
        if not any(name.startswith(prefix) for prefix in trained):
            parameter.requires_grad_(False)


class Float32AnchorGenerator(AnchorGenerator):
    """torchvision's anchors, always in float32: it takes their dtype from the feature maps,
    which are bfloat16 under autocast (0.5-1 px steps at the shapes' sizes)."""

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        # zero-stride stand-ins: the generator reads only their shape, dtype and device
        shapes = [torch.empty_strided(f.shape, (0,) * f.dim(), dtype=torch.float32, device=f.device) for f in feature_maps]
        return super().forward(image_list, shapes)


class Float32RPNHead(RPNHead):
    """torchvision's RPN head with float32 outputs, so that proposal decoding, filtering and
    the box loss run in float32 under autocast (the convolutions stay in the autocast dtype)."""

    def forward(self, x: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, deltas = super().forward(x)
        return [t.float() for t in logits], [t.float() for t in deltas]


class Float32BoxPredictor(FastRCNNPredictor):
    """torchvision's box predictor with float32 class logits and box deltas (see :class:`Float32RPNHead`)."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        scores, deltas = super().forward(x)
        return scores.float(), deltas.float()


def crowd_covered(boxes: Tensor, crowd_boxes: Tensor, threshold: float) -> Tensor:
    """bool [N]: boxes [N, 4] whose intersection with some crowd box [M, 4], over their own
    area, exceeds ``threshold`` (Detectron's ``CROWD_FILTER_THRESH`` rule)."""
    if len(crowd_boxes) == 0 or len(boxes) == 0:
        return torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    top_left = torch.maximum(boxes[:, None, :2], crowd_boxes[None, :, :2])
    bottom_right = torch.minimum(boxes[:, None, 2:], crowd_boxes[None, :, 2:])
    intersection = (bottom_right - top_left).clamp(min=0).prod(dim=2)  # [N, M]
    area = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(dim=1)
    return (intersection / area.clamp(min=1e-6)[:, None]).amax(dim=1) > threshold


class CrowdAwareRPN(RegionProposalNetwork):
    """torchvision's RPN whose background anchors covered by a crowd box (``targets[i]
    ["crowd_boxes"]``, intersection over the anchor's area > ``crowd_ignore_iof``) are ignored
    by the sampler instead of trained as background. ``crowd_ignore_iof=None``: torchvision's RPN.
    ``released_proposals``: the released code's proposal step
    (:func:`.detectron_boxes.released_proposals`) instead of torchvision's."""

    def __init__(self, *args, crowd_ignore_iof: float | None = None, released_proposals: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.crowd_ignore_iof = crowd_ignore_iof
        self.released_proposals = released_proposals

    def filter_proposals(
        self, proposals: Tensor, objectness: Tensor, image_shapes: list[tuple[int, int]], num_anchors_per_level: list[int]
    ) -> tuple[list[Tensor], list[Tensor]]:
        if not self.released_proposals:
            return super().filter_proposals(proposals, objectness, image_shapes, num_anchors_per_level)
        return detectron_boxes.released_proposals(
            proposals, objectness, image_shapes, num_anchors_per_level, pre_nms_top_n=self.pre_nms_top_n(),
            post_nms_top_n=self.post_nms_top_n(), min_size=self.min_size, nms_threshold=self.nms_thresh,
        )  # fmt: skip

    def assign_targets_to_anchors(self, anchors: list[Tensor], targets: list[dict[str, Tensor]]) -> tuple[list[Tensor], list[Tensor]]:
        labels, matched_boxes = super().assign_targets_to_anchors(anchors, targets)
        if self.crowd_ignore_iof is not None:
            for anchors_per_image, labels_per_image, target in zip(anchors, labels, targets):
                covered = crowd_covered(anchors_per_image, target["crowd_boxes"], self.crowd_ignore_iof)
                labels_per_image[covered & (labels_per_image == 0)] = -1.0
        return labels, matched_boxes


class CrowdAwareRoIHeads(RoIHeads):
    """torchvision's RoI heads whose training proposals covered by a crowd box (as in
    :class:`CrowdAwareRPN`) are left out of the sampling (Detectron's ``_filter_crowd_proposals``).
    The ground-truth boxes torchvision adds to the proposals are never left out."""

    def __init__(self, *args, crowd_ignore_iof: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.crowd_ignore_iof = crowd_ignore_iof

    def select_training_samples(self, proposals: list[Tensor], targets: list[dict[str, Tensor]] | None):
        if self.crowd_ignore_iof is not None and targets is not None:
            proposals = [p[~crowd_covered(p, t["crowd_boxes"], self.crowd_ignore_iof)] for p, t in zip(proposals, targets)]
        return super().select_training_samples(proposals, targets)


class Detector(nn.Module):
    """Backbone + FPN, RPN and RoI heads of a torchvision Mask R-CNN (no image transform).

    Attribute names are torchvision's (``backbone``, ``rpn``, ``roi_heads``). ``detectron_boxes``:
    the parts follow the released code's box conventions (:mod:`.detectron_boxes`), and so does
    :func:`detect`.
    """

    def __init__(self, backbone: nn.Module, rpn: RegionProposalNetwork, roi_heads: RoIHeads, *, detectron_boxes: bool = False):
        super().__init__()
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.detectron_boxes = detectron_boxes


def build_detector(config: SOGNetConfig, num_thing_classes: int) -> Detector:
    """The Mask R-CNN parts of a config for ``num_thing_classes`` thing classes (+ background)."""
    backbone = build_backbone_fpn(config)
    channels = backbone.out_channels
    ratios = tuple(float(r) for r in config.anchor_aspect_ratios)
    sizes = config.anchor_sizes_per_level
    released = config.box_convention == "detectron"
    if released:
        anchors = detectron_boxes.DetectronAnchorGenerator(sizes, ratios)
    else:
        anchors = Float32AnchorGenerator(sizes, (ratios,) * len(sizes))
    rpn = CrowdAwareRPN(
        anchors,
        Float32RPNHead(channels, len(sizes[0]) * len(ratios)),
        fg_iou_thresh=config.rpn_fg_iou_threshold,
        bg_iou_thresh=config.rpn_bg_iou_threshold,
        batch_size_per_image=config.rpn_batch_size_per_image,
        positive_fraction=0.5,
        pre_nms_top_n={"training": config.rpn_pre_nms_top_n_train, "testing": config.rpn_pre_nms_top_n_test},
        post_nms_top_n={"training": config.rpn_post_nms_top_n_train, "testing": config.rpn_post_nms_top_n_test},
        nms_thresh=config.rpn_nms_threshold,
        crowd_ignore_iof=config.crowd_ignore_iof,
        released_proposals=released,
    )
    rpn.min_size = config.rpn_min_size
    levels = list(FPN_LEVELS)
    roi_pool = detectron_boxes.DetectronRoIAlign if released else MultiScaleRoIAlign
    roi_heads = CrowdAwareRoIHeads(
        box_roi_pool=roi_pool(levels, output_size=config.box_roi_resolution, sampling_ratio=2),
        box_head=build_box_head(config, channels),
        box_predictor=Float32BoxPredictor(config.box_head_channels, num_thing_classes + 1),
        fg_iou_thresh=config.box_fg_iou_threshold,
        bg_iou_thresh=config.box_bg_iou_threshold,
        batch_size_per_image=config.box_batch_size_per_image,
        positive_fraction=config.box_positive_fraction,
        bbox_reg_weights=None,  # (10, 10, 5, 5)
        score_thresh=0.05,
        nms_thresh=0.5,
        detections_per_img=100,
        mask_roi_pool=roi_pool(levels, output_size=14, sampling_ratio=2),
        mask_head=MaskRCNNHeads(channels, (config.mask_head_channels,) * 4, 1),
        mask_predictor=MaskRCNNPredictor(config.mask_head_channels, config.mask_head_channels, num_thing_classes + 1),
        crowd_ignore_iof=config.crowd_ignore_iof,
    )
    return Detector(backbone, rpn, roi_heads, detectron_boxes=released)


def build_box_head(config: SOGNetConfig, channels: int) -> nn.Module:
    """The RoI box head on [R, channels, r, r] RoIAlign features (r = ``box_roi_resolution``):
    two fully connected layers (the papers), or ``box_head_conv_layers`` 3x3 convolutions and
    one fully connected layer (torchvision's Mask R-CNN v2 head). Returns float [R, box_head_channels]."""
    r = config.box_roi_resolution
    if config.box_head_conv_layers == 0:
        return TwoMLPHead(channels * r * r, config.box_head_channels)
    convs = [channels] * config.box_head_conv_layers
    return FastRCNNConvFCHead((channels, r, r), convs, [config.box_head_channels], norm_layer=nn.BatchNorm2d)


def detector_losses(
    detector: Detector, images: ImageList, features: OrderedDict[str, Tensor], targets: list[dict[str, Tensor]]
) -> dict[str, Tensor]:
    """Mask R-CNN's training losses (RPN objectness and boxes; RoI classes, boxes and masks).

    Args:
        images: the normalised, padded batch and each image's size before padding.
        features: ``detector.backbone(images.tensors)``.
        targets: per image ``boxes`` float [N, 4] (x0, y0, x1, y1 in input pixels),
            ``labels`` int64 [N] in 1..K, ``masks`` bool [N, H, W] (the instance masks).

    Returns:
        ``loss_objectness``, ``loss_rpn_box_reg``, ``loss_classifier``, ``loss_box_reg``, ``loss_mask``.
    """
    proposals, rpn_losses = detector.rpn(images, features, targets)
    _, roi_losses = detector.roi_heads(features, proposals, images.image_sizes, targets)
    return {**rpn_losses, **roi_losses}


def mask_head_outputs(
    detector: Detector, features: OrderedDict[str, Tensor], boxes: list[Tensor], labels: list[Tensor], image_sizes: list[tuple[int, int]]
) -> tuple[list[Tensor], list[Tensor]]:
    """The mask head run on given boxes: each box's 28x28 logits of its class, and its features.

    Args:
        boxes: per image float [N_b, 4] in input pixels.
        labels: per image int64 [N_b], detector labels 1..K.

    Returns:
        per image the mask logits float [N_b, 28, 28] (not probabilities) and the mask-head
        features average-pooled, float [N_b, mask_head_channels] (the relation's appearance input).
    """
    heads = detector.roi_heads
    counts = [len(b) for b in boxes]
    if sum(counts) == 0:
        channels = heads.mask_predictor.conv5_mask.in_channels
        empty_logits = features[FPN_LEVELS[0]].new_zeros((0, 28, 28))
        empty_features = features[FPN_LEVELS[0]].new_zeros((0, channels))
        return [empty_logits] * len(boxes), [empty_features] * len(boxes)
    pooled = heads.mask_roi_pool(features, boxes, image_sizes)
    mask_features = heads.mask_head(pooled)  # [sum N, C, 14, 14]
    logits = heads.mask_predictor(mask_features)  # [sum N, K + 1, 28, 28]
    all_labels = torch.cat(labels)
    logits = logits[torch.arange(len(all_labels), device=logits.device), all_labels]
    return list(logits.split(counts)), list(mask_features.mean(dim=(2, 3)).split(counts))


def pooled_region_features(
    detector: Detector, features: OrderedDict[str, Tensor], boxes: list[Tensor], image_sizes: list[tuple[int, int]]
) -> list[Tensor]:
    """The FPN features under each box, through the mask head's RoIAlign, average-pooled.

    Args:
        boxes: per image float [N_b, 4] in input pixels (zero-size boxes are allowed).

    Returns:
        per image float [N_b, fpn_channels] (the relation's region features).
    """
    counts = [len(b) for b in boxes]
    if sum(counts) == 0:
        empty = features[FPN_LEVELS[0]].new_zeros((0, features[FPN_LEVELS[0]].shape[1]))
        return [empty] * len(boxes)
    pooled = detector.roi_heads.mask_roi_pool(features, boxes, image_sizes)  # [sum N, C, 14, 14]
    return list(pooled.mean(dim=(2, 3)).split(counts))


def mask_head_loss(mask_logits: list[Tensor], boxes: list[Tensor], masks: list[Tensor]) -> Tensor:
    """Mask R-CNN's mask loss (torchvision's ``maskrcnn_loss``) on given boxes: each box's logits
    against its own instance mask resampled into the box, the mean over every instance of the batch.

    Args:
        mask_logits: per image float [N_b, M, M], the logits of each instance's class
            (:func:`mask_head_outputs`).
        boxes: per image float [N_b, 4] in input pixels; masks: per image bool [N_b, H_b, W_b].

    Returns:
        float scalar (0, still connected, when there is no instance).
    """
    logits = torch.cat(mask_logits)[:, None].float()  # one channel: each box's own class, label 0
    labels = [torch.zeros(len(b), dtype=torch.int64, device=b.device) for b in boxes]
    matched = [torch.arange(len(b), device=b.device) for b in boxes]
    return maskrcnn_loss(logits, boxes, [m.float() for m in masks], labels, matched)


def detect(
    detector: Detector,
    images: ImageList,
    features: OrderedDict[str, Tensor],
    *,
    score_threshold: float,
    nms_threshold: float,
    max_detections: int,
    class_agnostic: bool,
) -> list[dict[str, Tensor]]:
    """Detections from the RPN's proposals and the box head, without the mask head.

    Every (proposal, class) pair with softmax probability > ``score_threshold`` is a
    candidate with its class-specific box (clipped to the image). Then NMS at
    ``nms_threshold``: across classes when ``class_agnostic`` (SOGNet's panoptic instance
    set, reference §4.4 step 3), per class otherwise (torchvision's detections). At most
    ``max_detections`` per image, highest score first. With ``detector.detectron_boxes``: the
    released ``MaskROI``: boxes clipped as the released code clips them, no size filter, its NMS
    order of equal scores, ties at the ``max_detections`` cut kept, and (class-specific) the
    classes one after the other.

    Returns:
        per image ``boxes`` float [D, 4] (input pixels), ``labels`` int64 [D] (1..K), ``scores`` float [D].
    """
    proposals, _ = detector.rpn(images, features)
    heads = detector.roi_heads
    box_features = heads.box_head(heads.box_roi_pool(features, proposals, images.image_sizes))
    class_logits, box_regression = heads.box_predictor(box_features)
    all_boxes = heads.box_coder.decode(box_regression, proposals)  # [R, K + 1, 4]
    all_scores = F.softmax(class_logits, dim=-1)
    counts = [len(p) for p in proposals]
    detections = []
    released = detector.detectron_boxes
    clip = detectron_boxes.clip_boxes_legacy if released else box_ops.clip_boxes_to_image
    for boxes, scores, size in zip(all_boxes.split(counts), all_scores.split(counts), images.image_sizes):
        boxes = clip(boxes, size)[:, 1:].reshape(-1, 4)  # background column dropped
        num_classes = scores.shape[1] - 1
        labels = torch.arange(1, num_classes + 1, device=scores.device).repeat(scores.shape[0])
        scores = scores[:, 1:].reshape(-1)
        keep = torch.where(scores > score_threshold)[0]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        if not released:
            keep = box_ops.remove_small_boxes(boxes, min_size=1e-2)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        if released:  # the released MaskROI's NMS, equal scores in its (numpy's) order
            keep = detectron_boxes.released_nms(boxes, scores, nms_threshold) if class_agnostic \
                else detectron_boxes.released_class_nms(boxes, scores, labels, nms_threshold)  # fmt: skip
        elif class_agnostic:
            keep = box_ops.nms(boxes, scores, nms_threshold)
        else:
            keep = box_ops.batched_nms(boxes, scores, labels, nms_threshold)
        if released:
            keep = keep[detectron_boxes.keep_top_detections(scores[keep], max_detections)]
        else:
            keep = keep[:max_detections]  # nms returns indices by decreasing score
        detections.append({"boxes": boxes[keep], "labels": labels[keep], "scores": scores[keep]})
    return detections
