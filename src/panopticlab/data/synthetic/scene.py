"""One scene of the overlapping-shapes dataset, drawn in memory: the categories, the
generator's knobs (:class:`ShapesConfig`) and :func:`generate_sample`.

Stuff is a warped Voronoi partition, each class with its own texture; things are placed back
to front (overlapping an earlier one with probability ``overlap``), re-ordered by a depth rule
when one is asked for, and painted in colours that stand out from what lies behind them; VOID
is added last. Image ``index`` of
seed ``seed`` draws from its own ``np.random.SeedSequence([seed, index])``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageDraw

from panopticlab.errors import InputError
from panopticlab.structures import VOID_ID, PanopticResult

#: Bumped whenever the same seed and config would produce different files.
#: 2: both thing colours stand out from the thing's surroundings, thing textures scale with the
#: thing, larger smallest things (min_size 0.18), hexagons of the circle's area (docs/synthetic.md).
GENERATOR_VERSION = 2

# Ids are non-contiguous on purpose (things 1..6, stuff 11..15), so that every consumer
# has to go through Categories' contiguous mapping.
SHAPES_CATEGORIES: list[dict[str, Any]] = [
    {"id": 1, "name": "circle", "supercategory": "shape", "isthing": 1, "color": [220, 20, 60]},
    {"id": 2, "name": "square", "supercategory": "shape", "isthing": 1, "color": [0, 0, 230]},
    {"id": 3, "name": "triangle", "supercategory": "shape", "isthing": 1, "color": [255, 140, 0]},
    {"id": 4, "name": "star", "supercategory": "shape", "isthing": 1, "color": [255, 215, 0]},
    {"id": 5, "name": "ring", "supercategory": "shape", "isthing": 1, "color": [148, 0, 211]},
    {"id": 6, "name": "hexagon", "supercategory": "shape", "isthing": 1, "color": [0, 200, 200]},
    {"id": 11, "name": "sky", "supercategory": "sky", "isthing": 0, "color": [135, 190, 240]},
    {"id": 12, "name": "grass", "supercategory": "ground", "isthing": 0, "color": [80, 150, 40]},
    {"id": 13, "name": "water", "supercategory": "water", "isthing": 0, "color": [20, 60, 140]},
    {"id": 14, "name": "wall", "supercategory": "building", "isthing": 0, "color": [150, 80, 70]},
    {"id": 15, "name": "sand", "supercategory": "ground", "isthing": 0, "color": [220, 195, 140]},
]
_NAME_TO_ID = {c["name"]: c["id"] for c in SHAPES_CATEGORIES}
THING_IDS: list[int] = [c["id"] for c in SHAPES_CATEGORIES if c["isthing"]]
STUFF_IDS: list[int] = [c["id"] for c in SHAPES_CATEGORIES if not c["isthing"]]
DEPTH_RULES = ("random", "size", "vertical", "class")


@dataclass(frozen=True)
class ShapesConfig:
    """Every knob of the generator. Sizes are fractions of the shorter image side.

    Attributes:
        height, width: image size in pixels.
        min_objects, max_objects: number of things per image (before crowd clumps).
        min_size, max_size: thing diameter, as a fraction of the shorter side.
        overlap: probability that a thing is placed to overlap an earlier one; otherwise it
            is placed clear of all earlier things where a free spot is found.
        min_visible: a thing is either fully hidden or at least this fraction of its amodal
            mask is visible (placements that would leave a smaller sliver are retried).
        min_stuff, max_stuff: number of stuff classes per image.
        crowd: probability that an image has one crowd clump.
        crowd_min_objects, crowd_max_objects: small things in a clump.
        void: probability of each kind of VOID per image (a border band, noise blobs).
        void_border: width of the VOID border band in pixels.
        void_blobs: largest number of VOID noise blobs.
        noise: largest standard deviation of the Gaussian pixel noise (drawn per image).
        depth_rule: which of two overlapping things lies in front. ``random``: the one placed
            later (the placement order, independent of class, size and position); ``size``:
            the smaller amodal mask; ``vertical``: the lower one in the image (the larger mean
            row of its amodal mask, as in street scenes); ``class``: the earlier class of
            :data:`THING_IDS` (circle in front of everything, hexagon behind).
        depth_consistency: with a rule other than ``random``, the chance that each overlapping
            pair is drawn obeying it (else reversed); draws that form a cycle are drawn again.
            The written share is exact at 1.0 and a few points above the value below it
            (cycles and slivers are redrawn: 0.8 gives 0.85 and 0.5 gives 0.50-0.53 at 128 px,
            docs/synthetic.md). Pairs the rule does not decide (a crowd clump; equal sizes or rows; two
            things of one class under ``class``) are in random order.
        classes_per_image: 0: every thing class; k: each image draws k thing classes and all
            its things (crowd clumps too) are of those, so most overlaps are within a class.
    """

    height: int = 256
    width: int = 256
    min_objects: int = 3
    max_objects: int = 8
    min_size: float = 0.18
    max_size: float = 0.30
    overlap: float = 0.5
    min_visible: float = 0.2
    min_stuff: int = 2
    max_stuff: int = 4
    crowd: float = 0.15
    crowd_min_objects: int = 5
    crowd_max_objects: int = 9
    void: float = 0.2
    void_border: int = 4
    void_blobs: int = 2
    noise: float = 6.0
    depth_rule: Literal["random", "size", "vertical", "class"] = "random"
    depth_consistency: float = 1.0
    classes_per_image: int = 0

    def __post_init__(self) -> None:
        rules = [
            (min(self.height, self.width) >= 32, "height and width must be at least 32"),
            (0 <= self.min_objects <= self.max_objects, "need 0 <= min_objects <= max_objects"),
            (0 < self.min_size <= self.max_size <= 1, "need 0 < min_size <= max_size <= 1"),
            (1 <= self.min_stuff <= self.max_stuff <= len(STUFF_IDS), "need 1 <= min_stuff <= max_stuff <= 5"),
            (1 <= self.crowd_min_objects <= self.crowd_max_objects, "need 1 <= crowd_min_objects <= crowd_max_objects"),
            (min(self.void_border, self.void_blobs, self.noise) >= 0, "void_border, void_blobs and noise must be >= 0"),
            (self.depth_rule in DEPTH_RULES, f"depth_rule must be one of {', '.join(DEPTH_RULES)}"),
            (0 <= self.classes_per_image <= len(THING_IDS), f"classes_per_image must lie in 0..{len(THING_IDS)}"),
        ]
        for name in ("overlap", "min_visible", "crowd", "void", "depth_consistency"):
            rules.append((0 <= getattr(self, name) <= 1, f"{name} must lie in [0, 1]"))
        for ok, problem in rules:
            if not ok:
                raise InputError(f"shapes dataset: {problem}, got {self}")


@dataclass
class ShapeInstance:
    """One thing instance (or crowd clump) of an image.

    Attributes:
        mask: bool [H, W], the amodal mask: every pixel of the shape, hidden or not.
        category_id: a thing category of :data:`SHAPES_CATEGORIES`.
        depth: 0 = in front of every other thing; larger is further back.
        iscrowd: a clump of small things labelled as one segment.
        panoptic_segment_id: id of its visible segment in the panoptic map, None when fully hidden.
    """

    mask: np.ndarray
    category_id: int
    depth: int
    iscrowd: bool
    panoptic_segment_id: int | None


@dataclass
class ShapesSample:
    """One generated image with its ground truth.

    Attributes:
        image: uint8 [H, W, 3] RGB.
        panoptic: the visible segmentation (int32 id map [H, W], 0 = VOID, and its segments).
        instances: the things, front to back (``instances[k].depth == k``).
    """

    image: np.ndarray
    panoptic: PanopticResult
    instances: list[ShapeInstance]


# --------------------------------------------------------------------------------------
# One image
# --------------------------------------------------------------------------------------


@dataclass
class _Thing:
    """A thing while the scene is built: amodal mask and where it was placed."""

    category_id: int
    mask: np.ndarray  # bool [H, W]
    parts: list[np.ndarray]  # masks painted one by one: [mask] for a shape, the members of a crowd clump
    iscrowd: bool
    center: tuple[float, float]  # (row, column)
    radius: float


def generate_sample(config: ShapesConfig, seed: int, index: int) -> ShapesSample:
    """Generate image ``index`` of the dataset with this ``seed``: same arguments, same sample."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    h, w = config.height, config.width
    stuff = _stuff_layout(rng, config)
    image = _paint_stuff(rng, stuff)
    things = _place_things(rng, config)  # back to front
    if config.depth_rule != "random":
        things = _order_by_rule(rng, things, config)
    for thing in things:
        _paint_thing(rng, image, thing)
    image += rng.standard_normal((h, w, 3), dtype=np.float32) * rng.uniform(0, config.noise)
    void = _void_mask(rng, config)
    image[void] = rng.uniform(0, 255, size=(int(void.sum()), 3))
    image = np.clip(image, 0, 255).round().astype(np.uint8)
    panoptic, thing_segment_ids = _panoptic_result(stuff, things, void)
    present = {s.id for s in panoptic.segments}
    instances = [
        ShapeInstance(
            mask=thing.mask,
            category_id=thing.category_id,
            depth=depth,
            iscrowd=thing.iscrowd,
            panoptic_segment_id=segment_id if segment_id in present else None,
        )
        for depth, (thing, segment_id) in enumerate(zip(things[::-1], thing_segment_ids[::-1]))
    ]
    return ShapesSample(image, panoptic, instances)


