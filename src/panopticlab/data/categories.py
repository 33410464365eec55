"""The category sets panopticlab knows by name: ``shapes``, ``cityscapes`` and ``coco``.

A config names its categories with one of these names or with the path of a JSON file that
holds them (a COCO panoptic JSON, or just a list of category dicts).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from panopticlab.data.coco_panoptic import Categories
from panopticlab.errors import InputError
from panopticlab.fileio import read_json

# The 19 evaluated Cityscapes classes (cityscapesscripts' labels.py): label id, name, colour.
# Contiguous order (increasing id) is the trainId order 0..18.
_CITYSCAPES = [
    (7, "road", (128, 64, 128), False),
    (8, "sidewalk", (244, 35, 232), False),
    (11, "building", (70, 70, 70), False),
    (12, "wall", (102, 102, 156), False),
    (13, "fence", (190, 153, 153), False),
    (17, "pole", (153, 153, 153), False),
    (19, "traffic light", (250, 170, 30), False),
    (20, "traffic sign", (220, 220, 0), False),
    (21, "vegetation", (107, 142, 35), False),
    (22, "terrain", (152, 251, 152), False),
    (23, "sky", (70, 130, 180), False),
    (24, "person", (220, 20, 60), True),
    (25, "rider", (255, 0, 0), True),
    (26, "car", (0, 0, 142), True),
    (27, "truck", (0, 0, 70), True),
    (28, "bus", (0, 60, 100), True),
    (31, "train", (0, 80, 100), True),
    (32, "motorcycle", (0, 0, 230), True),
    (33, "bicycle", (119, 11, 32), True),
]
CITYSCAPES_CATEGORIES = [
    {"id": i, "name": name, "color": list(color), "isthing": int(thing), "supercategory": "thing" if thing else "stuff"}
    for i, name, color, thing in _CITYSCAPES
]


def load_categories(name_or_path: str | os.PathLike) -> Categories:
    """``"shapes"``, ``"cityscapes"``, ``"coco"``, or a JSON file with a ``categories`` list (or a bare list)."""
    if name_or_path == "shapes":
        from panopticlab.data.synthetic import SHAPES_CATEGORIES

        return Categories(SHAPES_CATEGORIES, source="shapes")
    if name_or_path == "cityscapes":
        return Categories(CITYSCAPES_CATEGORIES, source="cityscapes")
    if name_or_path == "coco":
        text = resources.files("panopticlab.data").joinpath("resources/panoptic_coco_categories.json")
        return Categories(read_json(Path(str(text))), source="coco")
    path = Path(name_or_path)
    document = read_json(path)
    categories = document.get("categories") if isinstance(document, dict) else document
    if not isinstance(categories, list):
        raise InputError(f"{path}: expected a list of categories or a JSON object with 'categories'")
    return Categories(categories, source=path)
