"""SOGNet as panopticlab's trainers and tools see every model (``models/base.py``):

* ``targets_transform()``: the per-item resize and target maker (``item["targets"]``), run in the loader's workers;
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
torchvision's per-class detections with the semantic argmax instead. ``merge_given`` runs the
same merge on given boxes and classes (detection skipped), for models trained with
``detector_training: mask_head_only`` (the mask loss on the GT boxes instead of Mask R-CNN's five).

:func:`build_sognet_model` resolves a ``model.sognet`` section once (``settings.py``); the model
keeps the resolved settings, never the section.

Add-ons (``models/base.py``) are called at three points: their losses after the family's in
``forward``; in the merge, those that refine get the probabilities the merge's argmax reads (the
panoptic logits' softmax; the heuristic merge's semantic softmax and in-box mask sigmoids); each
may relabel a ``predict`` result (not ``merge_given``'s, whose classes are given).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.image_list import ImageList

from panopticlab.config.loading import check_section
from panopticlab.config.sognet import SOGNetConfig
from panopticlab.data.coco_panoptic import Categories
from panopticlab.evaluation.overlap import OverlapRelationEvaluator
from panopticlab.evaluation.protocol import Evaluator
from panopticlab.masks import overlap_graph
from panopticlab.models.base import PanopticModel, training_targets
from panopticlab.models.common import IGNORE_LABEL, ImageInput, as_image_tensors, inference_mode
from panopticlab.models.sognet.detectron_boxes import released_descending
from panopticlab.models.sognet.detector import (
    FPN_LEVELS,
    Detector,
    build_detector,
    detect,
    detector_losses,
    mask_head_loss,
    mask_head_outputs,
    pooled_region_features,
)
from panopticlab.models.sognet.inference import (
    assemble_result,
    heuristic_assignment,
    relabel_instances,
    remove_small_stuff,
    resample_to_image,
    same_class_removal,
    winner_assignment,
)
from panopticlab.models.sognet.labels import LabelSpace
from panopticlab.models.sognet.overlap_removal import (
    remove_overlaps,
    remove_overlaps_pairwise,
)
from panopticlab.models.sognet.panoptic_head import (
    box_support,
    panoptic_logits,
    panoptic_loss,
    panoptic_target,
    paste_mask_logits,
    unknown_logits,
)
from panopticlab.models.sognet.released_test import (
    nearest_to_image,
    paste_mask_logits_released,
    released_network_input,
    released_overlap_graph,
    released_overlapping_order,
    semantic_crop_support,
)
from panopticlab.models.sognet.relation import (
    RelationModule,
    direction_loss,
    intersection_boxes,
    overlapping_order,
    relation_loss,
)
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
        self.register_buffer("pixel_mean", torch.tensor(sizing.pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(sizing.pixel_std).view(3, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # -- training --------------------------------------------------------------------------

    def targets_transform(self) -> PrepareTrainingItem:
        """The trainer runs this on every training item in its data-loader workers (``data_transform()``)."""
        category_ids = {i: self.categories.to_contiguous(i) for i in self.categories.ids}
        settings = self.training_settings
        return PrepareTrainingItem(
            self.labels, category_ids, self.sizing, settings.overlap_threshold, direction=settings.relation_direction_loss_weight > 0
        )

    def forward(self, batch: Sequence[dict[str, Any]]) -> dict[str, Tensor]:
        """Dataset items (``image`` uint8 [3, H, W] at input size and ``targets``, both from
        :meth:`data_transform`) -> the weighted losses: Mask R-CNN's five (``loss_objectness``,
        ``loss_rpn_box_reg``, ``loss_classifier``, ``loss_box_reg``, ``loss_mask``), ``loss_sem_seg``,
        ``loss_sem_roi``, and unless ``panoptic: heuristic`` ``loss_panoptic`` (+ ``loss_relation``
        for SOGNet, and ``loss_relation_direction`` with a direction weight), then the add-ons' losses."""
        settings = self.training_settings
        targets = [_to_device(t, self.device) for t in training_targets(batch)]
        images = self._preprocess([item["image"].to(self.device).float() for item in batch])
        height, width = images.tensors.shape[-2:]

        features = self.detector.backbone(images.tensors)
        boxes = [t["boxes"] for t in targets]
        detector_labels = [t["labels"] + 1 for t in targets]
        mask_targets = [_visible_masks(t) if settings.visible_mask_targets else t["masks"] for t in targets]
        mask_outputs = None
        if settings.mask_head_only:
            mask_outputs = mask_head_outputs(self.detector, features, boxes, detector_labels, images.image_sizes)
            losses = {"loss_mask": settings.detector_loss_weight * mask_head_loss(mask_outputs[0], boxes, mask_targets)}
        else:
            detector_targets = [
                {"boxes": b, "labels": c, "masks": m, "crowd_boxes": t["crowd_boxes"]}
                for b, c, m, t in zip(boxes, detector_labels, mask_targets, targets)
            ]
            losses = {
                name: settings.detector_loss_weight * value
                for name, value in detector_losses(self.detector, images, features, detector_targets).items()
            }
        semantic, fused = self.semantic_head([features[level] for level in FPN_LEVELS])
        semantic_target = torch.stack([pad_to(t["semantic"].long(), height, width, IGNORE_LABEL) for t in targets])
        losses["loss_sem_seg"] = settings.semantic_loss_weight * semantic_loss(semantic, semantic_target)
        losses["loss_sem_roi"] = settings.semantic_roi_loss_weight * semantic_roi_loss(
            fused, self.semantic_head.classifier, boxes, semantic_target
        )
        if settings.panoptic_loss:
            if mask_outputs is None:
                mask_outputs = mask_head_outputs(self.detector, features, boxes, detector_labels, images.image_sizes)
            panoptic, relation, direction = self._panoptic_losses(features, semantic, targets, images, mask_outputs)
            losses["loss_panoptic"] = settings.panoptic_loss_weight * panoptic
            if self.relation is not None:
                losses["loss_relation"] = settings.relation_loss_weight * relation
                if settings.relation_direction_loss_weight > 0:
                    losses["loss_relation_direction"] = settings.relation_direction_loss_weight * direction
        return {**losses, **self.addon_losses(batch, {"sem_seg": semantic})}

    def _panoptic_losses(
        self,
        features: dict[str, Tensor],
        semantic: Tensor,
        targets: list[dict[str, Any]],
        images: ImageList,
        mask_outputs: tuple[list[Tensor], list[Tensor]],
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The panoptic, relation and direction losses, each averaged over the images of the batch
        (the direction's 0 unless targets carry ``direction``); ``mask_outputs``:
        :func:`mask_head_outputs` on every image's GT boxes."""
        height, width = images.tensors.shape[-2:]
        panoptic_losses, relation_losses, direction_losses = [], [], []
        for b, t in enumerate(targets):
            k = self._panoptic_instances(len(t["labels"]))
            labels, boxes = t["labels"][k], t["boxes"][k]
            mask_logits, appearance = mask_outputs[0][b][k], mask_outputs[1][b][k]
            canvas_boxes = boxes / 4
            masks = paste_mask_logits(mask_logits, canvas_boxes, height // 4, width // 4)
            support = box_support(canvas_boxes.float(), height // 4, width // 4)
            if self.relation is not None:
                within = support if self.training_settings.removal_within_box else None
                regions = _one_image(features, b), images.image_sizes[b]
                overlap = t["relation"][k][:, k]
                fill = mask_fill(mask_logits)
                masks, relation, subset = self._resolve(masks, labels, boxes, appearance, overlap, regions, fill=fill, support=within)
                relation_losses.append(relation_loss(relation, overlap[subset][:, subset]))
                if "direction" in t:
                    direction_losses.append(direction_loss(relation, t["direction"][k][:, k][subset][:, subset]))
            logits = self._panoptic_logits(
                semantic[b], masks, labels, support, x2mask=self.training_settings.x2mask, unknown=self.training_settings.unknown_class
            )
            target = panoptic_target(
                stride4_id_map(t["id_map"], height, width),
                t["segment_labels"],
                self.labels.stuff_channel,
                t["segment_ids"][k],
                unknown_segment_ids=self._unknown_segments(t, k) if self.training_settings.unknown_class else (),
            )
            panoptic_losses.append(panoptic_loss(logits, target))
        nothing = semantic.sum() * 0.0
        relation = torch.stack(relation_losses).mean() if relation_losses else nothing
        direction = torch.stack(direction_losses).mean() if direction_losses else nothing
        return torch.stack(panoptic_losses).mean(), relation, direction

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

    def _relation(
        self, labels: Tensor, boxes: Tensor, appearance: Tensor, regions: tuple[dict[str, Tensor], tuple[int, int]], fill: Tensor
    ) -> Tensor:
        """The relation module's O [N, N] on N instances of one image (``boxes`` in input pixels;
        ``regions``: the image's FPN features, batch of 1, and its input size, read by the pair
        appearance term only; ``fill``: float [N], :func:`mask_fill`, read by the mask geometry
        term only)."""
        pooled = None
        if self.relation.pair_appearance_channels:
            features, image_size = regions
            shared_boxes, meets = intersection_boxes(boxes)
            region = pooled_region_features(self.detector, features, [torch.cat([boxes, shared_boxes])], [image_size])[0]
            n = len(boxes)
            pooled = region[:n], region[n:].view(n, n, region.shape[-1]) * meets[..., None].to(region.dtype)
        return self.relation(labels, boxes, appearance if self.relation.appearance_channels else None, pooled, fill)

    def _resolve(
        self,
        masks: Tensor,
        labels: Tensor,
        boxes: Tensor,
        appearance: Tensor,
        overlap: Tensor,
        regions: tuple[dict[str, Tensor], tuple[int, int]],
        *,
        fill: Tensor,
        pairwise: bool = False,
        support: Tensor | None = None,
        relation: Tensor | None = None,
        order: Callable[[Tensor], Tensor] = overlapping_order,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Overlap removal among the instances that overlap another one.

        Args:
            masks: float [N, H, W] pasted mask logits.
            labels: int64 [N] thing indices; boxes: float [N, 4] input pixels;
            appearance: float [N, F] pooled mask-head features.
            overlap: float [N, N], which instances overlap (G in training; predicted masks at test).
            regions: the image's features and input size (:meth:`_relation`).
            fill: float [N], each mask's fill of its box (:func:`mask_fill`).
            pairwise: the released code's sequential loop instead of the joint formula.
            support: optional bool [N, H, W], each box on the canvas: the removal's sigmoid is 0
                outside it (``removal_within_box``).
            relation: a given O [N, N] used instead of the module's (the relation experiment's arms).
            order: ``overlap`` -> the instances that go through the relation, in order
                (:func:`.relation.overlapping_order`; the released pipeline's tie order:
                :func:`.released_test.released_overlapping_order`).

        Returns:
            the resolved logits [N, H, W] (the others unchanged), O on the subset [M, M] (the
            module's, or the given one's rows and columns) and the subset, int64 [M].
        """
        subset = order(overlap)
        if relation is None:
            relation = self._relation(labels[subset], boxes[subset], appearance[subset], regions, fill[subset])
        else:
            relation = relation[subset][:, subset].to(masks.dtype)
        if len(subset) < 2:
            return masks, relation, subset
        subset_support = None if support is None else support[subset]
        if pairwise:
            resolved = remove_overlaps_pairwise(masks[subset], lambda i, j: relation[[i, j]][:, [i, j]], subset_support)
        else:
            resolved = remove_overlaps(masks[subset], relation, subset_support)
        return masks.index_copy(0, subset, resolved), relation, subset

    def _panoptic_logits(
        self,
        semantic: Tensor,
        masks: Tensor,
        labels: Tensor,
        crop: Tensor,
        *,
        x2mask: bool,
        unknown: bool,
        exclude_outside: Tensor | None = None,
    ) -> Tensor:
        """``[stuff ; instances (; unknown)]`` on the canvas of ``semantic`` [C, H, W]; ``masks`` the
        resolved mask logits [N, H, W], ``labels`` thing indices, ``crop`` (bool [N, H, W]) the
        pixels where each instance's semantic logit is kept (its box); ``exclude_outside``: the
        boxes' support (bool [N, H, W]), instance channels -inf outside it."""
        instance_semantic = torch.where(crop, semantic[self.labels.thing_contiguous(labels)], semantic.new_zeros(()))
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
        images, features, semantic = self._image_features(image, released=s.released_pipeline)
        detections = detect(
            self.detector,
            images,
            features,
            score_threshold=s.score_threshold,
            nms_threshold=s.nms_threshold,
            max_detections=s.max_instances,
            class_agnostic=s.class_agnostic,
        )[0]
        if s.released_pipeline:  # MaskRemoval's own sort of the candidates (numpy's order of equal scores)
            detections = {name: value[released_descending(detections["scores"])] for name, value in detections.items()}
        instances = self._instances(images, features, (height, width), detections["boxes"], detections["labels"] - 1, released=s.released_pipeline)
        instances.scores = detections["scores"]
        instance, category, kept = self._merge(
            instances, semantic, features, images.image_sizes[0], image, s, drop_duplicates=True
        )
        result = assemble_result(instance, category, instances.contiguous[kept], instances.scores[kept], self.categories)
        # the semantic logits are on the result's canvas unless the released pipeline merged at the input's
        return self.relabelled(result, {} if s.released_pipeline else {"sem_seg": semantic})

    def merge_given(
        self,
        image: ImageInput,
        boxes: Tensor,
        labels: Tensor,
        *,
        relation: Tensor | None = None,
        merge: str | None = None,
    ) -> GivenMerge:
        """The merge of given instances (e.g. the ground truth's boxes and classes): detection is
        skipped, so the merge is measured without detector noise.

        The mask head runs on the given boxes; each instance's score is its mask confidence (the
        mean probability over the pixels its mask claims), which orders the heuristic merge. No
        same-class removal (given instances are not duplicates). The relation module's O is
        computed on all the instances and, as at test, used among those whose predicted masks
        overlap another's.

        Args:
            image: one image (as :meth:`predict` takes it).
            boxes: float [N, 4], (x0, y0, x1, y1) in the image's pixels.
            labels: int64 [N], contiguous ids of thing categories.
            relation: a given O [N, N] (``O_ij > 0``: j in front of i) used instead of the module's
                (zero, the ground truth's depth, random directions...); also for a model without
                a relation module, whose panoptic head then applies the removal.
            merge: ``panoptic_head`` or ``heuristic``; None: the model's own.

        Returns:
            a :class:`GivenMerge`: the result, which given instance owns each pixel, the scores and
            the module's O on all instances (None without a relation module).
        """
        settings = self.inference if merge is None else replace(self.inference, merge=merge)
        with inference_mode(self):
            image = as_image_tensors(image)[0].to(self.device)
            height, width = image.shape[-2:]
            released = settings.released_pipeline
            images, features, semantic = self._image_features(image, released=released)
            things = self.labels.thing_index(labels.to(self.device))
            input_boxes = boxes.to(self.device, torch.float32) * _box_scale(images.image_sizes[0], (height, width), self.device)
            instances = self._instances(images, features, (height, width), input_boxes, things, released=released)
            probabilities = torch.sigmoid(instances.masks)
            claimed = instances.masks > 0
            instances.scores = (probabilities * claimed).flatten(1).sum(1) / claimed.flatten(1).sum(1).clamp(min=1)
            module_relation = None
            if self.relation is not None:
                # on all the instances once: the merge uses its rows and columns of the overlapping ones
                module_relation = self._relation(
                    things, instances.input_boxes, instances.appearance, (features, images.image_sizes[0]), instances.fill
                )
            instance, category, kept = self._merge(
                instances, semantic, features, images.image_sizes[0], image, settings, drop_duplicates=False,
                relation=module_relation if relation is None else relation,
            )  # fmt: skip
            result = assemble_result(instance, category, instances.contiguous[kept], instances.scores[kept], self.categories)
            owner = torch.where(instance >= 0, kept[instance.clamp(min=0)], -1)
            return GivenMerge(result, owner.cpu(), instances.scores.cpu(), None if module_relation is None else module_relation.cpu())

    def _image_features(self, image: Tensor, *, released: bool) -> tuple[ImageList, dict[str, Tensor], Tensor]:
        """One image [3, H, W] (0..255) -> the input batch, its FPN features and the semantic
        logits [C, H, W] on the merge's canvas: the image's resolution, or with ``released`` the
        (un-padded) input's, the stride-4 logits upsampled x4 as the released code does."""
        height, width = image.shape[-2:]
        images = self._network_input(image.to(self.device))
        features = self.detector.backbone(images.tensors)
        semantic, _ = self.semantic_head([features[level] for level in FPN_LEVELS])
        if released:  # as the released FCN head: x4 on the padded input, then cropped to the input
            h, w = images.image_sizes[0]
            return images, features, F.interpolate(semantic, scale_factor=4, mode="bilinear", align_corners=False)[0, :, :h, :w]
        return images, features, resample_to_image(semantic[0], images.image_sizes[0], (height, width))

    def _instances(
        self, images: ImageList, features: dict[str, Tensor], image_size: tuple[int, int], input_boxes: Tensor, labels: Tensor,
        *, released: bool,
    ) -> Instances:  # fmt: skip
        """The mask head on N boxes (input pixels) of thing indices ``labels``: their logits pasted on
        the merge's canvas, the image's resolution ``image_size`` (or with ``released`` the input's,
        by the released paste)."""
        mask_logits, appearance = mask_head_outputs(self.detector, features, [input_boxes], [labels + 1], images.image_sizes)
        if released:
            (height, width), boxes = images.image_sizes[0], input_boxes
            masks = paste_mask_logits_released(mask_logits[0], boxes, height, width)
        else:
            (height, width), boxes = image_size, input_boxes / _box_scale(images.image_sizes[0], image_size, self.device)
            masks = paste_mask_logits(mask_logits[0], boxes, height, width)
        return Instances(
            boxes=boxes,
            input_boxes=input_boxes,
            labels=labels,
            contiguous=self.labels.thing_contiguous(labels),
            masks=masks,
            appearance=appearance[0],
            fill=mask_fill(mask_logits[0]),
            scores=torch.ones(len(labels), device=self.device),
        )

    def _merge(
        self,
        instances: Instances,
        semantic: Tensor,
        features: dict[str, Tensor],
        input_size: tuple[int, int],
        image: Tensor,
        s: InferenceSettings,
        *,
        drop_duplicates: bool,
        relation: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Instances + semantic logits [C, h, w] on the merge's canvas -> the assignment ``(instance,
        category)`` at the size of ``image`` ([3, H, W], RGB 0..255; int64 [H, W] each; ``instance``
        indexes the kept instances) and the kept indices into ``instances``.

        ``drop_duplicates``: the released same-class removal (detections); ``relation``: a given O
        [N, N] instead of the module's. With ``s.released_pipeline`` the canvas is the input's and
        the argmax maps are brought to the image before the relabelling and the stuff area limit.
        Add-ons that refine get the panoptic logits' softmax (the heuristic merge: the semantic
        softmax and each mask's sigmoid inside its box) before the argmax."""
        image_size = tuple(image.shape[-2:])
        height, width = semantic.shape[-2:]
        semantic_argmax = semantic.argmax(dim=0)
        everyone = torch.arange(len(instances.labels), device=self.device)
        if s.merge == "heuristic":
            order = torch.sort(instances.scores, descending=True, stable=True).indices
            masks = instances.masks[order] > 0
            if self.refines:
                # a mask is its logits > 0, inside its box only (the logits are 0 outside: sigmoid 0.5)
                inside = box_support(instances.boxes[order].float(), height, width)
                maps = {"semantic": torch.softmax(semantic.float(), dim=0), "masks": torch.sigmoid(instances.masks[order].float()) * inside}
                maps = self.refined(image[None], {name: value[None] for name, value in maps.items()})
                semantic_argmax, masks = maps["semantic"][0].argmax(dim=0), maps["masks"][0] > 0.5
            instance, category = heuristic_assignment(masks, semantic_argmax, self.labels, min_unoccupied=s.min_unoccupied)
            if s.released_pipeline:
                instance, category = self._to_image(torch.stack([instance, category]), image_size).unbind(0)
            return instance, remove_small_stuff(instance, category, s.stuff_area), order
        kept = same_class_removal(instances.masks > 0, instances.labels, s.same_class_overlap) if drop_duplicates else everyone
        masks, labels, boxes = instances.masks[kept], instances.labels[kept], instances.boxes[kept]
        # each box on the image, computed once for the options that need it
        support = box_support(boxes.float(), height, width) if s.removal_within_box or s.exclude_outside_box else None
        if self.relation is not None or relation is not None:
            if s.released_pipeline:
                overlap, order = released_overlap_graph(masks > 0, s.overlap_threshold), released_overlapping_order
            else:
                overlap, order = overlap_graph(masks > 0, s.overlap_threshold), overlapping_order
            masks, _, _ = self._resolve(
                masks, labels, instances.input_boxes[kept], instances.appearance[kept], overlap, (features, input_size),
                fill=instances.fill[kept], pairwise=s.pairwise_relation, support=support if s.removal_within_box else None,
                relation=None if relation is None else relation.to(self.device)[kept][:, kept], order=order,
            )  # fmt: skip
        crop = semantic_crop_support(boxes, height, width) if s.released_pipeline else box_support(boxes.float(), height, width)
        logits = self._panoptic_logits(
            semantic, masks, labels, crop, x2mask=s.x2mask, unknown=s.unknown_class,
            exclude_outside=support if s.exclude_outside_box else None,
        )  # fmt: skip
        if self.refines:  # probabilities: the argmax below is the same
            logits = self.refined(image[None], {"panoptic": torch.softmax(logits.float(), dim=0)[None]})["panoptic"][0]
        instance, category = winner_assignment(logits, len(kept), self.labels, has_unknown=s.unknown_class)
        if s.released_pipeline:
            instance, category, semantic_argmax = self._to_image(torch.stack([instance, category, semantic_argmax]), image_size).unbind(0)
        instance, category = relabel_instances(
            instance, category, semantic_argmax, instances.contiguous[kept], self.labels, relabel_fraction=s.relabel_fraction
        )
        return instance, remove_small_stuff(instance, category, s.stuff_area), kept

    def _to_image(self, maps: Tensor, image_size: tuple[int, int]) -> Tensor:
        """int64 maps [K, h, w] of the input -> [K, H, W] of the image (the released nearest resize)."""
        return nearest_to_image(maps, image_size, self.sizing.scale(*image_size))

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
            input_boxes = boxes.to(self.device, torch.float32) * _box_scale((input_h, input_w), (height, width), self.device)
            things = self.labels.thing_index(labels.to(self.device))
            relation = self.relation
            if not (relation.appearance_channels or relation.pair_appearance_channels or relation.mask_geometry_channels):
                return relation(things, input_boxes).cpu()
            images = self._network_input(image)
            features = self.detector.backbone(images.tensors)
            logits, pooled = mask_head_outputs(self.detector, features, [input_boxes], [things + 1], images.image_sizes)
            return self._relation(things, input_boxes, pooled[0], (features, images.image_sizes[0]), mask_fill(logits[0])).cpu()

    def parameter_groups(self) -> list[dict[str, Any]]:
        """One group, or with ``relation_lr_scale != 1`` the relation module's parameters in a second
        group at that scale (the first keeps the rest, in their order)."""
        scale = self.training_settings.relation_lr_scale
        if self.relation is None or scale == 1.0:
            return super().parameter_groups()
        relation = {id(p) for p in self.relation.parameters()}
        trainable = [p for p in self.parameters() if p.requires_grad]
        return [
            {"params": [p for p in trainable if id(p) not in relation], "lr_scale": 1.0},
            {"params": [p for p in trainable if id(p) in relation], "lr_scale": scale},
        ]

    def evaluators(self) -> list[Evaluator]:
        """With a relation module: the overlap-relation metric on the items' GT instances."""
        return [] if self.relation is None else [OverlapRelationEvaluator(self.predict_relations)]

    # -- input -------------------------------------------------------------------------------

    def _network_input(self, image: Tensor) -> ImageList:
        """One image float [3, H, W] (RGB 0..255) -> the padded, normalised batch of one at input size;
        with the released pipeline by the released arithmetic (``released_test.released_network_input``)."""
        if not self.sizing.released_resize:
            return self._preprocess([self._resize(image)])
        s = self.sizing
        network_input = released_network_input(image.float(), s.pixel_mean, s.pixel_std, s.scale(*image.shape[-2:]), s.bgr)
        size = (int(network_input.shape[-2]), int(network_input.shape[-1]))
        height, width = padded_size([size], s.size_divisibility)
        return ImageList(pad_to(network_input, height, width, 0.0)[None], [size])

    def _resize(self, image: Tensor) -> Tensor:
        """float [3, H, W] -> the network's input size (:meth:`~.settings.InputSizing.input_size`)."""
        return resize_image(image, self.sizing.input_size(*image.shape[-2:]), antialias=not self.sizing.released_resize)

    def _preprocess(self, images: list[Tensor]) -> ImageList:
        """float [3, h, w] RGB 0..255 images at input size -> normalised (BGR first when the sizing
        says so), zero-padded batch (height and width multiples of ``size_divisibility``) with the
        sizes before padding."""
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        height, width = padded_size(sizes, self.sizing.size_divisibility)
        if self.sizing.bgr:
            images = [im.flip(0) for im in images]
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
            pair_appearance_channels=config.relation_pair_appearance_channels,
            region_in_channels=config.fpn_channels,
            mask_geometry_channels=config.relation_mask_geometry_channels,
        )
    sizing, training, inference = resolve_settings(config)
    return SOGNet(detector, semantic_head, relation, categories, sizing, training, inference)


@dataclass
class Instances:
    """N thing instances of one image at inference, before the merge.

    Attributes:
        boxes: float [N, 4] in the image's pixels; input_boxes: the same in input pixels.
        labels: int64 [N] thing indices; contiguous: int64 [N] their contiguous category ids.
        masks: float [N, H, W] mask logits pasted at the image's resolution (0 outside each box).
        appearance: float [N, mask_head_channels] pooled mask-head features.
        fill: float [N], each mask's fill of its box (:func:`mask_fill`).
        scores: float [N], the detection scores (or the mask confidences of given instances).
    """

    boxes: Tensor
    input_boxes: Tensor
    labels: Tensor
    contiguous: Tensor
    masks: Tensor
    appearance: Tensor
    fill: Tensor
    scores: Tensor


@dataclass
class GivenMerge:
    """What :meth:`SOGNet.merge_given` returns.

    Attributes:
        result: the panoptic segmentation.
        owner: int64 [H, W], the given instance each pixel went to (-1: stuff or VOID).
        scores: float [N], each given instance's mask confidence.
        relation: float [N, N], the relation module's O on all given instances, or None.
    """

    result: PanopticResult
    owner: Tensor
    scores: Tensor
    relation: Tensor | None


def _box_scale(input_size: tuple[int, int], image_size: tuple[int, int], device: torch.device) -> Tensor:
    """float [4]: multiplies (x0, y0, x1, y1) in the image's pixels into the network input's."""
    (input_h, input_w), (height, width) = input_size, image_size
    return torch.tensor([input_w / width, input_h / height] * 2, device=device)


def _visible_masks(targets: dict[str, Any]) -> Tensor:
    """bool [N, H, W]: each training instance's visible segment."""
    return targets["id_map"][None].to(torch.int64) == targets["segment_ids"][:, None, None]


def _one_image(features: dict[str, Tensor], b: int) -> dict[str, Tensor]:
    """The FPN features of image ``b`` of the batch, as a batch of one."""
    return {name: value[b : b + 1] for name, value in features.items()}


def mask_fill(mask_logits: Tensor) -> Tensor:
    """float [N, 28, 28] mask logits -> float [N]: each mask's mean probability (the share of its box
    it covers), without gradient: the relation reads the mask, it does not train it."""
    return torch.sigmoid(mask_logits.detach().float()).mean(dim=(1, 2))


def _to_device(targets: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in targets.items()}