def _panoptic_result(
    stuff: np.ndarray, things: list[_Thing], void: np.ndarray
) -> tuple[PanopticResult, list[int]]:
    """Compose the visible id map: stuff, then things back to front, then VOID on top.

    Returns the result and each thing's segment id (in the order of ``things``); a thing
    that ends up with no visible pixel has no segment in the result.
    """
    stuff_ids = _present(stuff)
    category_of = {k + 1: cat for k, cat in enumerate(stuff_ids)}
    lut = np.zeros(max(stuff_ids) + 1, dtype=np.int32)
    lut[stuff_ids] = list(category_of)
    id_map = lut[stuff]
    thing_segment_ids = []
    for thing in things:
        segment_id = len(category_of) + 1
        category_of[segment_id] = thing.category_id
        id_map[thing.mask] = segment_id
        thing_segment_ids.append(segment_id)
    id_map[void] = VOID_ID
    crowd_ids = [s for s, t in zip(thing_segment_ids, things) if t.iscrowd]
    result = PanopticResult.from_id_map(id_map, category_of, THING_IDS, crowd_ids=crowd_ids)
    return result, thing_segment_ids


# --- stuff -----------------------------------------------------------------------------


def _stuff_layout(rng: np.random.Generator, config: ShapesConfig) -> np.ndarray:
    """A warped Voronoi partition of the image into stuff classes.

    Returns:
        uint8 [H, W] of stuff category ids. A class may own several cells (one segment still).
    """
    h, w = config.height, config.width
    n_classes = int(rng.integers(config.min_stuff, config.max_stuff + 1))
    classes = rng.choice(STUFF_IDS, size=n_classes, replace=False)
    cell_class = np.concatenate([classes, rng.choice(classes, size=int(rng.integers(0, 3)))])
    seeds = _spread_points(rng, len(cell_class), min_distance=0.3)
    y = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, w, dtype=np.float32)[None, :]
    # Sinusoidal warping turns the straight Voronoi edges into wavy, natural-looking borders.
    wy, wx = y + _wave(rng, y, x), x + _wave(rng, y, x)
    distance = (wy[None] - seeds[:, 0, None, None]) ** 2 + (wx[None] - seeds[:, 1, None, None]) ** 2
    return cell_class.astype(np.uint8)[np.argmin(distance, axis=0)]


