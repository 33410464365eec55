"""Cityscapes: its label table, and its ``gtFine`` annotations in COCO panoptic format.

The dataset on disk::

    ROOT/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    ROOT/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_{instanceIds,labelIds}.png   (+ _polygons.json)

:func:`prepare_cityscapes` adds, without changing any of those files:

* ``gtFine/cityscapes_panoptic_<split>.json`` and ``gtFine/cityscapes_panoptic_<split>/*_gtFine_panoptic.png``,
  exactly what cityscapesscripts' ``createPanopticImgs`` writes (``_trainId`` appended to both
  names with ``use_train_id``);
* ``gtFine/<split>/<city>/*_gtFine_labelTrainIds.png``: the 19-class semantic labels (trainIds
  0..18, 255 = ignore), under the name cityscapesscripts' ``createTrainIdLabelImgs`` uses.

The panoptic conversion of one ``instanceIds`` PNG (:func:`panoptic_from_instance_ids`):

* each distinct value is one segment and the value **is** the segment id (car #1 = 26001);
* a value >= 1000 is label ``value // 1000``, one object; a value < 1000 is label ``value``
  itself: a region without instances, or a *group* of objects (e.g. "cargroup"), which becomes
  ``iscrowd = 1`` when the label has instances;
* labels with ``ignoreInEval`` (unlabeled, ego vehicle, caravan, trailer...) become VOID (0);
* ``area`` is the pixel count and ``bbox`` ``[x, y, w, h]`` with ``w = x_max - x_min + 1``;
* image ids are strings ``<city>_<seq>_<frame>``; category ids are label ids (7..33) or,
  with ``use_train_id``, trainIds (0..18).

Its instance AP (the "AP" of Cityscapes tables) is :mod:`panopticlab.evaluation.cityscapes_instance`.
"""

from __future__ import annotations

import functools
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from panopticlab.data.coco_panoptic import write_panoptic_png
from panopticlab.errors import InputError
from panopticlab.fileio import atomic_path
from panopticlab.progress import ProgressFactory, no_progress
from panopticlab.resumable import remove_stale_partials, run_resumable, write_final_json
from panopticlab.structures import segment_stats


@dataclass(frozen=True)
class CityscapesLabel:
    """One row of the Cityscapes label table.

    Attributes:
        name: e.g. ``"car"``.
        id: the label id in ``*_labelIds.png`` and in submissions (-1: never in an image).
        train_id: the suggested training id, 0..18 for the 19 evaluated classes, 255 = ignore.
        category: the coarse group (``"flat"``, ``"vehicle"``...), with ``category_id``.
        has_instances: whether objects of this label are annotated one by one.
        ignore_in_eval: whether the benchmarks ignore its pixels (VOID in panoptic).
        color: RGB.
    """

    name: str
    id: int
    train_id: int
    category: str
    category_id: int
    has_instances: bool
    ignore_in_eval: bool
    color: tuple[int, int, int]


