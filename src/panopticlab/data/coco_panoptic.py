"""Reading and writing the COCO panoptic format: a JSON file plus one RGB id PNG per image.

The JSON holds ``images`` (id, file_name, height, width), ``annotations`` (one per image:
image_id, file_name of the PNG, ``segments_info``) and ``categories`` (id, name, isthing,
color). Each PNG pixel encodes a segment id as ``R + 256 G + 256^2 B``; 0 is VOID.

Everything read is checked, and a problem raises :class:`~panopticlab.errors.InputError`
naming the file, the image and the segment:

* an id in the PNG that ``segments_info`` does not list;
* a segment listed in ``segments_info`` with no pixels in the PNG;
* an ``area`` that disagrees with the pixel count (an error with ``strict=True``, else a warning);
* a PNG whose size differs from the image entry;
* a missing file, a category that does not exist, a duplicate id.

:class:`Categories` is the one place where dataset category ids (COCO 1..200, Cityscapes
7..33) are mapped to the contiguous ids 0..C-1 that models use.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from panopticlab.errors import InputError
from panopticlab.fileio import atomic_path, read_json, write_json
from panopticlab.structures import PanopticResult, Segment, id2rgb, segment_stats


class Categories:
    """The categories of a dataset, and the mapping dataset id <-> contiguous id.

    Contiguous ids follow increasing dataset id (COCO's and detectron2's order), stuff and
    things together: for COCO panoptic, person (1) -> 0 ... wall-other-merged (200) -> 132.

    Args:
        categories: COCO category dicts with at least ``id``, ``name`` and ``isthing``
            (``color`` and ``supercategory`` are kept when present).
        source: the file they came from, for error messages.
    """

    def __init__(self, categories: Sequence[dict[str, Any]], source: str | os.PathLike = "<categories>"):
        self.source = str(source)
        checked = []
        for k, c in enumerate(categories):
            if not isinstance(c, dict) or not {"id", "name", "isthing"} <= c.keys():
                raise InputError(f"{self.source}: category #{k} needs 'id', 'name' and 'isthing', got {c!r}")
            checked.append(c)
        self._by_id = {int(c["id"]): c for c in checked}
        if len(self._by_id) != len(checked):
            raise InputError(f"{self.source}: duplicate category ids")
        #: dataset ids in contiguous order
        self.ids: list[int] = sorted(self._by_id)
        self._contiguous = {cat_id: k for k, cat_id in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, category_id: object) -> bool:
        return category_id in self._by_id

    def __getitem__(self, category_id: int) -> dict[str, Any]:
        try:
            return self._by_id[category_id]
        except KeyError:
            raise InputError(f"{self.source}: category {category_id} does not exist") from None

    @property
    def thing_ids(self) -> list[int]:
        return [i for i in self.ids if self._by_id[i]["isthing"]]

    @property
    def stuff_ids(self) -> list[int]:
        return [i for i in self.ids if not self._by_id[i]["isthing"]]

    @property
    def names(self) -> list[str]:
        """Names in contiguous order."""
        return [self._by_id[i]["name"] for i in self.ids]

    def isthing(self, category_id: int) -> bool:
        return bool(self[category_id]["isthing"])

    def color(self, category_id: int) -> tuple[int, int, int]:
        """The category's RGB colour, or a fixed pseudo-random one when the file gives none."""
        c = self[category_id]
        if "color" in c:
            return tuple(int(v) for v in c["color"])  # type: ignore[return-value]
        rng = np.random.default_rng(category_id)
        return tuple(int(v) for v in rng.integers(40, 256, size=3))  # type: ignore[return-value]

    def to_contiguous(self, category_id: int) -> int:
        """Dataset id -> contiguous id in 0..len-1."""
        try:
            return self._contiguous[category_id]
        except KeyError:
            raise InputError(f"{self.source}: category {category_id} does not exist") from None

    def from_contiguous(self, contiguous_id: int) -> int:
        """Contiguous id -> dataset id."""
        return self.ids[contiguous_id]

    def to_list(self) -> list[dict[str, Any]]:
        """The category dicts in contiguous order, for writing a JSON file."""
        return [self._by_id[i] for i in self.ids]


@dataclass
class PanopticDataset:
    """The contents of a COCO panoptic JSON file, indexed by image id.

    Attributes:
        json_file: where it was read from.
        images: image entries in file order.
        annotations: image id -> its annotation (``segments_info`` and PNG ``file_name``).
        categories: the dataset's :class:`Categories`.
        raw: the whole JSON document.
    """

    json_file: Path
    images: list[dict[str, Any]]
    annotations: dict[Any, dict[str, Any]]
    categories: Categories
    raw: dict[str, Any]

    def __post_init__(self) -> None:
        self._images_by_id = {img["id"]: img for img in self.images}  # image() is called per item

    @property
    def image_ids(self) -> list[Any]:
        return [img["id"] for img in self.images]

    def image(self, image_id: Any) -> dict[str, Any]:
        """The image entry of ``image_id`` (a dict lookup)."""
        try:
            return self._images_by_id[image_id]
        except KeyError:
            raise InputError(f"{self.json_file}: no image with id {image_id!r}") from None