def _spread_points(rng: np.random.Generator, n: int, min_distance: float) -> np.ndarray:
    """``n`` points in the unit square, each at least ``min_distance`` from the others where
    a few tries find such a spot (so that no stuff cell is a sliver). float32 [n, 2] (y, x)."""
    points: list[np.ndarray] = []
    for _ in range(n):
        for _attempt in range(20):
            p = rng.uniform(0, 1, size=2)
            if all(np.hypot(*(p - q)) >= min_distance for q in points):
                break
        points.append(p)
    return np.array(points, dtype=np.float32)


def _wave(rng: np.random.Generator, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Sum of two random low-frequency plane waves over y [H, 1] and x [1, W] in [0, 1]. float32 [H, W]."""
    total = np.zeros((y.shape[0], x.shape[1]), dtype=np.float32)
    for _ in range(2):
        fy, fx = rng.uniform(0.5, 2.5, size=2) * rng.choice([-1, 1], size=2)
        a = 2 * np.pi * fy * y + rng.uniform(0, 2 * np.pi)
        b = 2 * np.pi * fx * x
        # sin(a + b) expanded, so that only 1-D sines are evaluated.
        total += rng.uniform(0.03, 0.08) * (np.sin(a) * np.cos(b) + np.cos(a) * np.sin(b))
    return total


def _paint_stuff(rng: np.random.Generator, stuff: np.ndarray) -> np.ndarray:
    """Texture every stuff region with its class's texture. float32 [H, W, 3] in 0..255."""
    h, w = stuff.shape
    scale = min(h, w) / 256  # textures are designed at 256 px and scaled with the image
    image = np.zeros((h, w, 3), dtype=np.float32)
    for category_id in _present(stuff):
        region = stuff == category_id
        rows, cols = _bounding_box(region)
        texture = _STUFF_TEXTURES[category_id](rng, *_coordinates(rows, cols), scale)
        np.copyto(image[rows, cols], texture, where=region[rows, cols, None])
    return image


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice]:
    """Rows and columns of the smallest box around a non-empty bool mask [H, W]."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _coordinates(rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates of a box: float32 rows [h, 1] and columns [1, w]."""
    y = np.arange(rows.start, rows.stop, dtype=np.float32)[:, None]
    return y, np.arange(cols.start, cols.stop, dtype=np.float32)[None, :]


