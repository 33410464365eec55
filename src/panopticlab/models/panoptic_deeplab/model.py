"""Panoptic-DeepLab as panopticlab's trainers and tools see every model:

* ``forward(batch)``: a list of dataset items -> a dict of named, weighted losses;
* ``predict(images)``: images (paths, PIL, numpy, tensors) -> one :class:`PanopticResult` each;
* ``forward_heads(images)``: float [B, 3, H, W] RGB 0..255 -> the raw head outputs.

The pieces it joins are each in their own module: ``network.py`` (backbone, ASPP,
decoders, heads), ``targets.py``, ``losses.py`` and ``postprocess.py``.
"""

from __future__ import annotations

import os
from typing import Any, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from panopticlab.data.coco_panoptic import Categories
from panopticlab.data.dataset import read_image
from panopticlab.data.transforms import PAD_COLOR
from panopticlab.models.panoptic_deeplab.config import PanopticDeepLabConfig
from panopticlab.models.panoptic_deeplab.losses import panoptic_deeplab_losses
from panopticlab.models.panoptic_deeplab.network import PanopticDeepLabNetwork, build_panoptic_deeplab
from panopticlab.models.panoptic_deeplab.postprocess import panoptic_deeplab_inference
from panopticlab.models.panoptic_deeplab.targets import (
    AddTargets,
    PanopticDeepLabTargetGenerator,
    collate_targets,
    targets_from_panoptic,
)
from panopticlab.structures import PanopticResult

IGNORE_LABEL = 255
ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray, torch.Tensor]


