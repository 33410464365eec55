"""Segment lists (COCO ``segments_info`` dicts or :class:`~panopticlab.structures.Segment`s) as arrays.

The checks that do not need pixels happen here, with messages naming the file/image (``where``)
and the segment: required keys, id 0 (VOID) listed as a segment, a segment id listed twice, a
category that the ground truth does not list.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from panopticlab.errors import InputError
from panopticlab.evaluation.categories import CategoryTable
from panopticlab.structures import Segment


@dataclass(frozen=True)
class SegmentTable:
    """The segments of one image, sorted by id.

    Attributes:
        ids: int64 [S], ascending, all > 0.
        category: int64 [S], category index (``categories.unknown`` for an unlisted category,
            which only a ground truth checked with ``check_gt=False`` may have).
        iscrowd: bool [S].
        area: float64 [S], the listed ``area`` (ground truth; panopticapi trusts it over the
            PNG); NaN where none was given.
        position: int64 [S], each segment's position in the input list.
        score: float64 [S], the listed ``score``; NaN where none was given.
    """

    ids: np.ndarray
    category: np.ndarray
    iscrowd: np.ndarray
    area: np.ndarray
    position: np.ndarray
    score: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def _fields(segment: Any) -> tuple[Any, Any, Any, Any, Any]:
    """(id, category_id, area, iscrowd, score) of a dict or a Segment; None where absent."""
    if isinstance(segment, Segment):
        return segment.id, segment.category_id, segment.area, segment.iscrowd, segment.score
    if type(segment) is dict or isinstance(segment, Mapping):  # the dict test first: much faster
        return (
            segment.get("id"),
            segment.get("category_id"),
            segment.get("area"),
            segment.get("iscrowd"),
            segment.get("score"),
        )
    raise InputError(f"expected a segments_info dict or a Segment, got {type(segment).__name__}")


def _is_int(value: Any) -> bool:
    return type(value) is int or (isinstance(value, (int, np.integer)) and not isinstance(value, bool))


def segment_table(
    segments: Iterable[Any],
    categories: CategoryTable,
    *,
    ground_truth: bool,
    allow_unknown_category: bool = False,
    where: str,
) -> SegmentTable:
    """Validate a segment list and turn it into a :class:`SegmentTable`.

    Args:
        segments: ``segments_info`` dicts or :class:`Segment` objects.
        categories: the categories being scored.
        ground_truth: ground truth requires ``area`` and ``iscrowd``; predictions need neither
            (their area comes from the pixels and ``iscrowd`` is ignored, as in panopticapi).
        allow_unknown_category: let a ground-truth category outside ``categories`` through
            (panopticapi counts it and reports nothing); predictions never may.
        where: file and image, for error messages.
    """
    index = categories.index
    rows: list[tuple[int, int, float, bool, float]] = []
    seen: set[int] = set()
    for position, segment in enumerate(segments):
        seg_id, cat_id, area, iscrowd, score = _fields(segment)
        if not _is_int(seg_id):
            raise InputError(f"{where}: segments_info entry #{position} has no integer 'id' ({segment!r})")
        if seg_id <= 0:
            raise InputError(f"{where}: segment id {seg_id} is listed, but id 0 means VOID and ids must be > 0")
        if seg_id in seen:
            raise InputError(f"{where}: segment id {seg_id} is listed twice")
        seen.add(seg_id)
        if not _is_int(cat_id):
            raise InputError(f"{where}: segment {seg_id} has no integer 'category_id'")
        cat = index.get(int(cat_id))
        if cat is None:
            if not (ground_truth and allow_unknown_category):
                side = "ground-truth" if ground_truth else "predicted"
                raise InputError(f"{where}: {side} segment {seg_id} has unknown category_id {cat_id}")
            cat = categories.unknown
        if ground_truth:
            if area is None or iscrowd is None:
                raise InputError(f"{where}: ground-truth segment {seg_id} needs 'area' and 'iscrowd'")
            if not isinstance(area, (int, float, np.number)) or isinstance(area, bool) or not math.isfinite(area):
                raise InputError(f"{where}: ground-truth segment {seg_id} has a non-numeric area {area!r}")
        rows.append(
            (
                int(seg_id),
                cat,
                math.nan if area is None else float(area),
                bool(iscrowd == 1),  # panopticapi tests iscrowd == 1
                math.nan if score is None else float(score),
            )
        )

    order = sorted(range(len(rows)), key=lambda k: rows[k][0])
    columns = list(zip(*(rows[k] for k in order))) if rows else [[]] * 5
    return SegmentTable(
        ids=np.asarray(columns[0], dtype=np.int64),
        category=np.asarray(columns[1], dtype=np.int64),
        area=np.asarray(columns[2], dtype=np.float64),
        iscrowd=np.asarray(columns[3], dtype=bool),
        score=np.asarray(columns[4], dtype=np.float64),
        position=np.asarray(order, dtype=np.int64),
    )