def _present(labels: np.ndarray) -> list[int]:
    """The values present in a small-integer label map, in increasing order."""
    return np.flatnonzero(np.bincount(labels.ravel())).tolist()


def _jitter(rng: np.random.Generator, rgb: tuple[float, float, float], amount: float = 25) -> np.ndarray:
    """A per-image variant of a class colour: shifted per channel and in brightness. float32 [3]."""
    shifted = np.asarray(rgb, dtype=np.float32) + rng.uniform(-amount, amount, size=3)
    return (shifted * rng.uniform(0.85, 1.15)).astype(np.float32)


# A stuff texture: (rng, y, x, scale) -> float32 [h, w, 3] in about 0..255, where y [h, 1] and
# x [1, w] are the pixel rows and columns to texture and scale = (shorter image side) / 256.
_Texture = Callable[[np.random.Generator, np.ndarray, np.ndarray, float], np.ndarray]


def _sky(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, scale: float) -> np.ndarray:
    """Smooth gradient from deep to pale blue, nearly vertical."""
    top, bottom = _jitter(rng, (70, 130, 215)), _jitter(rng, (175, 210, 245))
    tilt = rng.uniform(-0.3, 0.3)
    t = (y * math.cos(tilt) + x * math.sin(tilt)) / (256 * scale)
    return top + np.clip(t, 0, 1)[..., None] * (bottom - top)


def _grass(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, scale: float) -> np.ndarray:
    """Green with fine vertical streaks (noise blurred along columns)."""
    length = max(2, round(8 * scale))
    noise = np.cumsum(rng.standard_normal((y.shape[0] + length, x.shape[1]), dtype=np.float32), axis=0)
    streaks = (noise[length:] - noise[:-length]) / math.sqrt(length)  # unit std
    return _jitter(rng, (70, 140, 50)) + streaks[..., None] * np.array([12, 22, 8], dtype=np.float32)


def _water(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, scale: float) -> np.ndarray:
    """Blue-teal with horizontal waves whose crests meander."""
    wavelength, meander = rng.uniform(6, 11) * scale, rng.uniform(40, 90) * scale
    phase = 2.0 * np.sin(2 * np.pi * x / meander + rng.uniform(0, 2 * np.pi))
    waves = np.sin(2 * np.pi * y / wavelength + phase)
    return _jitter(rng, (35, 90, 150)) + waves[..., None] * np.array([10, 18, 24], dtype=np.float32)


def _wall(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, scale: float) -> np.ndarray:
    """Bricks (red or grey stone) in offset rows, with light mortar and per-brick shading."""
    brick_h = rng.uniform(9, 14) * scale
    brick_w = brick_h * rng.uniform(2.0, 2.6)
    mortar = max(1.0, 1.5 * scale)
    row = np.floor(y / brick_h)
    shifted_x = x + (row % 2) * brick_w / 2
    col = np.floor(shifted_x / brick_w)
    row, col = (row - row.min()).astype(int), (col - col.min()).astype(int)
    shade = rng.normal(0, 10, size=(row.max() + 1, col.max() + 1)).astype(np.float32)
    brick = _jitter(rng, (165, 75, 60) if rng.random() < 0.6 else (135, 130, 125))
    image = brick + shade[row, col][..., None]
    is_mortar = ((y % brick_h) < mortar) | ((shifted_x % brick_w) < mortar)
    return np.where(is_mortar[..., None], _jitter(rng, (205, 200, 190), 15), image)


