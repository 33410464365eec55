"""SOGNet as panopticlab's trainers and tools see every model (``models/base.py``):

* ``data_transform()``: the per-item resize and target maker (``item["targets"]``), run in the loader's workers;
* ``forward(batch)``: a list of dataset items with targets -> a dict of named, weighted losses;
* ``predict(images)``: images (paths, PIL, numpy, tensors) -> one :class:`PanopticResult` each;
* ``evaluators()``: with a relation module, the overlap-relation metric, which scores
  ``predict_relations(image, boxes, labels)`` (the relation O of given instances).

The parts: ``detector.py`` (torchvision Mask R-CNN), ``semantic_head.py``, ``relation.py``,
``overlap_removal.py``, ``panoptic_head.py``, ``targets.py`` and ``inference.py``.

Training (one image at a time for the panoptic head, reference §9.3): Mask R-CNN's losses;
the semantic loss and the semantic RoI loss on the GT boxes; the mask head run on the GT boxes,
its logits pasted on the stride-4 canvas; for SOGNet the relation module on the instances
whose amodal masks overlap another's, their logits resolved by the factorised removal, and the
relation loss; the panoptic logits ``[stuff ; Y + X~ (; unknown)]`` against the target from
the visible segments.

Inference: class-agnostic candidates (score > 0.6, NMS 0.5, <= 100), their mask logits pasted
at the image's resolution, same-class removal (30 %), the relation + removal on the
instances whose predicted masks overlap, the ``x2mask`` panoptic logits, argmax,
majority-class relabelling and the stuff area limit. ``panoptic: heuristic`` merges
torchvision's per-class detections with the semantic argmax instead.

:func:`build_sognet_model` resolves a ``model.sognet`` section once (``settings.py``); the model
keeps the resolved settings, never the section.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchvision.models.detection.image_list import ImageList

from panopticlab.config.loading import check_section
from panopticlab.config.sognet import SOGNetConfig
from panopticlab.data.coco_panoptic import Categories
from panopticlab.evaluation.overlap import OverlapRelationEvaluator
from panopticlab.evaluation.protocol import Evaluator
from panopticlab.masks import overlap_graph
from panopticlab.models.base import PanopticModel, training_targets
from panopticlab.models.common import IGNORE_LABEL, PIXEL_MEAN, PIXEL_STD, ImageInput, as_image_tensors, inference_mode
from panopticlab.models.sognet.detector import (
    FPN_LEVELS,
    Detector,
    build_detector,
    detect,
    detector_losses,
    mask_head_outputs,
)
from panopticlab.models.sognet.inference import (
    assemble_result,
    heuristic_assignment,
    panoptic_assignment,
    remove_small_stuff,
    resample_to_image,
    same_class_removal,
)
from panopticlab.models.sognet.labels import LabelSpace
from panopticlab.models.sognet.overlap_removal import (
    remove_overlaps,
    remove_overlaps_pairwise,
)
from panopticlab.models.sognet.panoptic_head import (
    box_support,
    crop_to_boxes,
    panoptic_logits,
    panoptic_loss,
    panoptic_target,
    paste_mask_logits,
    unknown_logits,
)
from panopticlab.models.sognet.relation import RelationModule, overlapping_order, relation_loss
from panopticlab.models.sognet.semantic_head import SemanticHead, semantic_loss, semantic_roi_loss
from panopticlab.models.sognet.settings import InferenceSettings, InputSizing, TrainingSettings, resolve_settings
from panopticlab.models.sognet.targets import (
    PrepareTrainingItem,
    pad_to,
    padded_size,
    resize_image,
    stride4_id_map,
)
from panopticlab.structures import PanopticResult


class SOGNet(PanopticModel):
    """Mask R-CNN + semantic head (+ relation module) + parameter-free panoptic head.

    Args:
        detector: the Mask R-CNN parts (labels 1..K over the thing classes).
        semantic_head: logits of all categories at stride 4.
        relation: the relation module, or None (``panoptic: upsnet | heuristic``).
        categories: the dataset's categories.
        sizing: the network's input size.
        training: loss weights and panoptic-head training options.
        inference: the instance set and the merge.
    """

    uses_instances = True  # amodal masks train the detector and the relation, and score the relation

    def __init__(
        self,
        detector: Detector,
        semantic_head: SemanticHead,
        relation: RelationModule | None,
        categories: Categories,
        sizing: InputSizing = InputSizing(),
        training: TrainingSettings = TrainingSettings(),
        inference: InferenceSettings = InferenceSettings(),
    ):
        super().__init__(categories)
        self.detector = detector
        self.semantic_head = semantic_head
        self.relation = relation
        self.sizing = sizing
        self.training_settings = training
        self.inference = inference
        self.labels = LabelSpace(categories)
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(3, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # -- training --------------------------------------------------------------------------

    def data_transform(self) -> PrepareTrainingItem:
        """The trainer runs this on every training item in its data-loader workers."""
        category_ids = {i: self.categories.to_contiguous(i) for i in self.categories.ids}
        return PrepareTrainingItem(self.labels, category_ids, self.sizing, self.training_settings.overlap_threshold)

    def forward(self, batch: Sequence[dict[str, Any]]) -> dict[str, Tensor]:
        """Dataset items (``image`` uint8 [3, H, W] at input size and ``targets``, both from
        :meth:`data_transform`) -> the weighted losses: Mask R-CNN's five (``loss_objectness``,
        ``loss_rpn_box_reg``, ``loss_classifier``, ``loss_box_reg``, ``loss_mask``), ``loss_sem_seg``,
        ``loss_sem_roi``, and unless ``panoptic: heuristic`` ``loss_panoptic`` (+ ``loss_relation``
        for SOGNet)."""
        settings = self.training_settings
        targets = [_to_device(t, self.device) for t in training_targets(batch)]
        images = self._preprocess([item["image"].to(self.device).float() for item in batch])
        height, width = images.tensors.shape[-2:]

        features = self.detector.backbone(images.tensors)
        detector_targets = [
            {"boxes": t["boxes"], "labels": t["labels"] + 1, "masks": t["masks"], "crowd_boxes": t["crowd_boxes"]} for t in targets
        ]
        losses = {
            name: settings.detector_loss_weight * value
            for name, value in detector_losses(self.detector, images, features, detector_targets).items()
        }
        semantic, fused = self.semantic_head([features[level] for level in FPN_LEVELS])
        semantic_target = torch.stack([pad_to(t["semantic"].long(), height, width, IGNORE_LABEL) for t in targets])
        losses["loss_sem_seg"] = settings.semantic_loss_weight * semantic_loss(semantic, semantic_target)
        boxes = [t["boxes"] for t in targets]
        losses["loss_sem_roi"] = settings.semantic_roi_loss_weight * semantic_roi_loss(
            fused, self.semantic_head.classifier, boxes, semantic_target
        )
        if settings.panoptic_loss:
            panoptic, relation = self._panoptic_losses(features, semantic, targets, images)
            losses["loss_panoptic"] = settings.panoptic_loss_weight * panoptic
            if self.relation is not None:
                losses["loss_relation"] = settings.relation_loss_weight * relation
        return losses

    def _panoptic_losses(
        self, features: dict[str, Tensor], semantic: Tensor, targets: list[dict[str, Any]], images: ImageList
    ) -> tuple[Tensor, Tensor]:
        """The panoptic and relation losses, each averaged over the images of the batch."""
        height, width = images.tensors.shape[-2:]
        kept = [self._panoptic_instances(len(t["labels"])) for t in targets]
        boxes = [t["boxes"][k] for t, k in zip(targets, kept)]
        detector_labels = [t["labels"][k] + 1 for t, k in zip(targets, kept)]
        mask_logits, appearance = mask_head_outputs(self.detector, features, boxes, detector_labels, images.image_sizes)
        panoptic_losses, relation_losses = [], []
        for b, t in enumerate(targets):
            k = kept[b]
            labels = t["labels"][k]
            canvas_boxes = boxes[b] / 4
            masks = paste_mask_logits(mask_logits[b], canvas_boxes, height // 4, width // 4)
            if self.relation is not None:
                support = box_support(canvas_boxes, height // 4, width // 4) if self.training_settings.removal_within_box else None
                masks, relation = self._resolve(masks, labels, boxes[b], appearance[b], t["relation"][k][:, k], support=support)
                relation_losses.append(relation)
            logits = self._panoptic_logits(
                semantic[b], masks, labels, canvas_boxes, x2mask=self.training_settings.x2mask, unknown=self.training_settings.unknown_class
            )
            target = panoptic_target(
                stride4_id_map(t["id_map"], height, width),
                t["segment_labels"],
                self.labels.stuff_channel,
                t["segment_ids"][k],
                unknown_segment_ids=self._unknown_segments(t, k) if self.training_settings.unknown_class else (),
            )
            panoptic_losses.append(panoptic_loss(logits, target))
        relation = torch.stack(relation_losses).mean() if relation_losses else semantic.sum() * 0.0
        return torch.stack(panoptic_losses).mean(), relation

    def _panoptic_instances(self, n: int) -> Tensor:
        """The GT instances that get a panoptic channel: all, or with UPSNet's unknown class a
        random ``floor(keep_fraction * n)`` (at least 1) of them, in index order."""
        if not self.training_settings.unknown_class or n == 0:
            return torch.arange(n, device=self.device)
        keep = max(1, int(self.training_settings.unknown_keep_fraction * n))
        return torch.randperm(n, device=self.device)[:keep].sort().values

    def _unknown_segments(self, targets: dict[str, Any], kept: Tensor) -> list[int]:
        """Thing segments no kept instance owns (dropped instances, crowd, unmatched): the
        unknown class's target (UPSNet)."""
        owned = set(targets["segment_ids"][kept].tolist())
        things = set(self.labels.things)
        return [s for s, c in targets["segment_labels"].items() if c in things and s not in owned]

    def _resolve(
        self,
        masks: Tensor,
        labels: Tensor,
        boxes: Tensor,
        appearance: Tensor,
        overlap: Tensor,
        *,
        pairwise: bool = False,
        support: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Overlap removal among the instances that overlap another one.

        Args:
            masks: float [N, H, W] pasted mask logits.
            labels: int64 [N] thing indices; boxes: float [N, 4] input pixels;
            appearance: float [N, F] pooled mask-head features.
            overlap: float [N, N], which instances overlap (G in training; predicted masks at test).
            pairwise: the released code's sequential loop instead of the joint formula.
            support: optional bool [N, H, W], each box on the canvas: the removal's sigmoid is 0
                outside it (``removal_within_box``).

        Returns:
            the resolved logits [N, H, W] (the others unchanged) and the relation loss
            against ``overlap`` on the subset (0, still connected, with fewer than 2).
        """
        subset = overlapping_order(overlap)
        relation = self.relation(labels[subset], boxes[subset], appearance[subset] if self.relation.appearance_channels else None)
        loss = relation_loss(relation, overlap[subset][:, subset])
        if len(subset) < 2:
            return masks, loss
        subset_support = None if support is None else support[subset]
        if pairwise:
            resolved = remove_overlaps_pairwise(masks[subset], lambda i, j: relation[[i, j]][:, [i, j]], subset_support)
        else:
            resolved = remove_overlaps(masks[subset], relation, subset_support)
        return masks.index_copy(0, subset, resolved), loss

    def _panoptic_logits(
        self,
        semantic: Tensor,
        masks: Tensor,
        labels: Tensor,
        boxes: Tensor,
        *,
        x2mask: bool,
        unknown: bool,
        exclude_outside: Tensor | None = None,
    ) -> Tensor:
        """``[stuff ; instances (; unknown)]`` on the canvas of ``semantic`` [C, H, W]; ``masks`` the
        resolved mask logits [N, H, W], ``labels`` thing indices, ``boxes`` in canvas pixels;
        ``exclude_outside``: the boxes' support (bool [N, H, W]), instance channels -inf outside it."""
        instance_semantic = crop_to_boxes(semantic[self.labels.thing_contiguous(labels)], boxes)
        unknown_channel = unknown_logits(semantic[self.labels.things], instance_semantic) if unknown else None
        return panoptic_logits(
            semantic[self.labels.stuff], instance_semantic, masks, x2mask=x2mask, unknown_logits=unknown_channel, exclude_outside=exclude_outside
        )

    # -- inference -------------------------------------------------------------------------

    def predict(self, images: ImageInput | Sequence[ImageInput]) -> list[PanopticResult]:
        """Panoptic segmentation of one image or several.

        Args:
            images: a path, PIL image, uint8 numpy array [H, W, 3], tensor [3, H, W] or
                [B, 3, H, W] (RGB, 0..255), or a list of these.

        Returns:
            One result per image at its own size; segments carry dataset category ids, thing
            segments their detection score.
        """
        with inference_mode(self):
            return [self._predict_one(image) for image in as_image_tensors(images)]

    def _predict_one(self, image: Tensor) -> PanopticResult:
        s = self.inference
        height, width = image.shape[-2:]
        images = self._preprocess([self._resize(image.to(self.device))])
        features = self.detector.backbone(images.tensors)
        semantic, _ = self.semantic_head([features[level] for level in FPN_LEVELS])
        detections = detect(
            self.detector,
            images,
            features,
            score_threshold=s.score_threshold,
            nms_threshold=s.nms_threshold,
            max_detections=s.max_instances,
            class_agnostic=s.class_agnostic,
        )[0]
        mask_logits, appearance = mask_head_outputs(
            self.detector, features, [detections["boxes"]], [detections["labels"]], images.image_sizes
        )
        input_h, input_w = images.image_sizes[0]
        scale = torch.tensor([input_w / width, input_h / height] * 2, device=self.device)
        input_boxes = detections["boxes"]
        boxes = input_boxes / scale  # image pixels
        labels = detections["labels"] - 1  # thing indices
        scores = detections["scores"]
        semantic = resample_to_image(semantic[0], (input_h, input_w), (height, width))
        semantic_argmax = semantic.argmax(dim=0)
        masks = paste_mask_logits(mask_logits[0], boxes, height, width)
        contiguous = self.labels.thing_contiguous(labels)

        if s.merge == "heuristic":
            instance, category = heuristic_assignment(masks > 0, semantic_argmax, self.labels, min_unoccupied=s.min_unoccupied)
        else:
            keep = same_class_removal(masks > 0, labels, s.same_class_overlap)
            masks, labels, contiguous, scores = masks[keep], labels[keep], contiguous[keep], scores[keep]
            boxes, input_boxes, appearance = boxes[keep], input_boxes[keep], appearance[0][keep]
            # each box on the image, computed once for the options that need it
            support = box_support(boxes.float(), height, width) if s.removal_within_box or s.exclude_outside_box else None
            if self.relation is not None:
                overlap = overlap_graph(masks > 0, s.overlap_threshold)
                removal_support = support if s.removal_within_box else None
                masks, _ = self._resolve(masks, labels, input_boxes, appearance, overlap, pairwise=s.pairwise_relation, support=removal_support)
            logits = self._panoptic_logits(
                semantic, masks, labels, boxes, x2mask=s.x2mask, unknown=s.unknown_class,
                exclude_outside=support if s.exclude_outside_box else None,
            )  # fmt: skip
            instance, category = panoptic_assignment(
                logits,
                semantic_argmax,
                contiguous,
                self.labels,
                relabel_fraction=s.relabel_fraction,
                has_unknown=s.unknown_class,
            )
        category = remove_small_stuff(instance, category, s.stuff_area)
        return assemble_result(instance, category, contiguous, scores, self.categories)

    def predict_relations(self, image: ImageInput, boxes: Tensor, labels: Tensor) -> Tensor:
        """The overlap relation O of given instances (GT boxes and classes, for the metric).

        Args:
            image: one image (as :meth:`predict` takes it).
            boxes: float [N, 4], (x0, y0, x1, y1) in the image's pixels.
            labels: int64 [N], contiguous ids of thing categories.

        Returns:
            float [N, N] on the CPU, ``O_ij > 0`` where j is in front of i.
        """
        if self.relation is None:
            raise ValueError("this model has no relation module (panoptic: upsnet | heuristic)")
        with inference_mode(self):
            image = as_image_tensors(image)[0].to(self.device)
            height, width = image.shape[-2:]
            input_h, input_w = self.sizing.input_size(height, width)
            scale = torch.tensor([input_w / width, input_h / height] * 2, device=self.device)
            input_boxes = boxes.to(self.device, torch.float32) * scale
            things = self.labels.thing_index(labels.to(self.device))
            appearance = None
            if self.relation.appearance_channels:
                images = self._preprocess([resize_image(image, (input_h, input_w))])
                features = self.detector.backbone(images.tensors)
                _, pooled = mask_head_outputs(self.detector, features, [input_boxes], [things + 1], images.image_sizes)
                appearance = pooled[0]
            return self.relation(things, input_boxes, appearance).cpu()

    def evaluators(self) -> list[Evaluator]:
        """With a relation module: the overlap-relation metric on the items' GT instances."""
        return [] if self.relation is None else [OverlapRelationEvaluator(self.predict_relations)]

    # -- input -------------------------------------------------------------------------------

    def _resize(self, image: Tensor) -> Tensor:
        """float [3, H, W] -> the network's input size (:meth:`~.settings.InputSizing.input_size`)."""
        return resize_image(image, self.sizing.input_size(*image.shape[-2:]))

    def _preprocess(self, images: list[Tensor]) -> ImageList:
        """float [3, h, w] RGB 0..255 images at input size -> normalised, zero-padded batch
        (height and width multiples of ``size_divisibility``) with the sizes before padding."""
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        height, width = padded_size(sizes, self.sizing.size_divisibility)
        batch = torch.stack([pad_to((im - self.pixel_mean) / self.pixel_std, height, width, 0.0) for im in images])
        return ImageList(batch, sizes)


def build_sognet_model(config: SOGNetConfig, categories: Categories) -> SOGNet:
    """The model of a ``model.sognet`` config section for these categories.

    Raises InputError for a config value that cannot work (``SOGNetConfig.problems``).
    """
    check_section(config, "model.sognet.")
    labels = LabelSpace(categories)
    detector = build_detector(config, labels.num_things)
    semantic_head = SemanticHead(
        detector.backbone.out_channels,
        len(categories),
        config.semantic_num_layers,
        config.semantic_channels,
        deformable=config.semantic_conv == "deformable",
    )
    relation = None
    if config.use_relation:
        relation = RelationModule(
            labels.num_things,
            category_channels=config.relation_category_channels,
            geometry_channels=config.relation_geometry_channels,
            appearance_channels=config.relation_appearance_channels,
            appearance_in_channels=config.mask_head_channels,
        )
    sizing, training, inference = resolve_settings(config)
    return SOGNet(detector, semantic_head, relation, categories, sizing, training, inference)


def _to_device(targets: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in targets.items()}
