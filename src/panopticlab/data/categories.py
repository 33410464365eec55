"""The category sets panopticlab knows by name: ``shapes``, ``cityscapes`` and ``coco``.

A config names its categories with one of these names or with the path of a JSON file that
holds them (a COCO panoptic JSON, or just a list of category dicts).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from panopticlab.data.cityscapes import cityscapes_categories
from panopticlab.data.coco_panoptic import Categories
from panopticlab.data.synthetic import SHAPES_CATEGORIES
from panopticlab.errors import InputError
from panopticlab.fileio import read_json

# The 19 evaluated Cityscapes classes, by label id (7..33), from the label table in
# data/cityscapes.py: the categories `prepare cityscapes` writes. Contiguous order (increasing
# id) is the trainId order 0..18.
CITYSCAPES_CATEGORIES = cityscapes_categories()


def load_categories(name_or_path: str | os.PathLike) -> Categories:
    """``"shapes"``, ``"cityscapes"``, ``"coco"``, or a JSON file with a ``categories`` list (or a bare list)."""
    if name_or_path == "shapes":
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