def _sand(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, scale: float) -> np.ndarray:
    """Pale yellow with fine grain speckle and low diagonal dunes."""
    angle, wavelength = rng.uniform(0, np.pi), rng.uniform(30, 60) * scale
    dunes = 8 * np.sin(2 * np.pi * (x * math.cos(angle) + y * math.sin(angle)) / wavelength)
    grain = rng.uniform(-18, 18, size=dunes.shape).astype(np.float32)
    return _jitter(rng, (215, 190, 135)) + (dunes + grain)[..., None]


_STUFF_TEXTURES: dict[int, _Texture] = {
    _NAME_TO_ID["sky"]: _sky,
    _NAME_TO_ID["grass"]: _grass,
    _NAME_TO_ID["water"]: _water,
    _NAME_TO_ID["wall"]: _wall,
    _NAME_TO_ID["sand"]: _sand,
}


# --- things ----------------------------------------------------------------------------

# Circumradius per unit of "size radius", so that the shapes have comparable areas.
# The hexagon has the circle's area (1.0996 = sqrt(2 pi / (3 sqrt 3))): its corners stand out of
# the circle's outline by 10 % of the radius and its edges fall 5 % inside it.
_RADIUS_SCALE = {"circle": 1.0, "square": 1.15, "triangle": 1.35, "star": 1.3, "ring": 1.05, "hexagon": 1.0996}
_SHAPE_NAMES = {c["id"]: c["name"] for c in SHAPES_CATEGORIES if c["isthing"]}
_CORNERS = {"triangle": 3, "square": 4, "hexagon": 6}
_PLACEMENT_TRIES = 12
_ORDER_TRIES = 20
_YX = tuple[float, float]  # a point (row, column) in pixels


def _shape_mask(
    rng: np.random.Generator, shape: str, center: _YX, radius: float, angle: float, hw: tuple[int, int]
) -> np.ndarray:
    """Rasterise one shape. ``radius`` is the circumradius in pixels (ring holes are random);
    returns bool [H, W]."""
    canvas = Image.new("1", (hw[1], hw[0]))
    draw = ImageDraw.Draw(canvas)
    cy, cx = center
    if shape in ("circle", "ring"):
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=1)
        if shape == "ring":
            hole = radius * rng.uniform(0.45, 0.65)
            draw.ellipse([cx - hole, cy - hole, cx + hole, cy + hole], fill=0)
    elif shape == "star":
        draw.polygon(_polygon(center, np.tile([radius, 0.45 * radius], 5), angle), fill=1)
    else:
        draw.polygon(_polygon(center, np.full(_CORNERS[shape], radius), angle), fill=1)
    return np.array(canvas)  # a writable copy: the masks are handed to the user


def _polygon(center: _YX, radii: np.ndarray, angle: float) -> list[tuple[float, float]]:
    """Vertices (x, y) at evenly spaced angles from ``angle``, vertex k at distance ``radii[k]``."""
    theta = angle + 2 * np.pi * np.arange(len(radii)) / len(radii)
    return list(zip(center[1] + radii * np.cos(theta), center[0] + radii * np.sin(theta)))


def _random_shape(
    rng: np.random.Generator, category_id: int, center: _YX, size_radius: float, hw: tuple[int, int]
) -> np.ndarray:
    """A shape of ``category_id`` at ``center`` with random rotation. bool [H, W]."""
    shape = _SHAPE_NAMES[category_id]
    return _shape_mask(rng, shape, center, size_radius * _RADIUS_SCALE[shape], rng.uniform(0, 2 * np.pi), hw)


class _Occupancy:
    """Which placed thing is on top at each pixel, to keep every thing either fully hidden or
    at least ``min_visible`` visible as things are added in front."""

    def __init__(self, hw: tuple[int, int], min_visible: float):
        self.top = np.full(hw, -1, dtype=np.int32)  # index of the front-most thing, -1 = none
        self.visible: list[int] = []
        self.amodal: list[int] = []
        self.min_visible = min_visible

    def _still_visible(self, mask: np.ndarray) -> np.ndarray:
        """Visible pixels of each placed thing once ``mask`` is put in front. int [n]."""
        covered = np.bincount(self.top[mask] + 1, minlength=len(self.visible) + 1)[1:]
        return np.asarray(self.visible, dtype=np.int64) - covered

    def leaves_sliver(self, mask: np.ndarray) -> bool:
        """Would putting ``mask`` in front leave some thing with a visible part that is too small?"""
        left = self._still_visible(mask)
        return bool(np.any((left > 0) & (left < self.min_visible * np.asarray(self.amodal))))

    def add(self, mask: np.ndarray) -> None:
        self.visible = self._still_visible(mask).tolist()
        area = int(mask.sum())
        self.visible.append(area)
        self.amodal.append(area)
        self.top[mask] = len(self.visible) - 1