def load_panoptic_json(json_file: str | os.PathLike) -> PanopticDataset:
    """Read and check a COCO panoptic JSON file.

    Checks the structure (required keys and their types), that image and segment ids are
    unique, that each annotation belongs to a listed image, and that every segment's
    category exists. Pixel-level checks need the PNGs: see :func:`read_panoptic_annotation`.
    """
    json_file = Path(json_file)
    raw = read_json(json_file)
    if not isinstance(raw, dict):
        raise InputError(f"{json_file}: expected a JSON object with 'images', 'annotations' and 'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(raw.get(key), list):
            raise InputError(f"{json_file}: missing the list '{key}'")
    categories = Categories(raw["categories"], source=json_file)

    images = raw["images"]
    image_ids = set()
    for k, img in enumerate(images):
        if not isinstance(img, dict) or not {"id", "file_name"} <= img.keys():
            raise InputError(f"{json_file}: images[{k}] needs 'id' and 'file_name'")
        if img["id"] in image_ids:
            raise InputError(f"{json_file}: image id {img['id']!r} appears twice in 'images'")
        image_ids.add(img["id"])

    annotations: dict[Any, dict[str, Any]] = {}
    for k, ann in enumerate(raw["annotations"]):
        if not isinstance(ann, dict) or not {"image_id", "file_name", "segments_info"} <= ann.keys():
            raise InputError(f"{json_file}: annotations[{k}] needs 'image_id', 'file_name' and 'segments_info'")
        image_id = ann["image_id"]
        where = f"{json_file}: image {image_id!r}"
        if image_id not in image_ids:
            raise InputError(f"{where}: has an annotation but is not listed in 'images'")
        if image_id in annotations:
            raise InputError(f"{where}: has two annotations")
        segment_ids = set()
        for s in ann["segments_info"]:
            if not isinstance(s, dict) or not {"id", "category_id"} <= s.keys():
                raise InputError(f"{where}: a segment needs 'id' and 'category_id', got {s!r}")
            if s["id"] in segment_ids:
                raise InputError(f"{where}, segment {s['id']}: listed twice in segments_info")
            if s["id"] == 0:
                raise InputError(f"{where}: segment id 0 is VOID and cannot be listed in segments_info")
            if s["category_id"] not in categories:
                raise InputError(f"{where}, segment {s['id']}: category {s['category_id']} does not exist")
            segment_ids.add(s["id"])
        annotations[image_id] = ann
    return PanopticDataset(json_file, images, annotations, categories, raw)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOR_TYPES = {0: "grayscale", 2: "RGB", 3: "palette", 4: "grayscale+alpha", 6: "RGBA"}


def decode_rgba_pyspng(data: bytes) -> np.ndarray:
    """PNG bytes -> uint8 [H, W, 4] with pyspng (libspng), the fastest decoder."""
    import pyspng

    return pyspng.load(data, format="RGBA")


def decode_rgba_pil(data: bytes) -> np.ndarray:
    """PNG bytes -> uint8 [H, W, 4] with Pillow."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGBA"))


def _pick_decoder() -> Callable[[bytes], np.ndarray]:
    """pyspng where it is installed (a dependency on Linux x86-64), else Pillow. Measured per
    512x1024 id PNG on one core: pyspng 3.7 ms, Pillow 9.7 ms (``benchmarks/bench_pq.py``)."""
    try:
        import pyspng  # noqa: F401
    except ImportError:
        return decode_rgba_pil
    return decode_rgba_pyspng


_decode_rgba = _pick_decoder()


def read_panoptic_png(png_file: str | os.PathLike, *, where: str = "") -> np.ndarray:
    """Read an RGB id PNG: the one reader of panoptic PNGs, for datasets and for evaluation.

    Only 8-bit RGB and RGBA PNGs are accepted (alpha is ignored, as in panopticapi); a grey,
    palette or 16-bit PNG raises :class:`InputError` rather than give ids that mean nothing.
    ``where`` (e.g. the image id) prefixes error messages.

    Returns:
        int32 array [H, W] of segment ids ``R + 256 G + 256^2 B`` (0 = VOID).
    """
    prefix = f"{where}: " if where else ""
    try:
        data = Path(png_file).read_bytes()
    except FileNotFoundError:
        raise InputError(f"{prefix}{png_file}: file not found") from None
    except OSError as e:
        raise InputError(f"{prefix}{png_file}: cannot read the PNG ({e.strerror or e})") from None
    if len(data) < 33 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise InputError(f"{prefix}{png_file}: cannot read the PNG (not a PNG file)")
    bit_depth, color_type = data[24], data[25]
    if bit_depth != 8 or color_type not in (2, 6):
        kind = _COLOR_TYPES.get(color_type, f"color type {color_type}")
        raise InputError(f"{prefix}{png_file}: expected an 8-bit RGB or RGBA id PNG, got {bit_depth}-bit {kind}")
    try:
        rgba = _decode_rgba(data)
    except Exception as e:  # every decoder has its own exception types
        raise InputError(f"{prefix}{png_file}: cannot read the PNG ({e})") from None
    # Read as little-endian uint32, each pixel is R + 256 G + 256^2 B + 256^3 A; masking off
    # alpha in place avoids allocating (and page-faulting) a second full-size array. The ids
    # are below 2^24, so the same bytes read as int32 are the same numbers.
    ids = rgba.view("<u4")[..., 0]
    ids &= np.uint32(0xFFFFFF)
    return ids.view(np.int32)


def write_panoptic_png(png_file: str | os.PathLike, id_map: np.ndarray, *, overwrite: bool = True) -> None:
    """Write an id map [H, W] as an RGB id PNG, atomically."""
    with atomic_path(png_file, overwrite=overwrite) as tmp:
        Image.fromarray(id2rgb(id_map)).save(tmp, format="PNG")


def read_panoptic_annotation(
    dataset: PanopticDataset,
    image_id: Any,
    png_folder: str | os.PathLike,
    *,
    strict: bool = True,
) -> PanopticResult:
    """Read one image's panoptic ground truth and check it against its PNG.

    Args:
        dataset: the loaded JSON (:func:`load_panoptic_json`).
        image_id: which image.
        png_folder: the folder of the annotation PNGs.
        strict: an ``area`` that disagrees with the PNG is an error if True, a warning if not.

    Returns:
        The result, with ``area`` and ``bbox`` as in the JSON (pixel counts where absent).
    """
    if image_id not in dataset.annotations:
        raise InputError(f"{dataset.json_file}: image {image_id!r} has no annotation")
    ann = dataset.annotations[image_id]
    png_file = Path(png_folder) / ann["file_name"]
    id_map = read_panoptic_png(png_file)
    where = f"{png_file} (image {image_id!r})"

    image = dataset.image(image_id)
    if "height" in image and "width" in image and id_map.shape != (image["height"], image["width"]):
        raise InputError(
            f"{where}: PNG is {id_map.shape[1]}x{id_map.shape[0]} but {dataset.json_file} "
            f"gives {image['width']}x{image['height']}"
        )

    pixel_stats = {seg_id: (area, bbox) for seg_id, area, bbox in segment_stats(id_map)}
    listed = {s["id"] for s in ann["segments_info"]}
    unlisted = sorted(set(pixel_stats) - listed - {0})
    if unlisted:
        raise InputError(f"{where}: segment id(s) {unlisted[:10]} are in the PNG but not in segments_info")

    segments = []
    for s in ann["segments_info"]:
        if s["id"] not in pixel_stats:
            raise InputError(f"{where}, segment {s['id']}: listed in segments_info but has no pixels in the PNG")
        pixel_area, pixel_bbox = pixel_stats[s["id"]]
        area = s.get("area", pixel_area)
        if area != pixel_area:
            message = f"{where}, segment {s['id']}: area is {area} in the JSON but {pixel_area} pixels in the PNG"
            if strict:
                raise InputError(message)
            warnings.warn(message, stacklevel=2)
        segments.append(
            Segment(
                id=int(s["id"]),
                category_id=int(s["category_id"]),
                isthing=dataset.categories.isthing(s["category_id"]),
                area=int(area),
                bbox=[int(v) for v in s.get("bbox", pixel_bbox)],
                iscrowd=bool(s.get("iscrowd", 0)),
                score=s.get("score"),
            )
        )
    return PanopticResult(id_map, segments)


def panoptic_annotation(image_id: Any, png_file_name: str, result: PanopticResult) -> dict[str, Any]:
    """The JSON ``annotations`` entry of one image."""
    return {"image_id": image_id, "file_name": png_file_name, "segments_info": result.segments_info()}


def write_panoptic_json(
    json_file: str | os.PathLike,
    images: Iterable[dict[str, Any]],
    annotations: Iterable[dict[str, Any]],
    categories: Categories | Sequence[dict[str, Any]],
    *,
    info: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> None:
    """Write a COCO panoptic JSON file atomically (refusing to overwrite unless asked)."""
    category_list = categories.to_list() if isinstance(categories, Categories) else list(categories)
    document = {
        "info": info or {},
        "images": list(images),
        "annotations": list(annotations),
        "categories": category_list,
    }
    write_json(json_file, document, overwrite=overwrite)
