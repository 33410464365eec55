"""A torch ``Dataset`` over a folder in COCO panoptic format.

Each item is a dict::

    {
        "image":         uint8 tensor [3, H, W] (RGB),
        "image_id":      the JSON image id (int or str),
        "file_name":     the image's file name,
        "panoptic":      PanopticResult (int32 id map [H, W], 0 = VOID, + segments),
        "segment_labels": {segment id: contiguous category id},
        "instances":     optional, when an instances JSON is given:
            "masks":        bool tensor [N, H, W]  (amodal where the file has amodal masks),
            "boxes":        float32 tensor [N, 4]  (x0, y0, x1, y1), x1 = x + w,
            "labels":       int64 tensor [N]       contiguous category ids,
            "iscrowd":      bool tensor [N],
            "depth":        int64 tensor [N]       (0 = front; -1 where the file has none),
            "panoptic_segment_ids": int64 tensor [N] (0 where none, e.g. fully hidden),
    }

``collate_panoptic`` batches items as a list (images differ in size before transforms).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from panopticlab.data.coco_instances import instance_tensors, read_instances_json
from panopticlab.data.coco_panoptic import load_panoptic_json, read_panoptic_annotation
from panopticlab.errors import InputError

Item = dict[str, Any]


class CocoPanopticDataset(torch.utils.data.Dataset):
    """Images + COCO panoptic ground truth (+ optional COCO instance annotations).

    Args:
        image_folder: folder of the images named by ``images[].file_name``.
        panoptic_json: the COCO panoptic JSON file.
        panoptic_folder: folder of the RGB id PNGs.
        instances_json: optional COCO detection-format JSON (RLE or polygon masks) whose
            ``image_id``s match; extra per-annotation keys ``depth`` and
            ``panoptic_segment_id`` are read when present (the shapes dataset writes them).
        transforms: optional ``callable(item) -> item`` applied last.
        strict: pass ``False`` to turn a JSON ``area`` that disagrees with the PNG into a warning.
    """

    def __init__(
        self,
        image_folder: str | os.PathLike,
        panoptic_json: str | os.PathLike,
        panoptic_folder: str | os.PathLike,
        instances_json: str | os.PathLike | None = None,
        transforms: Callable[[Item], Item] | None = None,
        strict: bool = True,
    ):
        self.image_folder = Path(image_folder)
        self.panoptic_folder = Path(panoptic_folder)
        self.panoptic = load_panoptic_json(panoptic_json)
        self.categories = self.panoptic.categories
        self.transforms = transforms
        self.strict = strict
        self.image_ids = [i for i in self.panoptic.image_ids if i in self.panoptic.annotations]
        self.instances_json = Path(instances_json) if instances_json is not None else None
        self._instances: dict[Any, list[dict[str, Any]]] | None = None
        if self.instances_json is not None:
            self._instances = read_instances_json(self.instances_json, self.categories)

    @classmethod
    def from_split_folder(
        cls, split_folder: str | os.PathLike, *, instances: bool = True, **kwargs: Any
    ) -> "CocoPanopticDataset":
        """The layout the shapes generator writes: ``images/``, ``panoptic/``, ``panoptic.json``
        and, when present (and ``instances``), ``instances.json``."""
        split_folder = Path(split_folder)
        if not (split_folder / "panoptic.json").is_file():
            raise InputError(f"{split_folder}: not a dataset split (no panoptic.json)")
        instances_json = split_folder / "instances.json"
        return cls(
            split_folder / "images",
            split_folder / "panoptic.json",
            split_folder / "panoptic",
            instances_json=instances_json if instances and instances_json.is_file() else None,
            **kwargs,
        )

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_path(self, file_name: str) -> Path:
        """``image_folder / file_name``, or for a Cityscapes image absent there, its place in
        ``leftImg8bit/<split>/<city>/``: cityscapesscripts' panoptic JSON names the image
        ``<city>_<seq>_<frame>_gtFine_leftImg8bit.png``, without the city folder and with a
        ``_gtFine`` that the image file does not have."""
        path = self.image_folder / file_name
        if not path.exists() and file_name.endswith("_leftImg8bit.png"):
            city_folder = self.image_folder / file_name.split("_")[0]
            for name in (file_name.replace("_gtFine_leftImg8bit.png", "_leftImg8bit.png"), file_name):
                if (city_folder / name).exists():
                    return city_folder / name
        return path

    def __getitem__(self, index: int) -> Item:
        image_id = self.image_ids[index]
        image_entry = self.panoptic.image(image_id)
        image_path = self.image_path(image_entry["file_name"])
        image = read_image(image_path)
        panoptic = read_panoptic_annotation(self.panoptic, image_id, self.panoptic_folder, strict=self.strict)
        if image.shape[:2] != panoptic.id_map.shape:
            raise InputError(
                f"{image_path}: image is {image.shape[1]}x{image.shape[0]} "
                f"but its panoptic PNG is {panoptic.width}x{panoptic.height}"
            )
        item: Item = {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "image_id": image_id,
            "file_name": image_entry["file_name"],
            "panoptic": panoptic,
            "segment_labels": {s.id: self.categories.to_contiguous(s.category_id) for s in panoptic.segments},
        }
        if self._instances is not None:
            item["instances"] = instance_tensors(
                self._instances.get(image_id, []), panoptic.height, panoptic.width, self.categories, self.instances_json
            )
        if self.transforms is not None:
            item = self.transforms(item)
        return item


def collate_panoptic(items: list[Item]) -> list[Item]:
    """Batch as a plain list: images of different sizes cannot be stacked before transforms."""
    return items


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as uint8 RGB [H, W, 3]."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read the image ({e})") from None