def _place_things(rng: np.random.Generator, config: ShapesConfig) -> list[_Thing]:
    """Choose and place the things of an image, back to front.

    A thing that finds no placement which keeps every thing either hidden or visible
    enough (``config.min_visible``) is left out.
    """
    hw = (config.height, config.width)
    occupancy = _Occupancy(hw, config.min_visible)
    classes = THING_IDS
    if config.classes_per_image:
        classes = sorted(int(c) for c in rng.choice(THING_IDS, config.classes_per_image, replace=False))
    kinds = ["shape"] * int(rng.integers(config.min_objects, config.max_objects + 1))
    if rng.random() < config.crowd:
        kinds.insert(int(rng.integers(0, len(kinds) + 1)), "crowd")
    things: list[_Thing] = []
    for kind in kinds:
        if kind == "crowd":
            thing = _place_crowd(rng, config, occupancy, classes)
        else:
            thing = _place_shape(rng, config, things, occupancy, classes)
        if thing is not None:
            occupancy.add(thing.mask)
            things.append(thing)
    return things


def _place_shape(
    rng: np.random.Generator, config: ShapesConfig, things: list[_Thing], occupancy: _Occupancy, classes: list[int]
) -> _Thing | None:
    """Place one shape (of one of ``classes``) in front of ``things``: overlapping a random
    earlier shape with probability ``config.overlap``, else clear of all of them (or overlapping least)."""
    hw = (config.height, config.width)
    side = min(hw)
    category_id = int(rng.choice(classes))
    size_radius = rng.uniform(config.min_size, config.max_size) * side / 2
    shapes = [t for t in things if not t.iscrowd]
    target = shapes[int(rng.integers(len(shapes)))] if shapes and rng.random() < config.overlap else None
    taken = occupancy.top >= 0
    best: tuple[int, _Thing] | None = None
    for _ in range(_PLACEMENT_TRIES):
        if target is not None:
            direction = rng.uniform(0, 2 * np.pi)
            distance = rng.uniform(0.2, 0.8) * (size_radius + target.radius)
            (ty, tx) = target.center
            center = (ty + distance * math.sin(direction), tx + distance * math.cos(direction))
        else:
            center = (rng.uniform(0, hw[0]), rng.uniform(0, hw[1]))
        # Keep at least about half of the shape inside the image.
        center = tuple(float(np.clip(c, size_radius / 2, n - size_radius / 2)) for c, n in zip(center, hw))
        mask = _random_shape(rng, category_id, center, size_radius, hw)
        if not mask.any() or occupancy.leaves_sliver(mask):
            continue
        thing = _Thing(category_id, mask, [mask], False, center, size_radius)
        if target is not None:
            if (mask & target.mask).any():
                return thing
            continue
        clash = int(np.count_nonzero(mask & taken))
        if clash == 0:
            return thing
        if best is None or clash < best[0]:
            best = (clash, thing)
    return None if best is None else best[1]


def _place_crowd(rng: np.random.Generator, config: ShapesConfig, occupancy: _Occupancy, classes: list[int]) -> _Thing | None:
    """A clump of small shapes of one of ``classes``, to be labelled as one crowd segment."""
    hw = (config.height, config.width)
    side = min(hw)
    category_id = int(rng.choice(classes))
    count = int(rng.integers(config.crowd_min_objects, config.crowd_max_objects + 1))
    for _ in range(_PLACEMENT_TRIES):
        center = (rng.uniform(0.15, 0.85) * hw[0], rng.uniform(0.15, 0.85) * hw[1])
        offsets = rng.normal(0, 0.07 * side, size=(count, 2))
        parts = [
            _random_shape(rng, category_id, (center[0] + dy, center[1] + dx), rng.uniform(0.025, 0.045) * side, hw)
            for dy, dx in offsets
        ]
        mask = np.logical_or.reduce(parts)
        if mask.any() and not occupancy.leaves_sliver(mask):
            return _Thing(category_id, mask, parts, True, center, 0.15 * side)
    return None


