"""Panoptic-DeepLab as panopticlab's trainers and tools see every model (``models/base.py``):

* ``targets_transform()``: the per-item target maker (``item["targets"]``), run in loader workers;
* ``forward(batch)``: a list of dataset items with targets -> a dict of named, weighted losses;
* ``predict(images)``: images (paths, PIL, numpy, tensors) -> one :class:`PanopticResult` each;
* ``forward_heads(images)``: float [B, 3, H, W] RGB 0..255 -> the raw head outputs.

The pieces it joins are each in their own module: ``network.py`` (backbone, ASPP,
decoders, heads), ``targets.py``, ``losses.py`` and ``postprocess.py``. Add-ons (``models/base.py``)
are called at three points: their losses after the family's in ``forward``; in ``predict``, after
the test-time augmentation and before the grouping, those that refine get the heads in the form
that may be averaged (:func:`refined_heads`); after the grouping, each may relabel the results.
:func:`build_panoptic_deeplab_model` resolves a ``model.panoptic_deeplab`` config section
into them once; the model keeps plain settings (:class:`LossSettings`, :class:`InferenceSettings`),
never the section.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from panopticlab.config.panoptic_deeplab import PanopticDeepLabConfig
from panopticlab.config.loading import check_section
from panopticlab.data.coco_panoptic import Categories
from panopticlab.models.backbone_weights import load_backbone_weights
from panopticlab.models.base import PanopticModel, training_targets
from panopticlab.models.common import IGNORE_LABEL, PIXEL_MEAN, PIXEL_STD, ImageInput, as_image_tensors, inference_mode, pad_images
from panopticlab.models.panoptic_deeplab.losses import OffsetNormalizer, panoptic_deeplab_losses
from panopticlab.models.panoptic_deeplab.network import PanopticDeepLabNetwork, build_panoptic_deeplab
from panopticlab.models.panoptic_deeplab.postprocess import ClassVote, panoptic_deeplab_inference
from panopticlab.models.panoptic_deeplab.targets import AddTargets, PanopticDeepLabTargetGenerator, collate_targets
from panopticlab.models.panoptic_deeplab.tta import is_single_pass, tta_average, tta_input, tta_passes
from panopticlab.structures import PanopticResult


@dataclass(frozen=True)
class LossSettings:
    """The loss weights and options of :func:`~.losses.panoptic_deeplab_losses` (detectron2's defaults)."""

    semantic_weight: float = 1.0
    center_weight: float = 200.0
    offset_weight: float = 0.01
    top_k_percent: float = 0.2
    offset_normalizer: OffsetNormalizer = "pixels"


@dataclass(frozen=True)
class InferenceSettings:
    """Post-processing (:func:`~.postprocess.panoptic_deeplab_inference`) and test-time augmentation."""

    center_threshold: float = 0.1
    nms_kernel: int = 7
    top_k: int = 200
    stuff_area: int = 2048
    class_vote: ClassVote = "majority"
    tta_scales: tuple[float, ...] = (1.0,)
    tta_flip: bool = False


class PanopticDeepLab(PanopticModel):
    """Network + target generator + losses + post-processing.

    Args:
        network: the backbone/decoders/heads, with ``forward_heads``.
        categories: the dataset's categories (contiguous id ``k`` is ``categories.ids[k]``).
        target_generator: makes the training targets of an item (contiguous category ids).
        losses: loss weights and options.
        inference: post-processing settings and the default test-time augmentation.
    """

    def __init__(
        self,
        network: PanopticDeepLabNetwork,
        categories: Categories,
        target_generator: PanopticDeepLabTargetGenerator,
        losses: LossSettings = LossSettings(),
        inference: InferenceSettings = InferenceSettings(),
    ):
        super().__init__(categories)
        self.network = network
        self.target_generator = target_generator
        self.losses = losses
        self.inference = inference
        self.thing_ids = [categories.to_contiguous(i) for i in categories.thing_ids]

    def forward_heads(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """float [B, 3, H, W] RGB 0..255 -> ``sem_seg`` [B, C, H, W] logits, ``center`` [B, 1, H, W],
        ``offset`` [B, 2, H, W] (dy, dx) in pixels."""
        return self.network.forward_heads(images)

    def targets_transform(self) -> AddTargets:
        """The trainer runs this on every training item in its data-loader workers (``data_transform()``)."""
        to_contiguous = {i: self.categories.to_contiguous(i) for i in self.categories.ids}
        return AddTargets(to_contiguous, self.target_generator)

    def forward(self, batch: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Dataset items (``image`` uint8 [3, H, W], ``targets`` from :meth:`data_transform`)
        -> ``{"loss_sem_seg", "loss_center", "loss_offset"}`` and the add-ons' losses, each already weighted."""
        images = pad_images([item["image"] for item in batch]).to(self.device)
        targets = collate_targets(training_targets(batch), ignore_label=IGNORE_LABEL)
        targets = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in targets.items()}
        outputs = self.forward_heads(images)
        settings = self.losses
        losses = panoptic_deeplab_losses(
            outputs,
            targets,
            semantic_weight=settings.semantic_weight,
            center_weight=settings.center_weight,
            offset_weight=settings.offset_weight,
            top_k_percent=settings.top_k_percent,
            ignore_label=IGNORE_LABEL,
            offset_normalizer=settings.offset_normalizer,
        )
        return {**losses, **self.addon_losses(batch, outputs)}

    def predict(
        self,
        images: ImageInput | Sequence[ImageInput],
        *,
        tta_scales: Sequence[float] | None = None,
        tta_flip: bool | None = None,
    ) -> list[PanopticResult]:
        """Panoptic segmentation of one image or several.

        Args:
            images: a path, PIL image, uint8 numpy array [H, W, 3], tensor [3, H, W] or
                [B, 3, H, W] (RGB, 0..255), or a list of these.
            tta_scales, tta_flip: test-time augmentation (multi-scale and horizontal flip,
                as in the original Panoptic-DeepLab code); default: the model's settings
                (``model.panoptic_deeplab.tta_scales`` / ``tta_flip``, a single pass unless set).
                The add-ons that refine then get the averaged heads (:func:`refined_heads`) before
                the grouping, and every add-on may relabel the results after it.

        Returns:
            One result per image, segments carrying dataset category ids; thing segments
            have detectron2's instance score.
        """
        s = self.inference
        scales = s.tta_scales if tta_scales is None else tuple(tta_scales)
        flip = s.tta_flip if tta_flip is None else tta_flip
        results = []
        with inference_mode(self):
            for batch in _same_size_runs(as_image_tensors(images)):
                # one network pass per run of equal-sized images: no padding, so a result does not
                # depend on the batch it came in
                image = torch.stack(batch).to(self.device)
                outputs = self._heads_with_tta(image, scales, flip)
                if self.refines:
                    outputs = refined_heads(image, outputs, self.refined)
                run = panoptic_deeplab_inference(
                    outputs["sem_seg"],
                    outputs["center"],
                    outputs["offset"],
                    thing_ids=self.thing_ids,
                    stuff_area=s.stuff_area,
                    threshold=s.center_threshold,
                    nms_kernel=s.nms_kernel,
                    top_k=s.top_k,
                    category_ids=self.categories.ids,
                    class_vote=s.class_vote,
                )
                results += [self.relabelled(r, {"sem_seg": logits}) for r, logits in zip(run, outputs["sem_seg"], strict=True)]
        return results

    def _heads_with_tta(self, image: torch.Tensor, scales: Sequence[float], flip: bool) -> dict[str, torch.Tensor]:
        """Head outputs for [B, 3, H, W], averaged over scales (and flips) at the input size (see ``tta.py``)."""
        scales = [float(s) for s in scales]
        if is_single_pass(scales, flip):
            return self.forward_heads(image.float())
        passes = tta_passes(scales, flip)
        outputs = []
        for scale, flipped in passes:
            out = self.forward_heads(tta_input(image.float(), scale, flipped))
            outputs.append((out["sem_seg"], out["center"], out["offset"]))
        sem_seg, center, offset = tta_average(outputs, passes, image.shape[-2], image.shape[-1])
        return {"sem_seg": sem_seg, "center": center, "offset": offset}


def refined_heads(
    images: torch.Tensor, heads: dict[str, torch.Tensor], refine: Callable[[torch.Tensor, dict[str, torch.Tensor]], dict[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """The heads after ``refine`` (the add-ons' :meth:`~panopticlab.models.base.AddOn.refine`), which sees
    them in a form that may be averaged over pixels: ``semantic``, the softmax probabilities of
    ``sem_seg`` (returned as their logarithms, so that its argmax and softmax keep their meaning), and
    ``centres``, the points the offsets vote for (pixel position + offset, constant over an instance,
    so an average inside it keeps its centre). The centre heatmap is kept as it is.

    Args:
        images: [B, 3, H, W] RGB 0..255, the network's input.
        heads: ``sem_seg`` float [B, C, H, W] logits, ``center`` [B, 1, H, W], ``offset`` [B, 2, H, W] (dy, dx).

    Returns:
        the heads, ``sem_seg`` and ``offset`` replaced (float32).
    """
    rows, columns = (torch.arange(n, device=heads["offset"].device, dtype=torch.float32) for n in heads["offset"].shape[-2:])
    position = torch.stack(torch.meshgrid(rows, columns, indexing="ij"))[None]  # [1, 2, H, W], (y, x)
    maps = refine(images, {"semantic": torch.softmax(heads["sem_seg"].float(), dim=1), "centres": heads["offset"].float() + position})
    return {**heads, "sem_seg": maps["semantic"].clamp(min=1e-30).log(), "offset": maps["centres"] - position}


def _same_size_runs(images: Sequence[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Consecutive images [3, H, W] of the same size, grouped (the order is kept)."""
    runs: list[list[torch.Tensor]] = []
    for image in images:
        if runs and runs[-1][0].shape == image.shape:
            runs[-1].append(image)
        else:
            runs.append([image])
    return runs


def build_panoptic_deeplab_model(
    config: PanopticDeepLabConfig, categories: Categories, *, crop_size: tuple[int, int] | None = None
) -> PanopticDeepLab:
    """The model of a ``model.panoptic_deeplab`` config section for these categories.

    Every choice that depends on the section is made here, once. ``crop_size`` is the training
    crop (``input.crop_size``): the ASPP pooling kernel of ``aspp_pooling: crop`` follows it
    unless ``aspp_pooling_crop_size`` is set. Backbone weights are loaded when the section names them.
    """
    check_section(config, "model.panoptic_deeplab.")
    pool_crop = None
    if config.aspp_pooling == "crop":
        pool_crop = config.aspp_pooling_crop_size or crop_size
        if pool_crop is None:
            raise ValueError("aspp_pooling: crop needs the training crop size (crop_size=) or aspp_pooling_crop_size")
    network = build_panoptic_deeplab(
        len(categories),
        backbone=config.backbone,
        output_stride=config.output_stride,
        head_variant=config.head_variant,
        center_head_variant=config.center_head_variant,
        low_level_features=config.low_level_features,
        aspp_feature=config.aspp_feature,
        semantic_projection_channels=config.semantic_projection_channels,
        instance_projection_channels=config.instance_projection_channels,
        semantic_decoder_channels=config.semantic_decoder_channels,
        instance_decoder_channels=config.instance_decoder_channels,
        semantic_head_channels=config.semantic_head_channels,
        instance_head_channels=config.instance_head_channels,
        aspp_channels=config.aspp_channels,
        aspp_dilations=config.aspp_dilations,
        aspp_depthwise_separable=config.aspp_depthwise_separable,
        aspp_pooling_crop_size=None if pool_crop is None else tuple(pool_crop),
        aspp_dropout=config.aspp_dropout,
        norm=config.norm,
        pixel_mean=config.pixel_mean or PIXEL_MEAN,
        pixel_std=config.pixel_std or PIXEL_STD,
        size_divisibility=config.size_divisibility,
    )
    if config.backbone_weights:
        load_backbone_weights(network.backbone, config.backbone_weights)
    target_generator = PanopticDeepLabTargetGenerator(
        ignore_label=IGNORE_LABEL,
        thing_ids=[categories.to_contiguous(i) for i in categories.thing_ids],
        sigma=config.sigma,
        ignore_stuff_in_offset=config.ignore_stuff_in_offset,
        small_instance_area=config.small_instance_area,
        small_instance_weight=config.small_instance_weight,
        ignore_crowd_in_semantic=config.ignore_crowd_in_semantic,
        ignore_crowd_in_center=config.ignore_crowd_in_center,
        center_rounding=config.center_rounding,
        offset_to_peak=config.offset_to_peak,
    )
    losses = LossSettings(
        semantic_weight=config.semantic_loss_weight,
        center_weight=config.center_loss_weight,
        offset_weight=config.offset_loss_weight,
        top_k_percent=config.top_k_percent,
        offset_normalizer=config.offset_normalizer,
    )
    inference = InferenceSettings(
        center_threshold=config.center_threshold,
        nms_kernel=config.nms_kernel,
        top_k=config.top_k,
        stuff_area=config.stuff_area,
        class_vote=config.class_vote,
        tta_scales=tuple(config.tta_scales),
        tta_flip=config.tta_flip,
    )
    return PanopticDeepLab(network, categories, target_generator, losses, inference)