#: The 35 labels of Cityscapes (the facts of cityscapesscripts' ``helpers/labels.py``), in its order.
LABELS: tuple[CityscapesLabel, ...] = (
    # name, id, trainId, category, categoryId, hasInstances, ignoreInEval, color
    CityscapesLabel("unlabeled", 0, 255, "void", 0, False, True, (0, 0, 0)),
    CityscapesLabel("ego vehicle", 1, 255, "void", 0, False, True, (0, 0, 0)),
    CityscapesLabel("rectification border", 2, 255, "void", 0, False, True, (0, 0, 0)),
    CityscapesLabel("out of roi", 3, 255, "void", 0, False, True, (0, 0, 0)),
    CityscapesLabel("static", 4, 255, "void", 0, False, True, (0, 0, 0)),
    CityscapesLabel("dynamic", 5, 255, "void", 0, False, True, (111, 74, 0)),
    CityscapesLabel("ground", 6, 255, "void", 0, False, True, (81, 0, 81)),
    CityscapesLabel("road", 7, 0, "flat", 1, False, False, (128, 64, 128)),
    CityscapesLabel("sidewalk", 8, 1, "flat", 1, False, False, (244, 35, 232)),
    CityscapesLabel("parking", 9, 255, "flat", 1, False, True, (250, 170, 160)),
    CityscapesLabel("rail track", 10, 255, "flat", 1, False, True, (230, 150, 140)),
    CityscapesLabel("building", 11, 2, "construction", 2, False, False, (70, 70, 70)),
    CityscapesLabel("wall", 12, 3, "construction", 2, False, False, (102, 102, 156)),
    CityscapesLabel("fence", 13, 4, "construction", 2, False, False, (190, 153, 153)),
    CityscapesLabel("guard rail", 14, 255, "construction", 2, False, True, (180, 165, 180)),
    CityscapesLabel("bridge", 15, 255, "construction", 2, False, True, (150, 100, 100)),
    CityscapesLabel("tunnel", 16, 255, "construction", 2, False, True, (150, 120, 90)),
    CityscapesLabel("pole", 17, 5, "object", 3, False, False, (153, 153, 153)),
    CityscapesLabel("polegroup", 18, 255, "object", 3, False, True, (153, 153, 153)),
    CityscapesLabel("traffic light", 19, 6, "object", 3, False, False, (250, 170, 30)),
    CityscapesLabel("traffic sign", 20, 7, "object", 3, False, False, (220, 220, 0)),
    CityscapesLabel("vegetation", 21, 8, "nature", 4, False, False, (107, 142, 35)),
    CityscapesLabel("terrain", 22, 9, "nature", 4, False, False, (152, 251, 152)),
    CityscapesLabel("sky", 23, 10, "sky", 5, False, False, (70, 130, 180)),
    CityscapesLabel("person", 24, 11, "human", 6, True, False, (220, 20, 60)),
    CityscapesLabel("rider", 25, 12, "human", 6, True, False, (255, 0, 0)),
    CityscapesLabel("car", 26, 13, "vehicle", 7, True, False, (0, 0, 142)),
    CityscapesLabel("truck", 27, 14, "vehicle", 7, True, False, (0, 0, 70)),
    CityscapesLabel("bus", 28, 15, "vehicle", 7, True, False, (0, 60, 100)),
    CityscapesLabel("caravan", 29, 255, "vehicle", 7, True, True, (0, 0, 90)),
    CityscapesLabel("trailer", 30, 255, "vehicle", 7, True, True, (0, 0, 110)),
    CityscapesLabel("train", 31, 16, "vehicle", 7, True, False, (0, 80, 100)),
    CityscapesLabel("motorcycle", 32, 17, "vehicle", 7, True, False, (0, 0, 230)),
    CityscapesLabel("bicycle", 33, 18, "vehicle", 7, True, False, (119, 11, 32)),
    CityscapesLabel("license plate", -1, -1, "vehicle", 7, False, True, (0, 0, 142)),
)
LABEL_BY_ID: dict[int, CityscapesLabel] = {label.id: label for label in LABELS}
#: The 19 classes the benchmarks score, in label-id (= trainId) order.
EVALUATED_LABELS: tuple[CityscapesLabel, ...] = tuple(label for label in LABELS if not label.ignore_in_eval)
#: The 8 classes of the instance benchmark (person ... bicycle).
INSTANCE_LABELS: tuple[CityscapesLabel, ...] = tuple(label for label in EVALUATED_LABELS if label.has_instances)


def cityscapes_categories(use_train_id: bool = False) -> list[dict[str, Any]]:
    """The 19 evaluated classes as COCO panoptic ``categories``, as ``createPanopticImgs`` writes them:
    ``id`` (label id, or trainId), ``name``, ``color``, ``supercategory`` (the label's category), ``isthing``."""
    return [
        {
            "id": label.train_id if use_train_id else label.id,
            "name": label.name,
            "color": list(label.color),
            "supercategory": label.category,
            "isthing": int(label.has_instances),
        }
        for label in EVALUATED_LABELS
    ]


def train_id_table() -> np.ndarray:
    """Label id -> trainId lookup: uint8 [256], 255 for ignored ids and for ids that are no label."""
    table = np.full(256, 255, dtype=np.uint8)
    for label in LABELS:
        if label.id >= 0:
            table[label.id] = label.train_id if 0 <= label.train_id < 255 else 255
    return table


# --------------------------------------------------------------------------------------
# One image
# --------------------------------------------------------------------------------------