def rule_puts_in_front(rule: str, a_mask: np.ndarray, a_class: int, b_mask: np.ndarray, b_class: int) -> bool | None:
    """Does the depth ``rule`` put thing a in front of thing b? None where it does not decide.

    Args:
        a_mask, b_mask: bool [H, W], the amodal masks. a_class, b_class: category ids.
    """
    if rule == "size":
        a, b = int(a_mask.sum()), int(b_mask.sum())
    elif rule == "vertical":  # lower in the image = larger mean row = in front; negated for "smaller in front"
        a, b = -float(np.nonzero(a_mask)[0].mean()), -float(np.nonzero(b_mask)[0].mean())
    elif rule == "class":
        a, b = THING_IDS.index(a_class), THING_IDS.index(b_class)
    else:
        return None
    return None if a == b else a < b


def _order_by_rule(rng: np.random.Generator, things: list[_Thing], config: ShapesConfig) -> list[_Thing]:
    """The placed things re-ordered, back to front, so that each overlapping pair obeys
    ``config.depth_rule`` with probability ``config.depth_consistency``.

    Each overlapping pair draws its direction; a draw whose directions form a cycle, or whose
    order would leave some thing a sliver under ``config.min_visible``, is drawn again. When
    no draw of :data:`_ORDER_TRIES` works, the things that would be slivers are left out of
    the last acyclic order (rare: see tests/test_synthetic.py).
    """
    n = len(things)
    overlapping = [(a, b) for a, b in combinations(range(n), 2) if np.any(things[a].mask & things[b].mask)]
    decided = {
        (a, b): None
        if things[a].iscrowd or things[b].iscrowd
        else rule_puts_in_front(config.depth_rule, things[a].mask, things[a].category_id, things[b].mask, things[b].category_id)
        for a, b in overlapping
    }
    order: list[int] | None = None
    for _ in range(_ORDER_TRIES):
        behind: dict[int, set[int]] = {k: set() for k in range(n)}  # k -> the things k lies in front of
        for (a, b), rule_says_a in decided.items():
            if rule_says_a is None:
                a_in_front = bool(rng.random() < 0.5)
            else:
                a_in_front = rule_says_a if rng.random() < config.depth_consistency else not rule_says_a
            front, back = (a, b) if a_in_front else (b, a)
            behind[front].add(back)
        candidate = _back_to_front(behind)
        if candidate is None:
            continue
        order = candidate
        if _slivers([things[k] for k in order], config) == []:
            return [things[k] for k in order]
    if order is None:  # every draw had a cycle: the placement order
        order = list(range(n))
    kept = [things[k] for k in order]
    while slivers := _slivers(kept, config):
        kept.pop(slivers[0])
    return kept


def _back_to_front(behind: dict[int, set[int]]) -> list[int] | None:
    """An order, back to front, in which every thing comes after those it lies in front of
    (``behind[k]``); ties by index. None when the relation has a cycle."""
    left = dict(behind)
    order: list[int] = []
    while left:
        ready = [k for k, backs in left.items() if not backs & left.keys()]
        if not ready:
            return None
        order.append(min(ready))
        del left[order[-1]]
    return order


def _slivers(things: list[_Thing], config: ShapesConfig) -> list[int]:
    """Positions in ``things`` (back to front) whose visible part is above 0 but under
    ``config.min_visible`` of their amodal mask."""
    top = np.full((config.height, config.width), -1, dtype=np.int64)
    for k, thing in enumerate(things):
        top[thing.mask] = k
    visible = np.bincount(top[top >= 0], minlength=len(things))
    return [k for k, thing in enumerate(things) if 0 < visible[k] < config.min_visible * thing.mask.sum()]


def _paint_thing(rng: np.random.Generator, image: np.ndarray, thing: _Thing) -> None:
    """Paint a thing's parts over ``image`` (float32 [H, W, 3]) in two colours that each stand out
    from the part's surroundings (and from each other), with a random texture sized to the thing
    (solid colour for the small crowd members)."""
    for part in thing.parts:
        if not part.any():  # a crowd member entirely outside the image
            continue
        box = _bounding_box(part)
        inside = part[box]
        region = image[box]
        surroundings = _surroundings_colour(image, part)
        first = _contrasting_colour(rng, surroundings)
        second = _contrasting_colour(rng, surroundings, first)
        kind = "solid" if thing.iscrowd else str(rng.choice(_PATTERNS))
        pattern = _thing_pattern(rng, kind, inside.shape, 2 * thing.radius)
        region[inside] = (first + pattern[..., None] * (second - first))[inside]


