"""The category list an evaluation scores, in the order of the ground truth's ``categories``
(the order in which panopticapi sums the per-category scores)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterable, Mapping

import numpy as np

from panopticlab.errors import InputError


@dataclass(frozen=True)
class CategoryTable:
    """Dataset categories, indexed 0..C-1 in ground-truth JSON order.

    Every per-category array of the evaluation has C + 1 entries: index C (``unknown``)
    collects ground-truth segments whose category is not in the list, which panopticapi counts
    but never reports.

    Attributes:
        ids: the dataset category ids (e.g. COCO 1..200, Cityscapes 7..33).
        names: one name per category.
        isthing: bool array [C].
    """

    ids: tuple[int, ...]
    names: tuple[str, ...]
    isthing: np.ndarray

    @classmethod
    def from_coco(cls, categories: Iterable[Mapping[str, Any]], *, where: str = "categories") -> "CategoryTable":
        """Build from COCO ``categories`` entries (each needs ``id`` and ``isthing``; ``name`` optional)."""
        ids: list[int] = []
        names: list[str] = []
        isthing: list[bool] = []
        for k, entry in enumerate(categories):
            try:
                cat_id, thing = entry["id"], entry["isthing"]
            except (KeyError, TypeError):
                raise InputError(f"{where}: category #{k} needs 'id' and 'isthing' ({entry!r})") from None
            if not isinstance(cat_id, int) or isinstance(cat_id, bool):
                raise InputError(f"{where}: category id {cat_id!r} is not an integer")
            if cat_id in ids:
                raise InputError(f"{where}: category id {cat_id} is listed twice")
            ids.append(cat_id)
            names.append(str(entry.get("name", cat_id)))
            isthing.append(thing == 1)  # panopticapi's test: anything but 1 (or True) is stuff
        if not ids:
            raise InputError(f"{where}: no categories")
        return cls(tuple(ids), tuple(names), np.asarray(isthing, dtype=bool))

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def unknown(self) -> int:
        """The index that collects segments of unlisted categories."""
        return len(self.ids)

    @cached_property
    def index(self) -> dict[int, int]:
        """Category id -> index."""
        return {c: k for k, c in enumerate(self.ids)}

    def to_coco(self) -> list[dict[str, Any]]:
        return [{"id": c, "name": n, "isthing": int(t)} for c, n, t in zip(self.ids, self.names, self.isthing.tolist())]


def as_categories(categories: Any) -> CategoryTable:
    """Accept a :class:`CategoryTable`, a list of COCO category dicts, or
    :class:`panopticlab.data.coco_panoptic.Categories` (anything with ``ids`` and ``[id]``)."""
    if isinstance(categories, CategoryTable):
        return categories
    if hasattr(categories, "ids") and hasattr(categories, "__getitem__"):
        categories = [categories[i] for i in categories.ids]
    return CategoryTable.from_coco(categories)