class PanopticDeepLab(nn.Module):
    """Network + target generator + losses + post-processing.

    Args:
        network: the backbone/decoders/heads, with ``forward_heads``.
        categories: the dataset's categories (contiguous id ``k`` is ``categories.ids[k]``).
        config: targets, losses and post-processing settings.
    """

    def __init__(self, network: PanopticDeepLabNetwork, categories: Categories, config: PanopticDeepLabConfig):
        super().__init__()
        self.network = network
        self.categories = categories
        self.config = config
        self.thing_ids = [categories.to_contiguous(i) for i in categories.thing_ids]
        self.target_generator = PanopticDeepLabTargetGenerator(
            ignore_label=IGNORE_LABEL,
            thing_ids=self.thing_ids,
            sigma=config.sigma,
            ignore_stuff_in_offset=config.ignore_stuff_in_offset,
            small_instance_area=config.small_instance_area,
            small_instance_weight=config.small_instance_weight,
            ignore_crowd_in_semantic=config.ignore_crowd_in_semantic,
            ignore_crowd_in_center=config.ignore_crowd_in_center,
        )

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward_heads(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """float [B, 3, H, W] RGB 0..255 -> ``sem_seg`` [B, C, H, W] logits, ``center`` [B, 1, H, W],
        ``offset`` [B, 2, H, W] (dy, dx) in pixels."""
        return self.network.forward_heads(images)

    def make_targets(self, item: dict[str, Any]) -> dict[str, Any]:
        """Training targets of one dataset item (``data_transform`` does this in loader workers)."""
        return targets_from_panoptic(item["panoptic"], self.categories.to_contiguous, self.target_generator)

    def data_transform(self) -> AddTargets:
        """The trainer runs this on every training item in its data-loader workers."""
        return AddTargets({i: self.categories.to_contiguous(i) for i in self.categories.ids}, self.target_generator)

    def forward(self, batch: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Dataset items (``image`` uint8 [3, H, W], ``panoptic``; ``targets`` if made ahead)
        -> ``{"loss_sem_seg", "loss_center", "loss_offset"}``, each already weighted."""
        images = pad_images([item["image"] for item in batch]).to(self.device)
        targets = collate_targets(
            [item["targets"] if "targets" in item else self.make_targets(item) for item in batch],
            ignore_label=IGNORE_LABEL,
        )
        targets = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in targets.items()}
        outputs = self.forward_heads(images)
        c = self.config
        return panoptic_deeplab_losses(
            outputs,
            targets,
            semantic_weight=c.semantic_loss_weight,
            center_weight=c.center_loss_weight,
            offset_weight=c.offset_loss_weight,
            top_k_percent=c.top_k_percent,
            ignore_label=IGNORE_LABEL,
            offset_normalizer=c.offset_normalizer,
        )

    @torch.no_grad()
    def predict(
        self,
        images: ImageInput | Sequence[ImageInput],
        *,
        tta_scales: Sequence[float] = (1.0,),
        tta_flip: bool = False,
    ) -> list[PanopticResult]:
        """Panoptic segmentation of one image or several.

        Args:
            images: a path, PIL image, uint8 numpy array [H, W, 3], tensor [3, H, W] or
                [B, 3, H, W] (RGB, 0..255), or a list of these.
            tta_scales, tta_flip: test-time augmentation (multi-scale and horizontal flip,
                as in the original Panoptic-DeepLab code); the default is a single pass.

        Returns:
            One result per image, segments carrying dataset category ids; thing segments
            have detectron2's instance score.
        """
        was_training = self.training
        self.eval()
        try:
            results = []
            for image in as_image_tensors(images):
                outputs = self._heads_with_tta(image[None].to(self.device), tta_scales, tta_flip)
                results += panoptic_deeplab_inference(
                    outputs["sem_seg"],
                    outputs["center"],
                    outputs["offset"],
                    thing_ids=self.thing_ids,
                    stuff_area=self.config.stuff_area,
                    threshold=self.config.center_threshold,
                    nms_kernel=self.config.nms_kernel,
                    top_k=self.config.top_k,
                    category_ids=self.categories.ids,
                )
            return results
        finally:
            self.train(was_training)

    def _heads_with_tta(self, image: torch.Tensor, scales: Sequence[float], flip: bool) -> dict[str, torch.Tensor]:
        """Head outputs for [1, 3, H, W], averaged over scales (and flips) at the input size.

        Semantic probabilities, centre heatmaps and offsets are averaged; offsets are divided
        by their scale, and the x offset of a flipped pass changes sign. ``sem_seg`` is
        returned as log-probabilities (argmax and softmax are those of the average).
        """
        if tuple(scales) == (1.0,) and not flip:
            return self.forward_heads(image.float())
        h, w = image.shape[-2:]

        def back(t: torch.Tensor) -> torch.Tensor:
            return F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)

        probs = centers = offsets = 0.0
        passes = 0
        for scale in scales:
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            scaled = F.interpolate(image.float(), size=size, mode="bilinear", align_corners=False)
            for flipped in (False, True) if flip else (False,):
                out = self.forward_heads(scaled.flip(-1) if flipped else scaled)
                sem, center, offset = out["sem_seg"].softmax(1), out["center"], out["offset"]
                if flipped:
                    sem, center, offset = sem.flip(-1), center.flip(-1), offset.flip(-1)
                    offset = offset * torch.tensor([1.0, -1.0], device=offset.device).view(1, 2, 1, 1)
                probs = probs + back(sem)
                centers = centers + back(center)
                offsets = offsets + back(offset) / scale
                passes += 1
        return {"sem_seg": (probs / passes).clamp_min(1e-12).log(), "center": centers / passes, "offset": offsets / passes}


def build_panoptic_deeplab_model(config: PanopticDeepLabConfig, categories: Categories) -> PanopticDeepLab:
    """The model of a ``model.panoptic_deeplab`` config section for these categories."""
    network = build_panoptic_deeplab(
        len(categories),
        backbone=config.backbone,
        output_stride=config.output_stride,
        head_variant=config.head_variant,
        center_head_variant=config.center_head_variant,
        semantic_projection_channels=config.semantic_projection_channels,
        instance_projection_channels=config.instance_projection_channels,
        semantic_decoder_channels=config.semantic_decoder_channels,
        instance_decoder_channels=config.instance_decoder_channels,
        semantic_head_channels=config.semantic_head_channels,
        instance_head_channels=config.instance_head_channels,
        aspp_channels=config.aspp_channels,
        aspp_dilations=config.aspp_dilations,
        aspp_pooling_crop_size=config.aspp_pooling_crop_size,
        aspp_dropout=config.aspp_dropout,
        size_divisibility=config.size_divisibility,
    )
    return PanopticDeepLab(network, categories, config)


def pad_images(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack uint8/float images [3, H, W] into float [B, 3, Hmax, Wmax], padding bottom/right
    with the mean colour (zero after the network's normalisation), as the targets are padded."""
    h = max(im.shape[-2] for im in images)
    w = max(im.shape[-1] for im in images)
    batch = torch.tensor(PAD_COLOR, dtype=torch.float32).view(1, 3, 1, 1).repeat(len(images), 1, h, w)
    for k, im in enumerate(images):
        batch[k, :, : im.shape[-2], : im.shape[-1]] = im
    return batch


def as_image_tensors(images: ImageInput | Sequence[ImageInput]) -> list[torch.Tensor]:
    """Whatever a user hands to ``predict`` -> a list of float [3, H, W] RGB 0..255 tensors."""
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        return [im.float() for im in images]
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray, torch.Tensor)):
        images = [images]
    tensors = []
    for image in images:
        if isinstance(image, (str, os.PathLike)):
            image = read_image(image)
        if isinstance(image, Image.Image):
            image = np.asarray(image.convert("RGB"))
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"expected an RGB array [H, W, 3], got shape {image.shape}")
            image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected an RGB tensor [3, H, W], got shape {tuple(image.shape)}")
        tensors.append(image.float())
    return tensors