#: the ring around a thing whose colour it must stand out from, in pixels
_SURROUNDING_MARGIN = 2


def _surroundings_colour(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean colour of what a thing will cover and of the ring of ``_SURROUNDING_MARGIN`` pixels
    around it (its surroundings as seen along its outline). float32 [3]."""
    rows, cols = _bounding_box(mask)
    m = _SURROUNDING_MARGIN
    top, left = max(rows.start - m, 0), max(cols.start - m, 0)
    bottom, right = min(rows.stop + m, mask.shape[0]), min(cols.stop + m, mask.shape[1])
    crop = mask[top:bottom, left:right]
    grown = np.zeros_like(crop)
    padded = np.pad(crop, m)
    for dy in range(2 * m + 1):  # a (2m + 1) x (2m + 1) dilation
        for dx in range(2 * m + 1):
            grown |= padded[dy : dy + crop.shape[0], dx : dx + crop.shape[1]]
    return image[top:bottom, left:right][grown].mean(axis=0)


def _contrasting_colour(rng: np.random.Generator, *others: np.ndarray, min_distance: float = 90) -> np.ndarray:
    """A random RGB colour at least ``min_distance`` from each of ``others`` (where 30 draws find
    one; else the draw farthest from the nearest of them). float32 [3]."""
    best, best_distance = None, -1.0
    for _ in range(30):
        colour = rng.uniform(0, 255, size=3).astype(np.float32)
        distance = min(float(np.linalg.norm(colour - other)) for other in others)
        if distance >= min_distance:
            return colour
        if distance > best_distance:
            best, best_distance = colour, distance
    return best


_PATTERNS = ("solid", "stripes", "checker", "dots")


def _thing_pattern(rng: np.random.Generator, kind: str, hw: tuple[int, int], diameter: float) -> np.ndarray:
    """A texture of one of the :data:`_PATTERNS`, rotated by a random angle, in [0, 1]
    (0 = first colour, 1 = second), with a period of a quarter to two fifths of the thing's
    ``diameter`` (so a stripe is as readable on a small thing as on a large one). float32 [h, w]."""
    if kind == "solid":
        return np.zeros(hw, dtype=np.float32)
    y, x = _coordinates(slice(0, hw[0]), slice(0, hw[1]))
    angle, period = rng.uniform(0, np.pi), rng.uniform(0.25, 0.4) * diameter
    u = (x * math.cos(angle) + y * math.sin(angle)) / period
    v = (-x * math.sin(angle) + y * math.cos(angle)) / period
    if kind == "stripes":
        pattern = (u % 1) < 0.5
    elif kind == "checker":
        pattern = (np.floor(u) + np.floor(v)) % 2 == 1
    else:  # dots
        pattern = ((u % 1) - 0.5) ** 2 + ((v % 1) - 0.5) ** 2 < 0.09
    return np.broadcast_to(pattern, hw).astype(np.float32)


# --- VOID --------------------------------------------------------------------------------


def _void_mask(rng: np.random.Generator, config: ShapesConfig) -> np.ndarray:
    """Unlabeled pixels: a border band and/or irregular blobs, each with probability
    ``config.void``. bool [H, W]."""
    h, w = config.height, config.width
    void = np.zeros((h, w), dtype=bool)
    if config.void_border > 0 and rng.random() < config.void:
        b = config.void_border
        void[:b], void[-b:], void[:, :b], void[:, -b:] = True, True, True, True
    if config.void_blobs > 0 and rng.random() < config.void:
        canvas = Image.new("1", (w, h))
        draw = ImageDraw.Draw(canvas)
        for _ in range(int(rng.integers(1, config.void_blobs + 1))):
            center = (rng.uniform(0, h), rng.uniform(0, w))
            radii = rng.uniform(0.6, 1.0, size=10) * rng.uniform(0.04, 0.1) * min(h, w)
            draw.polygon(_polygon(center, radii, 0.0), fill=1)
        void |= np.asarray(canvas)
    return void
