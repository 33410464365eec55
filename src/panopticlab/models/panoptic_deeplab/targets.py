"""Training targets of Panoptic-DeepLab: semantic labels, centre heatmap, centre offsets, loss weights.

Semantics follow detectron2's ``PanopticDeepLabTargetGenerator`` (D2), itself a port of the
original PyTorch code (BC); the DeepLab2 (DL2) and BC variants are options. One call turns
a panoptic id map (after all augmentations) into the six per-pixel targets; the
computation is vectorised over segments (one table lookup per pixel, centroids by
``bincount``) instead of one boolean mask per segment.

:func:`collate_targets` batches the per-image dicts for the losses in ``losses.py``.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

import numpy as np
import torch

from panopticlab.errors import InputError
from panopticlab.structures import PanopticResult

Targets = dict[str, Any]


def gaussian_kernel(sigma: int) -> np.ndarray:
    """The centre Gaussian: float32 [6σ+3, 6σ+3], ``exp(-d²/(2σ²))`` around the middle pixel (value 1)."""
    size = 6 * sigma + 3
    d = np.arange(size, dtype=np.float64) - (3 * sigma + 1)
    return np.exp(-(d[None, :] ** 2 + d[:, None] ** 2) / (2 * sigma**2)).astype(np.float32)


class PanopticDeepLabTargetGenerator:
    """Per-pixel training targets from a panoptic id map (detectron2's semantics by default).

    Args:
        ignore_label: semantic label of VOID pixels (and of crowd when ``ignore_crowd_in_semantic``).
        thing_ids: contiguous category ids of the thing classes.
        sigma: standard deviation of the centre Gaussian in pixels (integer; D2 Cityscapes
            config 10, D2 COCO / BC / DL2 8).
        ignore_stuff_in_offset: give stuff pixels offset weight 0 (D2 Panoptic-DeepLab
            configs: True). When False, ``offset_weights`` equals ``center_weights``.
        small_instance_area: thing instances with fewer pixels than this (counted in the
            given, already cropped map) get ``small_instance_weight`` in ``sem_seg_weights``
            (D2 configs: 4096 and 3).
        small_instance_weight: see ``small_instance_area``.
        ignore_crowd_in_semantic: label crowd pixels ``ignore_label`` in ``sem_seg``.
        ignore_crowd_in_center: DL2 behaviour: crowd segments are not instances, so they get
            no heatmap peak, no offsets, no small-instance weight and no entry in
            ``center_points``. D2/BC (False) draw all of these for crowd thing segments; only
            the crowd pixels' centre/offset weights are 0 in both cases.
        center_rounding: peak pixel of an instance: ``"round"`` the mass centre (D2, DL2;
            halves go to the even integer, as Python's ``round``) or ``"floor"`` it (BC).
        offset_to_peak: offsets point to the integer peak pixel (DL2) instead of the float
            mass centre (D2, BC).

    Calling the generator with ``(panoptic, segments_info)``:

    * ``panoptic``: integer array or tensor [H, W] of segment ids. Pixels whose id is not in
      ``segments_info`` (0 = VOID) belong to no segment.
    * ``segments_info``: list of dicts with ``id``, ``category_id`` (contiguous) and
      ``iscrowd``. Segments absent from the map (cropped away) are skipped.

    returns a dict of CPU tensors (shapes as D2's):

    * ``sem_seg``: int64 [H, W], the category id, ``ignore_label`` on VOID.
    * ``center``: float32 [H, W], element-wise max over thing instances of the Gaussian
      centred on the instance's peak pixel (value exactly 1 there), clipped at the borders.
    * ``center_points``: list of ``[cy, cx]`` float mass centres, one per instance, in
      ``segments_info`` order.
    * ``offset``: float32 [2, H, W], channel 0 = ``cy - y``, channel 1 = ``cx - x`` on
      instance pixels, 0 elsewhere.
    * ``sem_seg_weights``: float32 [H, W], 1 or ``small_instance_weight``.
    * ``center_weights``: float32 [1, H, W], 1 on pixels of non-crowd segments (thing or
      stuff), 0 on VOID and crowd.
    * ``offset_weights``: float32 [1, H, W], as ``center_weights``, and 0 on stuff when
      ``ignore_stuff_in_offset``.
    """

    def __init__(
        self,
        ignore_label: int,
        thing_ids: Iterable[int],
        sigma: int = 8,
        ignore_stuff_in_offset: bool = False,
        small_instance_area: int = 0,
        small_instance_weight: float = 1,
        ignore_crowd_in_semantic: bool = False,
        *,
        ignore_crowd_in_center: bool = False,
        center_rounding: Literal["round", "floor"] = "round",
        offset_to_peak: bool = False,
    ):
        if int(sigma) != sigma or sigma <= 0:
            raise ValueError(f"sigma must be a positive integer, got {sigma!r}")
        if center_rounding not in ("round", "floor"):
            raise ValueError(f"center_rounding must be 'round' or 'floor', got {center_rounding!r}")
        self.ignore_label = int(ignore_label)
        self.thing_ids = sorted({int(i) for i in thing_ids})
        self.sigma = int(sigma)
        self.ignore_stuff_in_offset = ignore_stuff_in_offset
        self.small_instance_area = small_instance_area
        self.small_instance_weight = small_instance_weight
        self.ignore_crowd_in_semantic = ignore_crowd_in_semantic
        self.ignore_crowd_in_center = ignore_crowd_in_center
        self.center_rounding = center_rounding
        self.offset_to_peak = offset_to_peak
        self.gaussian = gaussian_kernel(self.sigma)

    def __call__(self, panoptic: np.ndarray | torch.Tensor, segments_info: Sequence[Mapping[str, Any]]) -> Targets:
        panoptic = _as_id_map(panoptic)
        height, width = panoptic.shape
        ids = np.array([s["id"] for s in segments_info], dtype=np.int64)
        if len(np.unique(ids)) != len(ids):
            raise InputError(f"segments_info lists a segment id twice: {sorted(ids.tolist())}")
        category = np.array([s["category_id"] for s in segments_info], dtype=np.int64)
        crowd = np.array([bool(s.get("iscrowd", 0)) for s in segments_info], dtype=bool)
        isthing = np.isin(category, self.thing_ids)

        # Every per-segment table below gets one extra last entry for "no segment" (VOID),
        # so that `table[index]` paints the whole map at once.
        num_segments = len(ids)
        index = _segment_index(panoptic, ids)
        flat_index = index.ravel()
        ys = np.repeat(np.arange(height, dtype=np.float64), width)
        xs = np.tile(np.arange(width, dtype=np.float64), height)
        area = np.bincount(flat_index, minlength=num_segments + 1)[:num_segments]
        is_instance = isthing & (area > 0)
        if self.ignore_crowd_in_center:
            is_instance &= ~crowd

        semantic = np.where(crowd & self.ignore_crowd_in_semantic, self.ignore_label, category)
        small = is_instance & (area < self.small_instance_area)
        semantic_weight = np.where(small, self.small_instance_weight, 1.0)
        center_weight = ~crowd
        offset_weight = ~crowd & (isthing | (not self.ignore_stuff_in_offset))

        # Mass centres (float64, as D2's np.mean of the pixel indices) and peak pixels.
        safe_area = np.maximum(area, 1)
        cy = np.bincount(flat_index, weights=ys, minlength=num_segments + 1)[:num_segments] / safe_area
        cx = np.bincount(flat_index, weights=xs, minlength=num_segments + 1)[:num_segments] / safe_area
        to_int = np.rint if self.center_rounding == "round" else np.floor
        peak_y, peak_x = to_int(cy).astype(np.int64), to_int(cx).astype(np.int64)

        center = np.zeros((height, width), dtype=np.float32)
        for k in np.flatnonzero(is_instance):
            self._paste_gaussian(center, int(peak_y[k]), int(peak_x[k]))

        target_y, target_x = (peak_y, peak_x) if self.offset_to_peak else (cy, cx)
        instance_pixels = _append(is_instance, False)[index].ravel()
        offset = np.zeros((2, height * width), dtype=np.float32)
        segment_of_pixel = flat_index[instance_pixels]
        offset[0, instance_pixels] = target_y[segment_of_pixel] - ys[instance_pixels]
        offset[1, instance_pixels] = target_x[segment_of_pixel] - xs[instance_pixels]

        return {
            "sem_seg": torch.from_numpy(_append(semantic, self.ignore_label)[index]),
            "center": torch.from_numpy(center),
            "center_points": [[float(cy[k]), float(cx[k])] for k in np.flatnonzero(is_instance)],
            "offset": torch.from_numpy(offset.reshape(2, height, width)),
            "sem_seg_weights": torch.from_numpy(_append(semantic_weight, 1.0).astype(np.float32)[index]),
            "center_weights": torch.from_numpy(_append(center_weight, False).astype(np.float32)[index][None]),
            "offset_weights": torch.from_numpy(_append(offset_weight, False).astype(np.float32)[index][None]),
        }

    def _paste_gaussian(self, center: np.ndarray, y: int, x: int) -> None:
        """Max the Gaussian centred on pixel (y, x) into ``center`` [H, W], in place, clipped at the borders."""
        radius = 3 * self.sigma + 1
        height, width = center.shape
        y0, y1 = max(0, y - radius), min(height, y + radius + 1)
        x0, x1 = max(0, x - radius), min(width, x + radius + 1)
        window = self.gaussian[y0 - (y - radius) : y1 - (y - radius), x0 - (x - radius) : x1 - (x - radius)]
        np.maximum(center[y0:y1, x0:x1], window, out=center[y0:y1, x0:x1])


def targets_from_panoptic(
    result: PanopticResult,
    categories_to_contiguous: Callable[[int], int] | Mapping[int, int],
    generator: PanopticDeepLabTargetGenerator,
) -> Targets:
    """Targets for a :class:`PanopticResult` whose segments carry dataset category ids.

    ``categories_to_contiguous`` maps a dataset category id to the contiguous id the model
    uses (a dict, or e.g. ``Categories.to_contiguous``).
    """
    to_contiguous = categories_to_contiguous
    if isinstance(categories_to_contiguous, Mapping):
        to_contiguous = categories_to_contiguous.__getitem__
    segments_info = []
    for s in result.segments:
        try:
            contiguous = to_contiguous(s.category_id)
        except KeyError:
            raise InputError(f"segment {s.id}: category {s.category_id} has no contiguous id") from None
        segments_info.append({"id": s.id, "category_id": contiguous, "iscrowd": int(s.iscrowd)})
    return generator(result.id_map, segments_info)


def collate_targets(targets: Sequence[Targets], *, ignore_label: int = 255, size_divisibility: int = 0) -> Targets:
    """Batch per-image target dicts for the losses, padding bottom/right as detectron2 does.

    Images of different sizes are padded to the largest height and width, rounded up to a
    multiple of ``size_divisibility`` when it is > 0: ``sem_seg`` with ``ignore_label``,
    everything else with 0 (so padding carries no loss).

    Returns:
        ``sem_seg`` int64 [B, H, W]; ``center`` float32 [B, 1, H, W] (a channel added to
        match the network's output); ``offset`` float32 [B, 2, H, W]; ``sem_seg_weights``
        float32 [B, H, W]; ``center_weights`` and ``offset_weights`` float32 [B, 1, H, W];
        ``center_points`` the list of the per-image lists.
    """
    if not targets:
        raise ValueError("collate_targets needs at least one target dict")
    height = max(t["sem_seg"].shape[-2] for t in targets)
    width = max(t["sem_seg"].shape[-1] for t in targets)
    if size_divisibility > 0:
        height = -(-height // size_divisibility) * size_divisibility
        width = -(-width // size_divisibility) * size_divisibility

    def stack(key: str, pad_value: float) -> torch.Tensor:
        first = targets[0][key]
        batch = first.new_full((len(targets), *first.shape[:-2], height, width), pad_value)
        for i, t in enumerate(targets):
            h, w = t[key].shape[-2:]
            batch[i, ..., :h, :w] = t[key]
        return batch

    batch = {
        "sem_seg": stack("sem_seg", ignore_label),
        "center": stack("center", 0.0).unsqueeze(1),
        "offset": stack("offset", 0.0),
        "sem_seg_weights": stack("sem_seg_weights", 0.0),
        "center_weights": stack("center_weights", 0.0),
        "offset_weights": stack("offset_weights", 0.0),
        "center_points": [t["center_points"] for t in targets],
    }
    return batch


def _as_id_map(panoptic: np.ndarray | torch.Tensor) -> np.ndarray:
    """int64 numpy [H, W] from an integer array or (CPU or GPU) tensor."""
    if isinstance(panoptic, torch.Tensor):
        panoptic = panoptic.detach().cpu().numpy()
    panoptic = np.asarray(panoptic)
    if panoptic.ndim != 2 or not np.issubdtype(panoptic.dtype, np.integer):
        raise InputError(f"panoptic must be an integer id map [H, W], got {panoptic.dtype} {tuple(panoptic.shape)}")
    return panoptic.astype(np.int64, copy=False)


def _segment_index(panoptic: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """For each pixel, the position of its id in ``ids``; ``len(ids)`` where it is not listed. int64 [H, W]."""
    if len(ids) == 0:
        return np.zeros(panoptic.shape, dtype=np.int64)
    order = np.argsort(ids)
    sorted_ids = ids[order]
    pos = np.minimum(np.searchsorted(sorted_ids, panoptic), len(ids) - 1)
    return np.where(sorted_ids[pos] == panoptic, order[pos], len(ids))


def _append(table: np.ndarray, void_value: Any) -> np.ndarray:
    """``table`` with one more entry, the value for pixels of no segment."""
    return np.append(table, np.array(void_value, dtype=table.dtype))


class AddTargets:
    """``item -> item`` with ``item["targets"]`` added: picklable, so data-loader workers build
    the targets (see ``PanopticDeepLab.targets_transform``)."""

    def __init__(self, to_contiguous: Mapping[int, int], generator: PanopticDeepLabTargetGenerator):
        self.to_contiguous = dict(to_contiguous)
        self.generator = generator

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        return {**item, "targets": targets_from_panoptic(item["panoptic"], self.to_contiguous, self.generator)}
