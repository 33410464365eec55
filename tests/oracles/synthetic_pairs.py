"""Seeded synthetic ground-truth / prediction pairs for testing and benchmarking evaluators.

Each image is a street-like scene on the 19 Cityscapes evaluation categories:

* ground truth: a blocky Voronoi partition into stuff segments (segment id = category id),
  overlapping thing ellipses (id = category * 1000 + k), and optionally VOID boxes, a VOID
  strip at the bottom and a crowd ellipse whose segment id equals its category id;
* prediction: the same scene with jittered stuff borders, jittered / missed / relabelled
  things, spurious things, things on the crowd region and on VOID, predicted VOID boxes,
  and random 24-bit segment ids.

Image ``k`` draws from its own generator seeded by ``(seed, k)``, so any subset of a dataset
can be regenerated on its own. :func:`write_dataset` writes COCO-panoptic JSON + PNG files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from panopticlab.data.cityscapes import EVALUATED_LABELS
from panopticlab.fileio import write_json
from panopticlab.structures import id2rgb

#: The 19 Cityscapes evaluation categories: (id, name, isthing).
CITYSCAPES_CATEGORIES: list[tuple[int, str, bool]] = [(c.id, c.name, c.has_instances) for c in EVALUATED_LABELS]
STUFF_IDS = [c for c, _, thing in CITYSCAPES_CATEGORIES if not thing]
THING_IDS = [c for c, _, thing in CITYSCAPES_CATEGORIES if thing]


def coco_categories() -> list[dict[str, Any]]:
    """The categories as COCO-panoptic ``categories`` entries."""
    return [
        {"id": c, "name": name, "isthing": int(thing), "supercategory": ""} for c, name, thing in CITYSCAPES_CATEGORIES
    ]


@dataclass
class SyntheticPair:
    """One synthetic image: int32 id maps [H, W] (0 = VOID) and COCO ``segments_info`` lists."""

    gt_map: np.ndarray
    gt_segments: list[dict[str, Any]]
    pred_map: np.ndarray
    pred_segments: list[dict[str, Any]]


def _fill_ellipse(id_map: np.ndarray, cy: float, cx: float, ry: float, rx: float, value: int) -> None:
    """Set the pixels of an axis-aligned ellipse to ``value`` (in place; clipped to the map)."""
    h, w = id_map.shape
    y0, y1 = max(int(cy - ry), 0), min(int(cy + ry) + 1, h)
    x0, x1 = max(int(cx - rx), 0), min(int(cx + rx) + 1, w)
    if y0 >= y1 or x0 >= x1:
        return
    yy = (np.arange(y0, y1)[:, None] - cy) / ry
    xx = (np.arange(x0, x1)[None, :] - cx) / rx
    id_map[y0:y1, x0:x1][yy**2 + xx**2 <= 1.0] = value


def _voronoi(h: int, w: int, seeds_yx: np.ndarray, labels: np.ndarray, cell: int = 4) -> np.ndarray:
    """Nearest-seed label map, computed on a ``cell``-pixel grid and upsampled (blocky borders)."""
    gy = np.arange(0, h, cell)[:, None, None] + cell / 2
    gx = np.arange(0, w, cell)[None, :, None] + cell / 2
    d2 = (gy - seeds_yx[:, 0]) ** 2 + (gx - seeds_yx[:, 1]) ** 2
    coarse = labels[d2.argmin(axis=2)]
    return np.repeat(np.repeat(coarse, cell, axis=0), cell, axis=1)[:h, :w]


def make_pair(
    seed: int, index: int, height: int = 512, width: int = 1024, *, void_and_crowd: bool = True
) -> SyntheticPair:
    """Generate image ``index`` of the dataset seeded by ``seed`` (deterministic)."""
    rng = np.random.default_rng([seed, index])
    h, w = height, width
    scale = min(h / 512, w / 1024)

    # Ground truth: stuff Voronoi cells, one segment per stuff category.
    n_stuff = int(rng.integers(6, 10))
    stuff_cats = rng.choice(STUFF_IDS, size=n_stuff, replace=False)
    seeds = rng.uniform([0, 0], [h, w], size=(n_stuff, 2))
    gt = _voronoi(h, w, seeds, stuff_cats.astype(np.int32)).astype(np.int32)
    category_of: dict[int, int] = {int(c): int(c) for c in stuff_cats}
    things: list[tuple[int, int, float, float, float, float]] = []  # (id, cat, cy, cx, ry, rx)
    for k in range(int(rng.integers(9, 16))):
        cat = int(rng.choice(THING_IDS))
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(8, 90) * scale + 1, rng.uniform(8, 120) * scale + 1
        seg_id = cat * 1000 + k + 1
        _fill_ellipse(gt, cy, cx, ry, rx, seg_id)
        things.append((seg_id, cat, cy, cx, ry, rx))
        category_of[seg_id] = cat

    crowd_ids: set[int] = set()
    void_boxes: list[tuple[int, int, int, int]] = []
    crowd: tuple[int, float, float, float, float] | None = None
    if void_and_crowd:
        for _ in range(int(rng.integers(1, 5))):
            bh, bw = int(rng.integers(10, 81) * scale) + 1, int(rng.integers(10, 161) * scale) + 1
            y, x = int(rng.integers(0, max(h - bh, 1))), int(rng.integers(0, max(w - bw, 1)))
            gt[y : y + bh, x : x + bw] = 0
            void_boxes.append((y, x, bh, bw))
        gt[h - max(int(24 * scale), 1) :, :] = 0
        if rng.random() < 0.6:
            cat = int(rng.choice(THING_IDS))
            margin = 100 * scale
            cy, cx = rng.uniform(margin, h - margin), rng.uniform(margin, w - margin)
            ry, rx = rng.uniform(30, 70) * scale + 1, rng.uniform(40, 150) * scale + 1
            _fill_ellipse(gt, cy, cx, ry, rx, cat)
            category_of[cat] = cat
            crowd_ids.add(cat)
            crowd = (cat, cy, cx, ry, rx)

    # Prediction: jittered stuff seeds with some category swaps.
    pred_stuff = np.where(rng.random(n_stuff) < 0.1, rng.choice(STUFF_IDS, size=n_stuff), stuff_cats)
    pred_sem = _voronoi(h, w, seeds + rng.normal(0, 12 * scale, size=seeds.shape), pred_stuff.astype(np.int32))
    pred = pred_sem.astype(np.int32)  # temporarily: stuff category ids, replaced by random ids below
    pred_category: dict[int, int] = {int(c): int(c) for c in np.unique(pred_stuff)}
    next_thing = 1_000_000  # thing ids above every category id until the final relabelling

    def add_thing(cat: int, cy: float, cx: float, ry: float, rx: float) -> None:
        nonlocal next_thing
        next_thing += 1
        _fill_ellipse(pred, cy, cx, ry, rx, next_thing)
        pred_category[next_thing] = cat

    for seg_id, cat, cy, cx, ry, rx in things:
        if rng.random() < 0.08:
            continue
        if rng.random() < 0.08:
            cat = int(rng.choice(THING_IDS))
        s = 0.35 if rng.random() < 0.15 else 0.08
        add_thing(
            cat, cy + rng.normal(0, s * ry), cx + rng.normal(0, s * rx),
            ry * np.exp(rng.normal(0, s)), rx * np.exp(rng.normal(0, s)),
        )  # fmt: skip
    for _ in range(int(rng.integers(0, 3))):
        add_thing(
            int(rng.choice(THING_IDS)), rng.uniform(0, h), rng.uniform(0, w),
            rng.uniform(6, 40) * scale + 1, rng.uniform(6, 60) * scale + 1,
        )  # fmt: skip
    if crowd is not None:
        cat, cy, cx, ry, rx = crowd
        for cat_k in (cat, cat, int(rng.choice(THING_IDS))):
            add_thing(cat_k, cy + rng.uniform(-0.5, 0.5) * ry, cx + rng.uniform(-0.5, 0.5) * rx, ry / 3, rx / 3)
    for y, x, bh, bw in void_boxes:
        if rng.random() < 0.5:
            add_thing(int(rng.choice(THING_IDS)), y + bh / 2, x + bw / 2, bh / 2 + 6, bw / 2 + 6)
    if void_and_crowd:
        for _ in range(int(rng.integers(0, 3))):
            bh, bw = int(rng.integers(5, 61) * scale) + 1, int(rng.integers(5, 121) * scale) + 1
            y, x = int(rng.integers(0, max(h - bh, 1))), int(rng.integers(0, max(w - bw, 1)))
            pred[y : y + bh, x : x + bw] = 0

    # Relabel prediction segments with unique random 24-bit ids (VOID stays 0).
    present, inverse = np.unique(pred, return_inverse=True)
    new_ids = np.zeros(len(present), dtype=np.int64)
    real = present != 0
    new_ids[real] = rng.choice(256**3 - 1, size=int(real.sum()), replace=False) + 1
    pred_map = new_ids[inverse].reshape(pred.shape).astype(np.int32)
    pred_segments = [
        {"id": int(n), "category_id": pred_category[int(o)], "iscrowd": 0} for o, n in zip(present[real], new_ids[real])
    ]

    gt_ids, gt_areas = np.unique(gt, return_counts=True)
    gt_segments = [
        {"id": int(i), "category_id": category_of[int(i)], "area": int(a), "iscrowd": int(int(i) in crowd_ids)}
        for i, a in zip(gt_ids, gt_areas)
        if i != 0
    ]
    return SyntheticPair(gt, gt_segments, pred_map, pred_segments)


def write_dataset(
    out_dir: str | os.PathLike,
    num_images: int,
    *,
    seed: int = 0,
    height: int = 512,
    width: int = 1024,
    void_and_crowd: bool = True,
    string_ids: bool = False,
) -> tuple[Path, Path]:
    """Write ``gt.json`` + ``gt/*.png`` and ``pred.json`` + ``pred/*.png`` under ``out_dir``.

    Args:
        string_ids: use Cityscapes-style string ``image_id`` values instead of integers.

    Returns:
        The GT and prediction JSON paths (their folders are the same paths without ``.json``).
    """
    out = Path(out_dir)
    (out / "gt").mkdir(parents=True, exist_ok=True)
    (out / "pred").mkdir(parents=True, exist_ok=True)
    images, gt_anns, pred_anns = [], [], []
    for k in range(num_images):
        pair = make_pair(seed, k, height, width, void_and_crowd=void_and_crowd)
        image_id: int | str = f"city_{k:06d}_000019" if string_ids else k
        name = f"{k:06d}.png"
        for folder, id_map in (("gt", pair.gt_map), ("pred", pair.pred_map)):
            Image.fromarray(id2rgb(id_map)).save(out / folder / name)  # as panopticapi's converters write them
        images.append({"id": image_id, "file_name": name.replace(".png", ".jpg"), "height": height, "width": width})
        gt_anns.append({"image_id": image_id, "file_name": name, "segments_info": pair.gt_segments})
        pred_anns.append({"image_id": image_id, "file_name": name, "segments_info": pair.pred_segments})
    categories = coco_categories()
    write_json(out / "gt.json", {"images": images, "annotations": gt_anns, "categories": categories})
    write_json(out / "pred.json", {"annotations": pred_anns, "categories": categories})
    return out / "gt.json", out / "pred.json"
