"""SOGNet's settings, resolved once from a ``model.sognet`` section when the model is built.

The section's method switch (``panoptic: sognet | upsnet | heuristic``) and its ``None``
defaults ("the published setting of the method") are decided here, so that the model holds
plain values and never asks the section again:

* :class:`InputSizing`: the network's input size (torchvision's short/long side rule) and padding;
* :class:`TrainingSettings`: loss weights and the panoptic head's training options;
* :class:`InferenceSettings`: the instance set and the merge into a panoptic segmentation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from panopticlab.config.sognet import SOGNetConfig
from panopticlab.models.common import PIXEL_MEAN, PIXEL_STD


@dataclass(frozen=True)
class InputSizing:
    """Images are resized so the short side is ``min_size`` unless the long side would exceed
    ``max_size`` (at training and at test), normalised, then padded to a multiple of ``size_divisibility``."""

    min_size: int = 800
    max_size: int = 1333
    size_divisibility: int = 32
    #: the network's input: RGB 0..255 images, channels reversed when ``bgr``, minus ``pixel_mean``,
    #: divided by ``pixel_std`` (both in the input's channel order)
    bgr: bool = False
    pixel_mean: tuple[float, float, float] = PIXEL_MEAN
    pixel_std: tuple[float, float, float] = PIXEL_STD
    #: the released code's resize (``prep_im_for_blob``): the long side limited only when it would
    #: *round* above max_size, and bilinear without antialiasing (``cv2.resize``)
    released_resize: bool = False

    def scale(self, height: int, width: int) -> float:
        """The resize factor of an image: short side to min_size unless the long side would exceed max_size."""
        short, long = min(height, width), max(height, width)
        if self.released_resize:
            scale = self.min_size / short
            return self.max_size / long if round(scale * long) > self.max_size else scale
        return min(self.min_size / short, self.max_size / long)

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """The network's input size for an image (sizes rounded to the nearest pixel)."""
        scale = self.scale(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))


@dataclass(frozen=True)
class TrainingSettings:
    """Loss weights (the released R50 COCO model's by default) and panoptic-head training options.

    ``panoptic_loss`` is False for the heuristic merge, which trains Mask R-CNN and the semantic
    head on their own losses only. ``unknown_keep_fraction`` applies with ``unknown_class``.
    """

    detector_loss_weight: float = 1.0
    semantic_loss_weight: float = 0.2
    semantic_roi_loss_weight: float = 0.04
    panoptic_loss_weight: float = 0.1
    relation_loss_weight: float = 1.0
    #: the direction target's weight (``relation.direction_loss``); 0: not computed
    relation_direction_loss_weight: float = 0.0
    #: the relation module's learning rate, in times the schedule's
    relation_lr_scale: float = 1.0
    panoptic_loss: bool = True
    x2mask: bool = False
    unknown_class: bool = False
    unknown_keep_fraction: float = 0.7
    #: the relation ground truth's overlap fraction (of the smaller amodal mask)
    overlap_threshold: float = 0.1
    #: sigmoid of the mask logits taken as 0 outside each box inside the removal
    removal_within_box: bool = False
    #: only the mask loss on the ground-truth boxes, not Mask R-CNN's five losses
    mask_head_only: bool = False
    #: the mask head learns the visible segments instead of the (amodal) instance masks
    visible_mask_targets: bool = False


@dataclass(frozen=True)
class InferenceSettings:
    """From detections to a panoptic segmentation (see ``inference.py`` and ``model.py``).

    ``merge``: ``panoptic_head`` (SOGNet, UPSNet: class-agnostic candidates, same-class removal,
    the relation + removal when the model has one, argmax of the panoptic logits) or ``heuristic``
    (torchvision's per-class detections merged Panoptic-FPN style).
    """

    merge: Literal["panoptic_head", "heuristic"] = "panoptic_head"
    score_threshold: float = 0.6
    nms_threshold: float = 0.5
    max_instances: int = 100
    same_class_overlap: float = 0.3
    relabel_fraction: float = 0.5
    stuff_area: int = 4096
    x2mask: bool = True
    unknown_class: bool = False
    #: the released code's sequential pairwise removal instead of the joint formula
    pairwise_relation: bool = False
    #: which predicted masks overlap (the instances that go through the relation module)
    overlap_threshold: float = 0.1
    min_unoccupied: float = 0.7
    removal_within_box: bool = False
    #: an instance's panoptic logit is -inf outside its box (else 0, the released head)
    exclude_outside_box: bool = False
    #: the released test pipeline's canvas and pixel rules (``released_test.py``)
    released_pipeline: bool = False

    @property
    def class_agnostic(self) -> bool:
        """Class-agnostic NMS of the candidates (SOGNet's instance set), else per class."""
        return self.merge == "panoptic_head"


def resolve_settings(config: SOGNetConfig) -> tuple[InputSizing, TrainingSettings, InferenceSettings]:
    """The three settings of a ``model.sognet`` section, its method's defaults filled in."""
    sizing = InputSizing(
        config.min_size,
        config.max_size,
        config.size_divisibility,
        bgr=config.pixel_order == "bgr",
        pixel_mean=tuple(config.pixel_mean or PIXEL_MEAN),
        pixel_std=tuple(config.pixel_std or PIXEL_STD),
        released_resize=config.test_pipeline == "released",
    )
    training = TrainingSettings(
        detector_loss_weight=config.detector_loss_weight,
        semantic_loss_weight=config.semantic_loss_weight,
        semantic_roi_loss_weight=config.semantic_roi_loss_weight,
        panoptic_loss_weight=config.panoptic_loss_weight,
        relation_loss_weight=config.relation_loss_weight,
        relation_direction_loss_weight=config.relation_direction_loss_weight,
        relation_lr_scale=config.relation_lr_scale,
        panoptic_loss=config.panoptic != "heuristic",
        x2mask=config.train_x2mask,
        unknown_class=config.use_unknown_class,
        unknown_keep_fraction=config.unknown_keep_fraction,
        overlap_threshold=config.relation_overlap_threshold,
        removal_within_box=config.removal_within_box,
        mask_head_only=config.detector_training == "mask_head_only",
        visible_mask_targets=config.mask_target == "visible",
    )
    inference = InferenceSettings(
        merge="heuristic" if config.panoptic == "heuristic" else "panoptic_head",
        score_threshold=config.score_threshold,
        nms_threshold=config.nms_threshold,
        max_instances=config.max_instances,
        same_class_overlap=config.same_class_overlap,
        relabel_fraction=config.relabel_fraction,
        stuff_area=config.stuff_area,
        x2mask=config.use_x2mask_at_test,
        unknown_class=config.use_unknown_class,
        pairwise_relation=config.relation_inference == "pairwise",
        overlap_threshold=config.relation_overlap_threshold,
        min_unoccupied=config.heuristic_min_unoccupied,
        removal_within_box=config.removal_within_box,
        exclude_outside_box=config.test_outside_box == "excluded",
        released_pipeline=config.test_pipeline == "released",
    )
    return sizing, training, inference
