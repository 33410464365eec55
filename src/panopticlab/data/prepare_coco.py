"""``panopticlab prepare coco``: the derived files COCO needs for SOGNet and for semantic tools, built once, resumably.

``prepare_coco(ROOT)`` reads the standard COCO layout::

    ROOT/annotations/panoptic_{train,val}2017.json
    ROOT/annotations/panoptic_{train,val}2017/*.png     (or ROOT/panoptic_{train,val}2017/, detectron2's place)
    ROOT/annotations/instances_{train,val}2017.json     (optional: SOGNet's amodal masks)

and writes, under ``ROOT/panopticlab/`` only:

* ``semantic_<split>/<name>.png``: uint8 semantic labels, contiguous category ids (the
  model's ids, :class:`~panopticlab.data.coco_panoptic.Categories`), 255 = VOID; crowd
  regions keep their category;
* ``instances_<split>.json``: the instances file with every annotation given
  ``panoptic_segment_id``, the id of its visible panoptic segment (0 when it has none, e.g.
  fully hidden), which :class:`~panopticlab.data.dataset.CocoPanopticDataset` reads
  (see :func:`match_instances_to_segments` for the matching).

Resumable (:mod:`panopticlab.resumable`, which ``prepare_cityscapes`` in
:mod:`panopticlab.data.cityscapes` uses too): per-image outputs are written atomically (a
temporary name, then a rename) and kept; images are processed in chunks whose results are
recorded in a hidden state folder, so a rerun after an interruption redoes at most the chunks
that were in flight; the final JSON is written last and the state folder removed after it. A
split whose final JSON and per-image outputs all exist is skipped. One ``prepare`` per dataset
root at a time.
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

from panopticlab.data.coco_instances import decode_segmentation
from panopticlab.data.coco_panoptic import Categories, PanopticDataset, load_panoptic_json, read_panoptic_annotation
from panopticlab.errors import InputError
from panopticlab.fileio import atomic_path, read_json
from panopticlab.progress import ProgressFactory, no_progress
from panopticlab.resumable import remove_stale_partials, run_resumable, write_final_json
from panopticlab.structures import PanopticResult

#: Where ``prepare coco`` writes, inside the dataset root.
OUTPUT_FOLDER = "panopticlab"


def semantic_from_panoptic(result: PanopticResult, categories: Categories) -> np.ndarray:
    """Semantic labels of a panoptic result: uint8 [H, W], contiguous category ids, 255 = VOID.

    Crowd segments keep their category. Needs fewer than 255 categories.
    """
    if len(categories) > 255:
        raise InputError(f"{categories.source}: {len(categories)} categories do not fit a uint8 semantic PNG")
    id_map = result.id_map
    if not result.segments:
        return np.full(id_map.shape, 255, dtype=np.uint8)
    ids = np.array([s.id for s in result.segments], dtype=np.int64)
    labels = np.array([categories.to_contiguous(s.category_id) for s in result.segments], dtype=np.uint8)
    order = np.argsort(ids)
    ids, labels = ids[order], labels[order]
    pos = np.searchsorted(ids, id_map).clip(max=len(ids) - 1)
    return np.where(ids[pos] == id_map, labels[pos], 255).astype(np.uint8)


def match_instances_to_segments(
    instance_masks: np.ndarray,
    instance_categories: Sequence[int],
    instance_crowd: Sequence[bool],
    panoptic: PanopticResult,
) -> list[int]:
    """The visible panoptic segment of each (amodal, possibly overlapping) instance mask.

    A pair is a candidate when instance and segment have the same category, the same crowd
    flag and share pixels; its score is their mask IoU. Pairs are taken in decreasing score
    (ties: lower instance index, then lower segment index), each instance and each segment at
    most once: every pair taken is the mutual best match of what remains. An occluded
    instance whose larger overlap is with the segment of the object in front of it loses that
    segment to the front object (whose IoU with it is higher) and gets its own visible part.

    Args:
        instance_masks: bool [N, H, W].
        instance_categories: [N] dataset category ids.
        instance_crowd: [N] iscrowd flags.
        panoptic: the image's panoptic ground truth (same H, W).

    Returns:
        [N] segment ids, 0 where an instance has no segment (e.g. entirely hidden).
    """
    n = len(instance_masks)
    things = [s for s in panoptic.segments if s.isthing]
    if n == 0 or not things:
        return [0] * n
    seg_ids = np.array([s.id for s in things], dtype=np.int64)
    order = np.argsort(seg_ids)
    pos = np.searchsorted(seg_ids[order], panoptic.id_map).clip(max=len(things) - 1)
    # index of the thing segment under each pixel, -1 elsewhere
    thing_index = np.where(seg_ids[order][pos] == panoptic.id_map, order[pos], -1)
    seg_area = np.bincount(thing_index.ravel() + 1, minlength=len(things) + 1)[1:]

    candidates = []
    for i in range(n):
        mask = instance_masks[i]
        area = int(mask.sum())
        if area == 0:
            continue
        overlap = np.bincount(thing_index[mask] + 1, minlength=len(things) + 1)[1:]
        for j in np.flatnonzero(overlap):
            s = things[j]
            if s.category_id != instance_categories[i] or bool(s.iscrowd) != bool(instance_crowd[i]):
                continue
            inter = int(overlap[j])
            candidates.append((-inter / (area + int(seg_area[j]) - inter), i, int(j)))
    candidates.sort()
    matched = [0] * n
    taken: set[int] = set()
    for _, i, j in candidates:
        if matched[i] == 0 and j not in taken:
            matched[i] = things[j].id
            taken.add(j)
    return matched


@dataclass(frozen=True)
class _CocoJob:
    """One image: its JSON entries, where its semantic PNG goes, and its instance annotations
    as ``(index in the instances file, category_id, iscrowd, segmentation)``."""

    image: dict[str, Any]
    annotation: dict[str, Any]
    semantic_png: str
    instances: tuple[tuple[int, int, bool, Any], ...]


def prepare_coco(
    root: str | os.PathLike,
    splits: Sequence[str] | None = None,
    *,
    workers: int | None = None,
    overwrite: bool = False,
    chunk_size: int = 64,
    progress: ProgressFactory = no_progress,
) -> list[dict[str, Any]]:
    """Build ``ROOT/panopticlab/semantic_<split>/`` and ``ROOT/panopticlab/instances_<split>.json``.

    Args:
        root: the COCO folder (holding ``annotations/``).
        splits: e.g. ``["val2017"]``; default: train2017 and val2017, those present.
        workers: processes (default: one per usable CPU; 1 = in this process).
        overwrite: rebuild every output.
        chunk_size: images per unit of work (and of resumption).
        progress: a progress factory (see :mod:`panopticlab.progress`).

    Returns:
        One report per split: ``split``, ``images``, ``semantic_folder``, ``instances_json``
        (None without an instances file), ``instances``, ``matched``, ``skipped``.
    """
    root = Path(root)
    annotations = root / "annotations"
    if splits is None:
        splits = [s for s in ("train2017", "val2017") if (annotations / f"panoptic_{s}.json").is_file()]
        if not splits:
            raise InputError(f"{annotations}: no panoptic_train2017.json or panoptic_val2017.json")
    return [
        _prepare_coco_split(root, split, workers=workers, overwrite=overwrite, chunk_size=chunk_size, progress=progress)
        for split in splits
    ]


def coco_panoptic_folder(root: Path, split: str) -> Path:
    """``annotations/panoptic_<split>/`` (where the official zip unpacks) or ``panoptic_<split>/`` (detectron2's)."""
    for folder in (root / "annotations" / f"panoptic_{split}", root / f"panoptic_{split}"):
        if folder.is_dir():
            return folder
    raise InputError(
        f"{root}: no folder of panoptic PNGs for {split} (looked for annotations/panoptic_{split}/ and panoptic_{split}/; "
        f"unzip annotations/panoptic_{split}.zip)"
    )


def _prepare_coco_split(
    root: Path, split: str, *, workers: int | None, overwrite: bool, chunk_size: int, progress: ProgressFactory
) -> dict[str, Any]:
    panoptic_json = root / "annotations" / f"panoptic_{split}.json"
    png_folder = coco_panoptic_folder(root, split)
    panoptic = load_panoptic_json(panoptic_json)
    if len(panoptic.categories) > 255:
        raise InputError(f"{panoptic_json}: {len(panoptic.categories)} categories do not fit a uint8 semantic PNG")
    instances_file = root / "annotations" / f"instances_{split}.json"
    instances_doc = read_json(instances_file) if instances_file.is_file() else None
    by_image = _instances_by_image(instances_doc, instances_file, panoptic) if instances_doc is not None else {}

    out = root / OUTPUT_FOLDER
    semantic_folder = out / f"semantic_{split}"
    joined_json = out / f"instances_{split}.json"
    jobs = []
    for image_id in panoptic.image_ids:
        if image_id not in panoptic.annotations:
            continue
        annotation = panoptic.annotations[image_id]
        semantic_png = semantic_folder / Path(annotation["file_name"]).with_suffix(".png").name
        jobs.append(_CocoJob(panoptic.image(image_id), annotation, str(semantic_png), tuple(by_image.get(image_id, ()))))
    report: dict[str, Any] = {
        "split": split,
        "images": len(jobs),
        "semantic_folder": str(semantic_folder),
        "instances_json": str(joined_json) if instances_doc is not None else None,
    }
    done = all(os.path.exists(j.semantic_png) for j in jobs) and (instances_doc is None or joined_json.exists())
    if done and not overwrite:
        return {**report, "skipped": True}

    semantic_folder.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(semantic_folder)
    remove_stale_partials(out)
    state_dir = out / f".prepare_{split}"
    work = functools.partial(
        _coco_chunk,
        categories=panoptic.categories,
        json_file=str(panoptic_json),
        png_folder=str(png_folder),
        instances_json=str(instances_file),
        overwrite=overwrite,
    )
    with progress(f"coco {split}", len(jobs)) as advance:
        results = run_resumable(
            jobs,
            key=lambda j: str(j.image["id"]),
            work=work,
            state_dir=state_dir,
            chunk_size=chunk_size,
            workers=workers,
            advance=advance,
            restart=overwrite,
        )
    matched_segment = {index: segment_id for r in results for index, segment_id in r["matches"]}
    if instances_doc is not None:
        joined = dict(instances_doc)
        joined["annotations"] = [
            {**ann, "panoptic_segment_id": matched_segment.get(k, 0)} for k, ann in enumerate(instances_doc["annotations"])
        ]
        write_final_json(joined_json, joined, overwrite=overwrite)
        report["instances"] = len(joined["annotations"])
        report["matched"] = sum(1 for a in joined["annotations"] if a["panoptic_segment_id"])
    shutil.rmtree(state_dir, ignore_errors=True)
    return {**report, "skipped": False}


def _instances_by_image(document: Any, json_file: Path, panoptic: PanopticDataset) -> dict[Any, list[tuple]]:
    """Check a COCO instances file against the panoptic one; its annotations grouped by image."""
    if not isinstance(document, dict) or not isinstance(document.get("annotations"), list):
        raise InputError(f"{json_file}: expected a COCO instances JSON with an 'annotations' list")
    things = set(panoptic.categories.thing_ids)
    grouped: dict[Any, list[tuple]] = {}
    for k, ann in enumerate(document["annotations"]):
        if not isinstance(ann, dict) or not {"image_id", "category_id", "segmentation"} <= ann.keys():
            raise InputError(f"{json_file}: annotations[{k}] needs 'image_id', 'category_id' and 'segmentation'")
        if ann["category_id"] not in things:
            raise InputError(
                f"{json_file}: annotation {ann.get('id', k)} (image {ann['image_id']!r}) has category "
                f"{ann['category_id']}, which is not a thing category of {panoptic.json_file}"
            )
        grouped.setdefault(ann["image_id"], []).append(
            (k, ann["category_id"], bool(ann.get("iscrowd", 0)), ann["segmentation"])
        )
    return grouped


def _coco_chunk(
    jobs: list[_CocoJob], *, categories: Categories, json_file: str, png_folder: str, instances_json: str, overwrite: bool
) -> list[dict[str, Any]]:
    return [_coco_image(job, categories, Path(json_file), png_folder, instances_json, overwrite) for job in jobs]


def _coco_image(
    job: _CocoJob, categories: Categories, json_file: Path, png_folder: str, instances_json: str, overwrite: bool
) -> dict[str, Any]:
    """Read and check one panoptic PNG, write its semantic PNG (unless there), match its instances."""
    image_id = job.image["id"]
    one_image = PanopticDataset(json_file, [job.image], {image_id: job.annotation}, categories, raw={})
    result = read_panoptic_annotation(one_image, image_id, png_folder, strict=True)
    if overwrite or not os.path.exists(job.semantic_png):
        with atomic_path(job.semantic_png) as tmp:
            Image.fromarray(semantic_from_panoptic(result, categories)).save(tmp, format="PNG")
    h, w = result.id_map.shape
    masks = np.zeros((len(job.instances), h, w), dtype=bool)
    for k, (index, _, _, segmentation) in enumerate(job.instances):
        try:
            masks[k] = decode_segmentation(segmentation, h, w)
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            where = f"{instances_json}: annotations[{index}] (image {image_id!r})"
            raise InputError(f"{where} has an unreadable segmentation ({e})") from None
    segment_ids = match_instances_to_segments(
        masks, [c for _, c, _, _ in job.instances], [crowd for _, _, crowd, _ in job.instances], result
    )
    return {"image_id": image_id, "matches": [[index, sid] for (index, _, _, _), sid in zip(job.instances, segment_ids)]}
