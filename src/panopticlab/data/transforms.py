"""Training augmentations that move the image and its panoptic ground truth together.

Each transform takes and returns a dataset item (see :mod:`panopticlab.data.dataset`):
``item["image"]`` uint8 [3, H, W], ``item["panoptic"]`` a :class:`PanopticResult` and,
when present, ``item["instances"]`` with ``masks`` bool [N, H, W] and ``boxes`` [N, 4].
The image is resized bilinearly, id maps and masks with nearest neighbour; after a
geometric change each segment's area and bbox are recomputed from its pixels, and a
segment that left the picture is dropped (its instance keeps an empty mask).

The recipe of Panoptic-DeepLab (detectron2): random scale 0.5-2.0, random crop (padding
images with the mean colour and labels with VOID), random horizontal flip.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from panopticlab.masks import masks_to_boxes
from panopticlab.structures import PanopticResult, segment_stats

Item = dict[str, Any]

#: detectron2's pixel mean (RGB), the padding colour: zero once the model normalises.
PAD_COLOR = (124, 116, 104)


class Compose:
    def __init__(self, transforms: Sequence[Callable[[Item], Item]]):
        self.transforms = list(transforms)

    def __call__(self, item: Item) -> Item:
        for t in self.transforms:
            item = t(item)
        return item


class RandomScale:
    """Resize by a factor drawn uniformly from ``[min_scale, max_scale]``."""

    def __init__(self, min_scale: float = 0.5, max_scale: float = 2.0):
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        self.min_scale, self.max_scale = min_scale, max_scale

    def __call__(self, item: Item) -> Item:
        scale = random.uniform(self.min_scale, self.max_scale)
        h, w = item["image"].shape[-2:]
        return resize(item, (max(1, round(h * scale)), max(1, round(w * scale))))


class RandomCrop:
    """Crop ``size = (h, w)`` at a random place, padding bottom/right first where the
    image is smaller (as detectron2 does): the image with :data:`PAD_COLOR`, labels with VOID."""

    def __init__(self, size: tuple[int, int]):
        self.size = (int(size[0]), int(size[1]))

    def __call__(self, item: Item) -> Item:
        ch, cw = self.size
        h, w = item["image"].shape[-2:]
        if h < ch or w < cw:
            item = pad(item, (max(ch, h), max(cw, w)))
            h, w = item["image"].shape[-2:]
        top = random.randint(0, h - ch)
        left = random.randint(0, w - cw)
        return crop(item, top, left, ch, cw)


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, item: Item) -> Item:
        return hflip(item) if random.random() < self.p else item


def training_transforms(crop_size: tuple[int, int], min_scale: float = 0.5, max_scale: float = 2.0, flip: bool = True) -> Compose:
    """Panoptic-DeepLab's training augmentation."""
    steps: list[Callable[[Item], Item]] = [RandomScale(min_scale, max_scale), RandomCrop(crop_size)]
    if flip:
        steps.append(RandomHorizontalFlip())
    return Compose(steps)


# --- the operations, each applied to every spatial field of an item ---


def resize(item: Item, size: tuple[int, int]) -> Item:
    """Resize to ``size = (h, w)``."""
    image = TF.resize(item["image"], list(size), interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return _apply(item, image, lambda m: _nearest(m, size))


def pad(item: Item, size: tuple[int, int]) -> Item:
    """Pad at the bottom and right to ``size = (h, w)``."""
    h, w = item["image"].shape[-2:]

    def paste(m: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
        background[..., :h, :w] = m
        return background

    fill = torch.tensor(PAD_COLOR, dtype=torch.uint8).view(3, 1, 1).expand(3, *size).clone()
    image = paste(item["image"], fill)
    return _apply(item, image, lambda m: paste(m, m.new_zeros((*m.shape[:-2], *size))))


def crop(item: Item, top: int, left: int, height: int, width: int) -> Item:
    image = item["image"][..., top : top + height, left : left + width]
    return _apply(item, image, lambda m: m[..., top : top + height, left : left + width])


def hflip(item: Item) -> Item:
    return _apply(item, item["image"].flip(-1), lambda m: m.flip(-1))


def _nearest(m: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of an integer or bool map [..., H, W]."""
    dtype = m.dtype
    as_float = m.to(torch.float64 if dtype in (torch.int32, torch.int64) else torch.float32)
    shape = as_float.shape
    flat = as_float.reshape(-1, 1, *shape[-2:]) if as_float.ndim != 2 else as_float[None, None]
    out = torch.nn.functional.interpolate(flat, size=size, mode="nearest-exact")
    return out.reshape(*shape[:-2], *size).to(dtype)


def _apply(item: Item, image: torch.Tensor, spatial: Callable[[torch.Tensor], torch.Tensor]) -> Item:
    """A new item with ``image``, and ``spatial`` applied to the id map and instance masks."""
    item = dict(item)
    item["image"] = image.contiguous()
    id_map = spatial(torch.from_numpy(item["panoptic"].id_map)).numpy()
    item["panoptic"] = _restrict_segments(item["panoptic"], id_map)
    if "instances" in item:
        instances = dict(item["instances"])
        masks = spatial(instances["masks"])
        instances["masks"] = masks
        instances["boxes"] = masks_to_boxes(masks)
        item["instances"] = instances
    return item


def _restrict_segments(result: PanopticResult, id_map: np.ndarray) -> PanopticResult:
    """``result``'s segments on a transformed id map: area and bbox from the new pixels,
    segments with no pixels left dropped."""
    stats = {seg_id: (area, bbox) for seg_id, area, bbox in segment_stats(id_map)}
    segments = [replace(s, area=stats[s.id][0], bbox=stats[s.id][1]) for s in result.segments if s.id in stats]
    return PanopticResult(np.ascontiguousarray(id_map), segments)
