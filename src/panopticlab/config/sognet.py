"""The ``model.sognet`` section of a config: detector, semantic head, relation, panoptic head, losses.

Defaults are the released SOGNet R50 COCO model (reference sognet.md §1.5, §4.4): ResNet-50 +
FPN with the global-context term, UPSNet's 3-layer deformable semantic head, category +
geometry relation (no appearance), loss weights semantic 0.2 / semantic RoI 0.04 / panoptic
0.1 / relation 1.0 / detector 1.0, no unknown class, and at test the class-agnostic
candidate set (score > 0.6, NMS 0.5, at most 100), 30 % same-class mask removal, the
``x2mask`` instance logits and a 4096-pixel stuff area limit.

``panoptic`` picks the method: ``sognet``; ``upsnet`` (the same network without the relation
module, UPSNet's unknown class on, ``Y + X`` instance logits at test too); ``heuristic`` (Mask
R-CNN + semantic head trained on their own losses, merged Panoptic-FPN style at test).
The switches left at ``None`` take the published setting of the chosen method; the model's
builder resolves them once (``models/sognet/settings.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from panopticlab.config.addons import KEYS_MOVED_TO_ADDONS
from panopticlab.config.loading import Section

Method = Literal["sognet", "upsnet", "heuristic"]


@dataclass
class SOGNetConfig(Section):
    #: the panoptic method: sognet | upsnet | heuristic (see the module docstring)
    panoptic: Method = "sognet"

    # -- detector (detector.build_detector) --------------------------------------------------
    #: resnet50 | resnet101 (torchvision) | timm:<name> (models/backbones.py, e.g. timm:resnet10t)
    backbone: str = "resnet50"
    #: ImageNet weights of the backbone (a torchvision ResNet or timm state dict), loaded when the model is built
    backbone_weights: str | None = None
    #: ResNets: frozen_bn (pretrained weights, the recipe) or bn (trainable BatchNorm, training from scratch);
    #: eval_bn: frozen, computed by eval-mode BatchNorm's kernel (the released SOGNet / UPSNet code's
    #: fixed ``nn.BatchNorm2d``, bit for bit; frozen_bn's multiply-add rounds differently in the last bit).
    #: timm backbones keep their own (trainable) norm layers.
    backbone_norm: Literal["frozen_bn", "eval_bn", "bn"] = "frozen_bn"
    #: ResNets: the stride of each stage's first block in its 1x1 conv (caffe / Detectron, the released
    #: SOGNet and UPSNet weights) instead of its 3x3 conv (torchvision)
    stride_in_1x1: bool = False
    #: the network's input: channel order and the per-channel mean / std subtracted and divided (in
    #: that order, 0..255). Default: RGB with ImageNet statistics (torchvision's weights); the released
    #: SOGNet / UPSNet weights take BGR minus (102.9801, 115.9465, 122.7717), std 1.
    pixel_order: Literal["rgb", "bgr"] = "rgb"
    pixel_mean: Optional[tuple[float, float, float]] = None
    pixel_std: Optional[tuple[float, float, float]] = None
    #: ResNets: how many of the 5 stages (layer4 first) are trained; 3 = res3..res5 (conv1 and res2 frozen)
    trainable_layers: int = 3
    fpn_channels: int = 256
    #: add Linear(GAP(C5)) to the top lateral of the FPN (the released COCO models; UPSNet's fpn_with_gap)
    fpn_global_context: bool = True
    #: anchor sizes of each level P2..P6: one size per level (``[32, 64, ...]``), or a list per
    #: level (``[[16, 24], [32, 48], ...]``; every level the same number, as the RPN head is
    #: shared across levels), and the aspect ratios (h / w)
    anchor_sizes: tuple[int | tuple[int, ...], ...] = (32, 64, 128, 256, 512)
    anchor_aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    #: images are resized so the short side is min_size unless the long side would exceed max_size
    #: (torchvision's rule), at training and at test; then padded to a multiple of size_divisibility
    min_size: int = 800
    max_size: int = 1333
    size_divisibility: int = 32
    #: torchvision: its anchors, box clipping, proposal step and RoI level mapping; detectron: those of
    #: the released SOGNet / UPSNet code (Detectron's generate_anchors centred on stride / 2 at strides
    #: 4..64, coordinates clipped to W - 1, each level's own post-NMS top-n, the released FPNRoIAlign
    #: level rule and legacy RoIAlign, max_instances keeping ties; models/sognet/detectron_boxes.py)
    box_convention: Literal["torchvision", "detectron"] = "torchvision"
    #: proposals narrower or lower than this (input pixels) are dropped (torchvision 1e-3, the released 0)
    rpn_min_size: float = 1e-3
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_threshold: float = 0.7
    #: an anchor is foreground at IoU >= rpn_fg_iou_threshold with a box, background below rpn_bg_iou_threshold
    rpn_fg_iou_threshold: float = 0.7
    rpn_bg_iou_threshold: float = 0.3
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 512
    box_positive_fraction: float = 0.25
    #: a proposal is foreground at IoU >= box_fg_iou_threshold, background below box_bg_iou_threshold
    box_fg_iou_threshold: float = 0.5
    box_bg_iou_threshold: float = 0.5
    #: anchors and proposals covered by a crowd box (intersection over their own area > this) are
    #: ignored by the RPN and RoI samplers (Detectron's rule, 0.7) instead of trained as background;
    #: None: crowd regions are background (torchvision, the released code)
    crowd_ignore_iof: float | None = None
    #: side of the RoIAlign grid the box head sees (detectron2's ROI_BOX_HEAD.POOLER_RESOLUTION;
    #: 7 in the papers and the released code; the mask head's stays 14)
    box_roi_resolution: int = 7
    #: width of the two fully connected layers of the box head (one after the convolutions below)
    box_head_channels: int = 1024
    #: 3x3 conv-BatchNorm-ReLU layers (fpn_channels wide) before the box head's fully connected
    #: layer: torchvision's FastRCNNConvFCHead (4 in its Mask R-CNN v2); 0 = the two fully
    #: connected layers of the papers and the released code
    box_head_conv_layers: int = 0
    #: width of the four 3x3 convolutions (and the deconvolution) of the mask head
    mask_head_channels: int = 256
    #: what the mask head learns: the whole (amodal) instance where the data has it, or only its
    #: visible segment (what a merge that pastes masks side by side needs)
    mask_target: Literal["amodal", "visible"] = "amodal"
    #: full: Mask R-CNN's five losses; mask_head_only: only the mask loss, on the ground-truth
    #: boxes (no RPN, no box head), for models that merge given boxes and classes
    #: (``SOGNet.merge_given``, the relation experiment's merge-only arms)
    detector_training: Literal["full", "mask_head_only"] = "full"

    # -- semantic head (semantic_head.SemanticHead) ------------------------------------------
    #: deformable 3x3 conv layers (3 on COCO, 2 in UPSNet's Cityscapes model)
    semantic_num_layers: int = 3
    #: channels of the last two layers (each level's output; the concatenation has 4x this)
    semantic_channels: int = 128
    #: deformable (the papers) or plain 3x3 convolutions (cheaper on a CPU)
    semantic_conv: Literal["deformable", "plain"] = "deformable"

    # -- relation (relation.RelationModule), SOGNet only -------------------------------------
    relation_category_channels: int = 256
    relation_geometry_channels: int = 128
    #: appearance embedding from average-pooled mask-head features; 0 = off (the released model)
    relation_appearance_channels: int = 0
    #: pair appearance embedding from the FPN features of the two boxes and of their
    #: intersection (relation.RelationModule); 0 = off (the released model)
    relation_pair_appearance_channels: int = 0
    #: the mask geometry term (relation.RelationModule: the masks' area ratio and box fill); 0 = off
    #: (the released model)
    relation_mask_geometry_channels: int = 0
    #: two instances overlap when their intersection is >= this fraction of the smaller mask
    #: (the relation ground truth from amodal masks; at test, from the predicted masks)
    relation_overlap_threshold: float = 0.1
    #: the removal takes sigmoid(X_j) as 0 outside j's box (train and test); false: the released
    #: formula, where the 0 logits outside a box act as sigmoid 0.5 on every instance behind it
    removal_within_box: bool = False
    #: at test, an instance's panoptic logit outside its box: zero (the released head) or excluded (-inf)
    test_outside_box: Literal["zero", "excluded"] = "zero"
    #: joint: the factorised removal on all overlapping instances at once (train and test);
    #: pairwise: the released code's sequential, order-dependent loop over pairs (test only)
    relation_inference: Literal["joint", "pairwise"] = "joint"

    # -- panoptic head (panoptic_head) ---------------------------------------------------------
    #: instance logits X + 2 Y sigmoid(X) instead of Y + X; None: at test for sognet, never for upsnet
    train_x2mask: bool = False
    test_x2mask: bool | None = None
    #: UPSNet's unknown class; None: on for upsnet, off for sognet (its "novoid" recipe)
    unknown_class: bool | None = None
    #: with the unknown class, the fraction of GT instances kept per image in training (at least 1);
    #: the pixels of the others are the unknown class's target
    unknown_keep_fraction: float = 0.7

    # -- loss weights ----------------------------------------------------------------------------
    detector_loss_weight: float = 1.0
    semantic_loss_weight: float = 0.2
    semantic_roi_loss_weight: float = 0.04
    panoptic_loss_weight: float = 0.1
    relation_loss_weight: float = 1.0
    #: panopticlab's direction target on the relation (relation.direction_loss): which instance of an
    #: overlapping pair is in front, from the visible GT segments; 0 = off (the released training)
    relation_direction_loss_weight: float = 0.0
    #: the relation module trained at this times the schedule's learning rate (panopticlab's option;
    #: 1 = the released training, one rate for the whole network)
    relation_lr_scale: float = 1.0

    # -- inference (inference.py) --------------------------------------------------------------
    #: panopticlab: the merge at the image's own resolution, masks pasted and semantic logits cropped
    #: by one continuous box rule; released: the released code's (its resize rule, the merge on the
    #: resized input, boxes rounded to pixels as MaskRemoval and SegTerm round them, the argmax maps
    #: brought to the image by nearest resizing, then the relabelling and stuff area limit;
    #: models/sognet/released_test.py)
    test_pipeline: Literal["panopticlab", "released"] = "panopticlab"
    #: the instances of every method: each (box, class) with probability > score_threshold, NMS at
    #: nms_threshold (class-agnostic for sognet / upsnet, per class for the heuristic merge, as
    #: torchvision's detections), at most max_instances
    score_threshold: float = 0.6
    nms_threshold: float = 0.5
    max_instances: int = 100
    #: an instance whose mask lies more than this fraction on kept masks of its class is dropped
    same_class_overlap: float = 0.3
    #: an instance region whose majority semantic class is a stuff class covering at least
    #: this fraction of it becomes that stuff
    relabel_fraction: float = 0.5
    #: stuff segments smaller than this (pixels at the image's own resolution) become VOID
    stuff_area: int = 4096
    #: heuristic merge: an instance (highest score first) takes its free pixels when at least
    #: this fraction of its mask is free
    heuristic_min_unoccupied: float = 0.7

    #: panopticlab's options for shapes left this section for model.addons (config/addons.py)
    moved = {
        "class_vote=silhouette": "model.addons.silhouette",
        "class_vote=box": "nowhere: the box classes are the default (leave the key out)",
        "silhouette_classifier": "model.addons.silhouette (relabel: false tests its weights with the box classes)",
        **KEYS_MOVED_TO_ADDONS,
    }

    def problems(self) -> list[tuple[str, str]]:
        found = []
        b = self.backbone
        if not (b in ("resnet50", "resnet101") or (b.startswith("timm:") and len(b) > 5)):
            found.append(("backbone", "must be resnet50, resnet101 or timm:<model name>"))
        if not 0 <= self.trainable_layers <= 5:
            found.append(("trainable_layers", "must lie in 0..5"))
        if self.stride_in_1x1 and b.startswith("timm:"):
            found.append(("stride_in_1x1", "applies to the torchvision ResNets only"))
        if self.pixel_std is not None and min(self.pixel_std) <= 0:
            found.append(("pixel_std", "must be positive"))
        levels = self.anchor_sizes_per_level
        if len(levels) != 5 or min(min(level, default=0) for level in levels) <= 0:
            found.append(("anchor_sizes", "needs 5 levels P2..P6 of positive sizes"))
        elif len({len(level) for level in levels}) != 1:
            found.append(("anchor_sizes", "needs the same number of sizes on every level (the RPN head is shared)"))
        if self.rpn_bg_iou_threshold > self.rpn_fg_iou_threshold:
            found.append(("rpn_bg_iou_threshold", "must be <= rpn_fg_iou_threshold"))
        if self.box_bg_iou_threshold > self.box_fg_iou_threshold:
            found.append(("box_bg_iou_threshold", "must be <= box_fg_iou_threshold"))
        if not self.anchor_aspect_ratios or min(self.anchor_aspect_ratios) <= 0:
            found.append(("anchor_aspect_ratios", "needs positive ratios"))
        if self.min_size < 1 or self.max_size < self.min_size:
            found.append(("max_size", f"must be >= min_size ({self.min_size}) >= 1"))
        if self.size_divisibility < 32 or self.size_divisibility % 32:
            found.append(("size_divisibility", "must be a multiple of 32 (the stride of P5)"))
        positive = [
            "fpn_channels", "rpn_pre_nms_top_n_train", "rpn_post_nms_top_n_train", "rpn_pre_nms_top_n_test",
            "rpn_post_nms_top_n_test", "rpn_batch_size_per_image", "box_batch_size_per_image",
            "box_roi_resolution", "box_head_channels", "mask_head_channels", "semantic_num_layers", "semantic_channels",
            "relation_category_channels", "relation_geometry_channels", "max_instances",
        ]  # fmt: skip
        found += [(key, "must be at least 1") for key in positive if getattr(self, key) < 1]
        for key in ("box_head_conv_layers", "relation_appearance_channels", "relation_pair_appearance_channels",
                    "relation_mask_geometry_channels"):
            if getattr(self, key) < 0:
                found.append((key, "must be >= 0 (0 = off)"))
        fractions = [
            "rpn_nms_threshold", "rpn_fg_iou_threshold", "rpn_bg_iou_threshold", "box_fg_iou_threshold",
            "box_bg_iou_threshold", "box_positive_fraction", "relation_overlap_threshold", "unknown_keep_fraction",
            "score_threshold", "nms_threshold", "same_class_overlap", "relabel_fraction", "heuristic_min_unoccupied",
        ]  # fmt: skip
        found += [(key, "must lie in [0, 1]") for key in fractions if not 0 <= getattr(self, key) <= 1]
        if self.crowd_ignore_iof is not None and not 0 < self.crowd_ignore_iof <= 1:
            found.append(("crowd_ignore_iof", "must lie in (0, 1], or be null"))
        if self.relation_lr_scale <= 0:
            found.append(("relation_lr_scale", "must be > 0"))
        if self.relation_overlap_threshold == 0:
            found.append(("relation_overlap_threshold", "must be > 0 (0 would relate instances that do not touch)"))
        if self.rpn_min_size < 0:
            found.append(("rpn_min_size", "must be >= 0"))
        if self.stuff_area < 0:
            found.append(("stuff_area", "must be >= 0"))
        weights = ("detector", "semantic", "semantic_roi", "panoptic", "relation", "relation_direction")
        found += [(f"{w}_loss_weight", "must be >= 0") for w in weights if getattr(self, f"{w}_loss_weight") < 0]
        return found

    @property
    def anchor_sizes_per_level(self) -> tuple[tuple[int, ...], ...]:
        """``anchor_sizes`` with every level as a tuple of sizes."""
        return tuple(tuple(level) if isinstance(level, tuple) else (level,) for level in self.anchor_sizes)

    @property
    def use_relation(self) -> bool:
        return self.panoptic == "sognet"

    @property
    def use_x2mask_at_test(self) -> bool:
        return self.panoptic == "sognet" if self.test_x2mask is None else self.test_x2mask

    @property
    def use_unknown_class(self) -> bool:
        return self.panoptic == "upsnet" if self.unknown_class is None else self.unknown_class
