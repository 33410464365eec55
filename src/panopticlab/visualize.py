"""Pictures of panoptic segmentations: colour overlays with boundaries and a legend.

* :func:`colorize` paints each segment in its category colour; the instances of a thing
  category get distinct shades of that colour so neighbours stay apart.
* :func:`overlay` blends that over the photo and draws segment boundaries.
* :func:`compose` puts titled panels side by side with a legend of the categories shown.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from panopticlab.data.coco_panoptic import Categories
from panopticlab.structures import PanopticResult

VOID_COLOR = (0, 0, 0)


def colorize(result: PanopticResult, categories: Categories) -> np.ndarray:
    """Segment colours: the category colour, shaded per instance for things.

    Returns:
        uint8 array [H, W, 3]; VOID is black.
    """
    palette_ids, palette_colors = [], []
    instance_rank: dict[int, int] = {}
    for s in result.segments:
        color = np.array(categories.color(s.category_id), dtype=np.float32)
        if s.isthing:
            rank = instance_rank.get(s.category_id, 0)
            instance_rank[s.category_id] = rank + 1
            color = _shade(color, rank)
        palette_ids.append(s.id)
        palette_colors.append(color)
    out = np.zeros((*result.id_map.shape, 3), dtype=np.uint8)
    out[:] = VOID_COLOR
    if palette_ids:
        ids = np.asarray(palette_ids)
        order = np.argsort(ids)
        ids, colors = ids[order], np.stack(palette_colors)[order].astype(np.uint8)
        pos = np.clip(np.searchsorted(ids, result.id_map), 0, len(ids) - 1)
        known = ids[pos] == result.id_map
        out[known] = colors[pos[known]]
    return out


# Lighten (+) or darken (-) steps for the 2nd, 3rd, ... instance of a category.
_SHADE_STEPS = (0.0, 0.35, -0.35, 0.6, -0.55, 0.18, -0.18, 0.48, -0.45)


def _shade(color: np.ndarray, rank: int) -> np.ndarray:
    step = _SHADE_STEPS[rank % len(_SHADE_STEPS)]
    target = 255.0 if step > 0 else 0.0
    return color + (target - color) * abs(step)


def boundaries(id_map: np.ndarray) -> np.ndarray:
    """Pixels whose right or lower neighbour belongs to another segment.

    Returns:
        bool array [H, W].
    """
    edge = np.zeros(id_map.shape, dtype=bool)
    edge[:, :-1] |= id_map[:, :-1] != id_map[:, 1:]
    edge[:-1, :] |= id_map[:-1, :] != id_map[1:, :]
    return edge


def overlay(image: np.ndarray, result: PanopticResult, categories: Categories, alpha: float = 0.55) -> np.ndarray:
    """Blend segment colours over an RGB image [H, W, 3] uint8 and draw boundaries in white."""
    if image.shape[:2] != result.id_map.shape:
        raise ValueError(f"image is {image.shape[:2]} but the segmentation is {result.id_map.shape}")
    colors = colorize(result, categories).astype(np.float32)
    blended = image.astype(np.float32) * (1 - alpha) + colors * alpha
    void = result.id_map == 0
    blended[void] = image[void] * 0.35  # darken VOID rather than colour it
    blended[boundaries(result.id_map)] = 255
    return blended.clip(0, 255).astype(np.uint8)


def compose(
    panels: Sequence[tuple[str, np.ndarray]],
    categories: Categories,
    shown_category_ids: Sequence[int] = (),
) -> Image.Image:
    """Titled panels side by side, with a legend of ``shown_category_ids`` beneath.

    Args:
        panels: ``(title, uint8 [H, W, 3])`` pairs, all the same height.
    """
    font = ImageFont.load_default()
    pad, title_h, swatch = 6, 16, 12
    h = max(p.shape[0] for _, p in panels)
    w = sum(p.shape[1] for _, p in panels) + pad * (len(panels) + 1)
    names = [f"{categories[c]['name']}{'' if categories.isthing(c) else ' (stuff)'}" for c in shown_category_ids]
    per_row = max(1, w // 130)
    legend_rows = (len(names) + per_row - 1) // per_row
    canvas = Image.new("RGB", (w, title_h + h + pad * 2 + legend_rows * (swatch + 6)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = pad
    for title, panel in panels:
        draw.text((x, 2), title, fill=(0, 0, 0), font=font)
        canvas.paste(Image.fromarray(panel), (x, title_h))
        x += panel.shape[1] + pad
    y0 = title_h + h + pad
    for k, (cat_id, name) in enumerate(zip(shown_category_ids, names)):
        lx = pad + (k % per_row) * 130
        ly = y0 + (k // per_row) * (swatch + 6)
        draw.rectangle([lx, ly, lx + swatch, ly + swatch], fill=categories.color(cat_id), outline=(0, 0, 0))
        draw.text((lx + swatch + 4, ly), name, fill=(0, 0, 0), font=font)
    return canvas


def categories_present(categories: Categories, *results: PanopticResult) -> list[int]:
    """The category ids that occur in ``results``, in contiguous order: a legend's entries."""
    present = {s.category_id for result in results for s in result.segments}
    return sorted(present, key=categories.to_contiguous)


def render_ground_truth(image: np.ndarray, result: PanopticResult, categories: Categories) -> Image.Image:
    """Photo | overlay | segment colours, with a legend of the categories present."""
    shown = categories_present(categories, result)
    return compose(
        [("image", image), ("overlay", overlay(image, result, categories)), ("segments", colorize(result, categories))],
        categories,
        shown,
    )


def save_picture(picture: Image.Image, path: str | os.PathLike) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
