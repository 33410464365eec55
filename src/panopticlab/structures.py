"""The in-memory panoptic result and the id encodings used on disk.

Two encodings of a panoptic segmentation are in use:

* **Segment ids** (COCO panoptic): an int32 map whose values are segment ids, 0 = VOID, plus a
  list of segments that gives each id its category. On disk the map is an RGB PNG with
  ``id = R + 256 * G + 256**2 * B`` (:func:`rgb2id` / :func:`id2rgb`).
* **Label maps** (detectron2, Panoptic-DeepLab): one int map with
  ``category * label_divisor + instance``, instance 0 for stuff and 1, 2, ... for things,
  and ``void_label`` (-1) for VOID (:func:`to_label_map` / :func:`from_label_map`).

:class:`PanopticResult` holds the first; converters to and from the second live here too,
so that both meet in one place.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

#: Segment id of unlabeled pixels in COCO panoptic maps.
VOID_ID = 0
#: Largest id an RGB PNG can hold.
MAX_SEGMENT_ID = 256**3 - 1


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    """RGB PNG colours -> segment ids.

    Args:
        rgb: uint8 array [H, W, 3] (or [H, W, 4]: alpha is ignored, as in panopticapi).

    Returns:
        int32 array [H, W] with ``R + 256 * G + 256**2 * B``.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] not in (3, 4):
        raise ValueError(f"rgb2id expects an [H, W, 3] colour array, got shape {tuple(rgb.shape)}")
    rgb = rgb[..., :3].astype(np.int32, copy=False)
    return rgb[..., 0] + (rgb[..., 1] << 8) + (rgb[..., 2] << 16)


def id2rgb(id_map: np.ndarray) -> np.ndarray:
    """Segment ids -> RGB PNG colours.

    Args:
        id_map: integer array [H, W] with values in ``0 .. 256**3 - 1``.

    Returns:
        uint8 array [H, W, 3].
    """
    id_map = np.asarray(id_map)
    if id_map.size and (id_map.min() < 0 or id_map.max() > MAX_SEGMENT_ID):
        raise ValueError(
            f"segment ids must lie in 0..{MAX_SEGMENT_ID} to fit an RGB PNG, "
            f"got {int(id_map.min())}..{int(id_map.max())}"
        )
    ids = id_map.astype(np.uint32, copy=False)
    rgb = np.empty((*ids.shape, 3), dtype=np.uint8)
    rgb[..., 0] = ids & 0xFF
    rgb[..., 1] = (ids >> 8) & 0xFF
    rgb[..., 2] = (ids >> 16) & 0xFF
    return rgb


@dataclass
class Segment:
    """One segment of a panoptic result, as in COCO's ``segments_info``.

    ``bbox`` is COCO's ``[x, y, width, height]`` of the segment's pixels, with
    ``width = x_max - x_min + 1``. ``score`` is set for predictions only.
    """

    id: int
    category_id: int
    isthing: bool
    area: int
    bbox: list[int]
    iscrowd: bool = False
    score: float | None = None

    def to_coco(self) -> dict[str, Any]:
        """The ``segments_info`` entry (``isthing`` is a category property there, so left out)."""
        entry = {
            "id": int(self.id),
            "category_id": int(self.category_id),
            "area": int(self.area),
            "bbox": [int(v) for v in self.bbox],
            "iscrowd": int(self.iscrowd),
        }
        if self.score is not None:
            entry["score"] = float(self.score)
        return entry


@dataclass
class PanopticResult:
    """A panoptic segmentation of one image.

    Attributes:
        id_map: int32 array [H, W]; each value is the ``id`` of a segment, 0 = VOID.
        segments: one :class:`Segment` per id present in ``id_map``.
    """

    id_map: np.ndarray
    segments: list[Segment] = field(default_factory=list)

    def __post_init__(self) -> None:
        id_map = np.asarray(self.id_map)
        if id_map.ndim != 2:
            raise ValueError(f"id_map must be [H, W], got shape {tuple(id_map.shape)}")
        if id_map.dtype != np.int32:
            id_map = id_map.astype(np.int32)
        self.id_map = id_map

    @property
    def height(self) -> int:
        return int(self.id_map.shape[0])

    @property
    def width(self) -> int:
        return int(self.id_map.shape[1])

    def segment(self, segment_id: int) -> Segment:
        """The segment with this id (``KeyError`` if there is none)."""
        for s in self.segments:
            if s.id == segment_id:
                return s
        raise KeyError(segment_id)

    def segments_info(self) -> list[dict[str, Any]]:
        """COCO ``segments_info`` entries for the JSON file."""
        return [s.to_coco() for s in self.segments]

    def to_dict(self) -> dict[str, Any]:
        """Segments as plain dicts (``isthing`` included), for JSON reports."""
        return {"height": self.height, "width": self.width, "segments": [asdict(s) for s in self.segments]}

    @classmethod
    def from_id_map(
        cls,
        id_map: np.ndarray,
        category_of: Mapping[int, int],
        thing_category_ids: Iterable[int],
        *,
        crowd_ids: Iterable[int] = (),
        scores: Mapping[int, float] | None = None,
    ) -> "PanopticResult":
        """Build a result from an id map, computing each segment's area and bbox from its pixels.

        Args:
            id_map: integer array [H, W], 0 = VOID.
            category_of: segment id -> category id, for every non-zero id in ``id_map``.
            thing_category_ids: the category ids that are things.
            crowd_ids: segment ids to mark ``iscrowd``.
            scores: optional segment id -> score.
        """
        id_map = np.asarray(id_map, dtype=np.int32)
        things = set(int(c) for c in thing_category_ids)
        crowd = set(int(i) for i in crowd_ids)
        segments = []
        for seg_id, area, bbox in segment_stats(id_map):
            if seg_id == VOID_ID:
                continue
            if seg_id not in category_of:
                raise KeyError(f"segment id {seg_id} is in the id map but has no category")
            cat = int(category_of[seg_id])
            segments.append(
                Segment(
                    id=seg_id,
                    category_id=cat,
                    isthing=cat in things,
                    area=area,
                    bbox=bbox,
                    iscrowd=seg_id in crowd,
                    score=None if scores is None else float(scores[seg_id]),
                )
            )
        return cls(id_map, segments)


