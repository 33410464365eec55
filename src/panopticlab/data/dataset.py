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
from pycocotools import mask as mask_utils

from panopticlab.data.coco_panoptic import load_panoptic_json, read_panoptic_annotation
from panopticlab.errors import InputError
from panopticlab.fileio import read_json
from panopticlab.masks import masks_to_boxes

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
            self._instances = _group_instances(self.instances_json, self.categories)

    @classmethod
    def from_split_folder(cls, split_folder: str | os.PathLike, **kwargs: Any) -> "CocoPanopticDataset":
        """The layout the shapes generator writes: ``images/``, ``panoptic/``, ``panoptic.json``
        and, when present, ``instances.json``."""
        split_folder = Path(split_folder)
        if not (split_folder / "panoptic.json").is_file():
            raise InputError(f"{split_folder}: not a dataset split (no panoptic.json)")
        instances = split_folder / "instances.json"
        return cls(
            split_folder / "images",
            split_folder / "panoptic.json",
            split_folder / "panoptic",
            instances_json=instances if instances.is_file() else None,
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
            item["instances"] = _instance_tensors(
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


def _group_instances(instances_json: Path, categories) -> dict[Any, list[dict[str, Any]]]:
    raw = read_json(instances_json)
    if not isinstance(raw, dict) or not isinstance(raw.get("annotations"), list):
        raise InputError(f"{instances_json}: expected a COCO detection JSON with an 'annotations' list")
    grouped: dict[Any, list[dict[str, Any]]] = {}
    for k, ann in enumerate(raw["annotations"]):
        if not isinstance(ann, dict) or not {"image_id", "category_id", "segmentation"} <= ann.keys():
            raise InputError(f"{instances_json}: annotations[{k}] needs 'image_id', 'category_id' and 'segmentation'")
        if ann["category_id"] not in categories:
            raise InputError(f"{instances_json}: annotation {ann.get('id', k)} has unknown category {ann['category_id']}")
        grouped.setdefault(ann["image_id"], []).append(ann)
    return grouped


def _decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """COCO RLE (compressed or not) or polygons -> bool [H, W]."""
    if isinstance(segmentation, list):  # polygons
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    return mask_utils.decode(rle).astype(bool)


def _instance_tensors(annotations, height: int, width: int, categories, source: Path | None) -> dict[str, torch.Tensor]:
    masks = np.zeros((len(annotations), height, width), dtype=bool)
    for k, ann in enumerate(annotations):
        try:
            masks[k] = _decode_segmentation(ann["segmentation"], height, width)
        except (ValueError, TypeError, KeyError) as e:
            raise InputError(f"{source}: annotation {ann.get('id', k)} has an unreadable segmentation ({e})") from None
    masks = torch.from_numpy(masks)
    return {
        "masks": masks,
        "boxes": masks_to_boxes(masks),
        "labels": torch.tensor([categories.to_contiguous(a["category_id"]) for a in annotations], dtype=torch.int64),
        "iscrowd": torch.tensor([bool(a.get("iscrowd", 0)) for a in annotations], dtype=torch.bool),
        "depth": torch.tensor([a.get("depth", -1) for a in annotations], dtype=torch.int64),
        "panoptic_segment_ids": torch.tensor(
            [a.get("panoptic_segment_id") or 0 for a in annotations], dtype=torch.int64
        ),
    }