def read_label_png(png_file: str | os.PathLike) -> np.ndarray:
    """A single-channel label PNG (``instanceIds``: 16 bit, ``labelIds``: 8 bit) as int64 [H, W]."""
    png_file = Path(png_file)
    try:
        with Image.open(png_file) as im:
            if im.mode not in ("I", "I;16", "I;16B", "L"):
                raise InputError(f"{png_file}: expected a single-channel label PNG, got mode {im.mode}")
            return np.asarray(im).astype(np.int64)
    except FileNotFoundError:
        raise InputError(f"{png_file}: file not found") from None
    except (OSError, SyntaxError) as e:  # truncated, or not a PNG (PIL raises both)
        raise InputError(f"{png_file}: cannot read the PNG ({e})") from None


def panoptic_from_instance_ids(
    instance_ids: np.ndarray, *, use_train_id: bool = False, where: str = "instanceIds"
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Convert one ``*_gtFine_instanceIds.png`` to a panoptic id map and its ``segments_info``.

    Args:
        instance_ids: integer array [H, W] as read from the PNG.
        use_train_id: category ids are trainIds (0..18) instead of label ids (7..33).
        where: the file, for error messages.

    Returns:
        ``(id_map, segments_info)``: int32 [H, W] with 0 = VOID and segment id = instanceIds
        value elsewhere, and one dict ``{id, category_id, area, bbox, iscrowd}`` per segment in
        increasing id order.
    """
    segments, void_values = [], []
    for value, area, bbox in segment_stats(instance_ids):
        label_id = value if value < 1000 else value // 1000
        label = LABEL_BY_ID.get(label_id) if label_id >= 0 else None
        if label is None:
            raise InputError(f"{where}: value {value} is not a Cityscapes label id (or label id x 1000 + instance)")
        if label.ignore_in_eval:
            void_values.append(value)
            continue
        segments.append(
            {
                "id": int(value),
                "category_id": label.train_id if use_train_id else label.id,
                "area": int(area),
                "bbox": bbox,
                "iscrowd": int(value < 1000 and label.has_instances),
            }
        )
    id_map = np.where(np.isin(instance_ids, void_values), 0, instance_ids).astype(np.int32)
    return id_map, segments


def train_ids_from_label_ids(label_ids: np.ndarray, *, where: str = "labelIds") -> np.ndarray:
    """``*_gtFine_labelIds.png`` values -> trainIds: uint8 [H, W], 255 = ignore."""
    known = np.zeros(256, dtype=bool)
    known[[label.id for label in LABELS if label.id >= 0]] = True
    if label_ids.min() < 0 or label_ids.max() > 255 or not known[label_ids].all():
        bad = sorted(set(np.unique(label_ids).tolist()) - {label.id for label in LABELS})
        raise InputError(f"{where}: value(s) {bad[:10]} are not Cityscapes label ids")
    return train_id_table()[label_ids]


# --------------------------------------------------------------------------------------
# A whole dataset: `panopticlab prepare cityscapes ROOT`
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ImageJob:
    """The files of one image: the two inputs and the two outputs."""

    image_id: str
    instance_png: str
    label_png: str
    panoptic_png: str
    train_id_png: str


def panoptic_base_name(split: str, use_train_id: bool = False) -> str:
    """``cityscapes_panoptic_<split>`` (+ ``_trainId``): the JSON's stem and the PNG folder's name."""
    return f"cityscapes_panoptic_{split}" + ("_trainId" if use_train_id else "")


def prepare_cityscapes(
    root: str | os.PathLike,
    splits: Sequence[str] | None = None,
    *,
    use_train_id: bool = False,
    workers: int | None = None,
    overwrite: bool = False,
    chunk_size: int = 32,
    progress: ProgressFactory = no_progress,
) -> list[dict[str, Any]]:
    """Write the panoptic ground truth and the trainId semantics of a Cityscapes tree.

    Resumable: each image's outputs are written atomically and kept; finished chunks of
    images are recorded in ``gtFine/.<json stem>.prepare/``; the JSON is written last, and a
    split whose JSON and PNGs all exist is skipped. An existing JSON that differs from what
    this computes is an error unless ``overwrite``.

    Args:
        root: the folder holding ``gtFine/`` (and ``leftImg8bit/``).
        splits: e.g. ``["train", "val"]``; default: those of val, train, test present.
        use_train_id: categories by trainId (``cityscapes_panoptic_<split>_trainId.json``).
        workers: processes (default: one per usable CPU; 1 = in this process).
        overwrite: rebuild every output.
        chunk_size: images per unit of work (and of resumption).
        progress: a progress factory (see :mod:`panopticlab.progress`).

    Returns:
        One report per split: ``split``, ``images``, ``json``, ``panoptic_folder``, ``skipped``.
    """
    gt_fine = Path(root) / "gtFine"
    if not gt_fine.is_dir():
        raise InputError(f"{root}: no gtFine/ folder (expected the Cityscapes layout gtFine/<split>/<city>/...)")
    if splits is None:
        splits = [s for s in ("val", "train", "test") if (gt_fine / s).is_dir()]
        if not splits:
            raise InputError(f"{gt_fine}: no val/, train/ or test/ folder")
    reports = []
    for split in splits:
        files = sorted(str(p) for p in (gt_fine / split).glob("*/*_instanceIds.png"))
        if not files:
            raise InputError(f"{gt_fine / split}: no <city>/*_instanceIds.png files")
        base = panoptic_base_name(split, use_train_id)
        json_file, png_folder = gt_fine / f"{base}.json", gt_fine / base
        jobs = []
        for f in files:
            name = os.path.basename(f)
            jobs.append(
                _ImageJob(
                    image_id=name.replace("_gtFine_instanceIds.png", ""),
                    instance_png=f,
                    label_png=f.replace("_instanceIds.png", "_labelIds.png"),
                    panoptic_png=str(png_folder / name.replace("_instanceIds.png", "_panoptic.png")),
                    train_id_png=f.replace("_instanceIds.png", "_labelTrainIds.png"),
                )
            )
        report = {"split": split, "images": len(jobs), "json": str(json_file), "panoptic_folder": str(png_folder)}
        outputs_exist = all(os.path.exists(j.panoptic_png) and os.path.exists(j.train_id_png) for j in jobs)
        if json_file.exists() and outputs_exist and not overwrite:
            reports.append({**report, "skipped": True})
            continue
        png_folder.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(png_folder)
        for city in {os.path.dirname(j.train_id_png) for j in jobs}:
            remove_stale_partials(Path(city), "*_labelTrainIds.png")
        with progress(f"cityscapes {split}", len(jobs)) as advance:
            entries = run_resumable(
                jobs,
                key=lambda j: j.image_id,
                work=functools.partial(_convert_chunk, use_train_id=use_train_id, overwrite=overwrite),
                state_dir=gt_fine / f".{base}.prepare",
                chunk_size=chunk_size,
                workers=workers,
                advance=advance,
                restart=overwrite,
            )
        document = {
            "images": [e["image"] for e in entries],
            "annotations": [e["annotation"] for e in entries],
            "categories": cityscapes_categories(use_train_id),
        }
        write_final_json(json_file, document, overwrite=overwrite)
        shutil.rmtree(gt_fine / f".{base}.prepare", ignore_errors=True)
        reports.append({**report, "skipped": False})
    return reports


def _convert_chunk(jobs: list[_ImageJob], *, use_train_id: bool, overwrite: bool) -> list[dict[str, Any]]:
    return [_convert_image(job, use_train_id=use_train_id, overwrite=overwrite) for job in jobs]


def _convert_image(job: _ImageJob, *, use_train_id: bool, overwrite: bool) -> dict[str, Any]:
    """One image's panoptic PNG and trainId PNG (each written unless already there), and its JSON entries."""
    instance_ids = read_label_png(job.instance_png)
    id_map, segments = panoptic_from_instance_ids(instance_ids, use_train_id=use_train_id, where=job.instance_png)
    if overwrite or not os.path.exists(job.panoptic_png):
        write_panoptic_png(job.panoptic_png, id_map)
    if overwrite or not os.path.exists(job.train_id_png):
        label_ids = read_label_png(job.label_png)
        if label_ids.shape != instance_ids.shape:
            raise InputError(f"{job.label_png}: size {label_ids.shape} differs from {job.instance_png} {instance_ids.shape}")
        train_ids = train_ids_from_label_ids(label_ids, where=job.label_png)
        with atomic_path(job.train_id_png) as tmp:
            Image.fromarray(train_ids).save(tmp, format="PNG")
    height, width = instance_ids.shape
    return {
        "image": {
            "id": job.image_id,
            "width": int(width),
            "height": int(height),
            "file_name": os.path.basename(job.instance_png).replace("_instanceIds.png", "_leftImg8bit.png"),
        },
        "annotation": {
            "image_id": job.image_id,
            "file_name": os.path.basename(job.panoptic_png),
            "segments_info": segments,
        },
    }