def segment_stats(id_map: np.ndarray) -> list[tuple[int, int, list[int]]]:
    """Area and COCO bbox of every id in a map (VOID included), in increasing id order.

    Args:
        id_map: integer array [H, W].

    Returns:
        ``[(id, area, [x, y, w, h]), ...]`` with ``w = x_max - x_min + 1``.
    """
    id_map = np.asarray(id_map)
    if id_map.size == 0:
        return []
    flat = id_map.ravel()
    if flat.min() >= 0 and flat.max() < max(1 << 16, 4 * flat.size):
        # Small non-negative ids (the usual case): counting beats np.unique's sort.
        counts = np.bincount(flat)
        ids = np.flatnonzero(counts)
        areas = counts[ids]
        compact = np.zeros(len(counts), dtype=np.intp)
        compact[ids] = np.arange(len(ids))
        inverse = compact[id_map]
    else:
        ids, inverse, areas = np.unique(flat, return_inverse=True, return_counts=True)
        inverse = inverse.reshape(id_map.shape)
    h, w = id_map.shape
    n = len(ids)
    # Per id, the first and last row and column it occupies: reduce over rows/columns first
    # (a [n, H] presence table), so the cost is O(H*W + n*(H+W)) rather than O(n*H*W).
    row_presence = np.zeros((n, h), dtype=bool)
    col_presence = np.zeros((n, w), dtype=bool)
    rows, cols = np.indices(id_map.shape)
    row_presence[inverse.ravel(), rows.ravel()] = True
    col_presence[inverse.ravel(), cols.ravel()] = True
    y0 = row_presence.argmax(axis=1)
    y1 = h - 1 - row_presence[:, ::-1].argmax(axis=1)
    x0 = col_presence.argmax(axis=1)
    x1 = w - 1 - col_presence[:, ::-1].argmax(axis=1)
    return [
        (int(ids[k]), int(areas[k]), [int(x0[k]), int(y0[k]), int(x1[k] - x0[k] + 1), int(y1[k] - y0[k] + 1)])
        for k in range(n)
    ]


def to_label_map(
    result: PanopticResult, *, label_divisor: int = 1000, void_label: int = -1
) -> np.ndarray:
    """Segment-id map -> ``category * label_divisor + instance`` map (detectron2's encoding).

    Stuff segments get instance 0; the thing segments of each category are numbered 1, 2, ...
    in the order of ``result.segments``. VOID pixels get ``void_label``.

    Returns:
        int64 array [H, W].
    """
    label_map = np.full(result.id_map.shape, void_label, dtype=np.int64)
    next_instance: dict[int, int] = {}
    lut_ids, lut_values = [], []
    for s in result.segments:
        if s.isthing:
            instance = next_instance.get(s.category_id, 0) + 1
            if instance >= label_divisor:
                raise ValueError(f"category {s.category_id} has {instance} instances, more than label_divisor allows")
            next_instance[s.category_id] = instance
        else:
            instance = 0
        lut_ids.append(s.id)
        lut_values.append(s.category_id * label_divisor + instance)
    if lut_ids:
        order = np.argsort(lut_ids)
        sorted_ids = np.asarray(lut_ids, dtype=np.int64)[order]
        sorted_values = np.asarray(lut_values, dtype=np.int64)[order]
        pos = np.clip(np.searchsorted(sorted_ids, result.id_map), 0, len(sorted_ids) - 1)
        known = sorted_ids[pos] == result.id_map
        label_map[known] = sorted_values[pos[known]]
    return label_map


def from_label_map(
    label_map: np.ndarray,
    thing_category_ids: Iterable[int],
    *,
    label_divisor: int = 1000,
    void_label: int = -1,
) -> PanopticResult:
    """``category * label_divisor + instance`` map -> :class:`PanopticResult`.

    Each distinct label becomes one segment whose id is its rank (1, 2, ...) among the
    labels present, so ids stay small. A stuff label with a non-zero instance part is still
    one segment of that category.
    """
    label_map = np.asarray(label_map, dtype=np.int64)
    labels, inverse = np.unique(label_map.ravel(), return_inverse=True)
    is_void = labels == void_label
    segment_ids = np.cumsum(~is_void).astype(np.int32)
    segment_ids[is_void] = VOID_ID
    id_map = segment_ids[inverse].reshape(label_map.shape)
    category_of = {int(segment_ids[k]): int(labels[k] // label_divisor) for k in range(len(labels)) if not is_void[k]}
    return PanopticResult.from_id_map(id_map, category_of, thing_category_ids)
