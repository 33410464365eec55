"""A shapes split written to disk, as a COCO panoptic split plus ``instances.json``.

:func:`generate_split` draws the images in worker processes (byte-identical files whatever
their number), writes them into a temporary folder beside the destination and renames it into
place only when complete.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from panopticlab.data.coco_panoptic import panoptic_annotation, write_panoptic_json, write_panoptic_png
from panopticlab.data.synthetic.scene import (
    GENERATOR_VERSION,
    SHAPES_CATEGORIES,
    ShapeInstance,
    ShapesConfig,
    generate_sample,
)
from panopticlab.errors import InputError
from panopticlab.fileio import write_json
from panopticlab.parallel import imap_processes, usable_cpus
from panopticlab.progress import ProgressFactory, no_progress


def generate_split(
    out_dir: str | os.PathLike,
    num_images: int,
    config: ShapesConfig = ShapesConfig(),
    *,
    seed: int = 0,
    split: str = "train",
    workers: int | None = None,
    overwrite: bool = False,
    progress: ProgressFactory = no_progress,
) -> Path:
    """Generate ``num_images`` images and write them as ``out_dir/split``.

    Writes ``images/<name>.png``, ``panoptic/<name>.png``, ``panoptic.json`` and
    ``instances.json`` (see docs/synthetic.md) into a temporary folder beside the
    destination, and renames it into place only when complete: an error leaves nothing
    behind, and an existing split is replaced (with ``overwrite=True``) only then.

    Args:
        out_dir: parent folder of the split.
        num_images: images to generate; image ``k`` is ``generate_sample(config, seed, k)``,
            with image id ``k + 1`` (COCO tools treat id 0 as "none").
        config: the generator's knobs.
        seed: the files are byte-identical for the same seed, config and version,
            whatever ``workers`` is.
        split: name of the split folder.
        workers: processes to generate with; None = one per usable CPU, 1 = in this process.
        overwrite: replace an existing ``out_dir/split`` instead of raising InputError.
        progress: a progress factory (:mod:`panopticlab.progress`), advanced after each image.

    Returns:
        The split folder.
    """
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", split):
        raise InputError(f"split name {split!r}: use letters, digits, '_', '-' and '.' only")
    if num_images < 1:
        raise InputError(f"num_images must be at least 1, got {num_images}")
    if seed < 0:
        raise InputError(f"seed must be >= 0, got {seed}")
    if workers is not None and workers < 1:
        raise InputError(f"workers must be at least 1, got {workers}")
    destination = Path(out_dir) / split
    if destination.exists() and not overwrite:
        raise InputError(f"{destination}: already exists (pass overwrite=True to replace it)")
    if destination.exists() and not destination.is_dir():
        raise InputError(f"{destination}: exists and is not a folder")
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{split}.", suffix=".partial", dir=destination.parent))
    try:
        (staging / "images").mkdir()
        (staging / "panoptic").mkdir()
        jobs = [(config, seed, index, str(staging)) for index in range(num_images)]
        records = []
        with progress(f"synth {split}", num_images) as advance:
            for record in _run_jobs(jobs, workers):
                records.append(record)
                advance(1)
        _write_split_json(staging, records, config, seed, split)
        _move_into_place(staging, destination, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return destination


def _run_jobs(jobs: list[tuple[ShapesConfig, int, int, str]], workers: int | None) -> Iterator[dict[str, Any]]:
    """Yield ``_generate_and_write(job)`` for each job, in order, in ``workers`` processes."""
    workers = min(workers or usable_cpus(), len(jobs))
    chunksize = max(1, min(16, len(jobs) // (4 * workers)))
    yield from imap_processes(_generate_and_write, jobs, workers, chunksize)


def _generate_and_write(job: tuple[ShapesConfig, int, int, str]) -> dict[str, Any]:
    """Generate one image, write its image and panoptic PNG, and return its JSON entries:
    ``{"image": ..., "panoptic": ..., "instances": [...]}`` (instances without ids yet)."""
    config, seed, index, folder = job
    sample = generate_sample(config, seed, index)
    image_id = index + 1
    name = f"{image_id:06d}.png"
    # PNG, not JPEG: lossless, so every image pixel agrees with its label (JPEG blurs colour
    # across the exact edges this dataset is about).
    Image.fromarray(sample.image).save(Path(folder) / "images" / name, compress_level=1)
    write_panoptic_png(Path(folder) / "panoptic" / name, sample.panoptic.id_map)
    return {
        "image": {"id": image_id, "file_name": name, "height": config.height, "width": config.width},
        "panoptic": panoptic_annotation(image_id, name, sample.panoptic),
        "instances": [_instance_annotation(image_id, inst) for inst in sample.instances],
    }


def _instance_annotation(image_id: int, instance: ShapeInstance) -> dict[str, Any]:
    """COCO detection entry of one thing: amodal RLE, its area and bbox, depth and visible segment."""
    rle = mask_utils.encode(np.asfortranarray(instance.mask, dtype=np.uint8))
    return {
        "image_id": image_id,
        "category_id": instance.category_id,
        "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
        "area": int(mask_utils.area(rle)),
        "bbox": [int(v) for v in mask_utils.toBbox(rle)],
        "iscrowd": int(instance.iscrowd),
        "depth": instance.depth,
        "panoptic_segment_id": instance.panoptic_segment_id,
    }


def _write_split_json(
    folder: Path, records: list[dict[str, Any]], config: ShapesConfig, seed: int, split: str
) -> None:
    """Write ``panoptic.json`` and ``instances.json``; annotation ids run 1, 2, ... over the split."""
    info = {
        "description": "panopticlab overlapping shapes",
        "generator": "panopticlab.data.synthetic",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "split": split,
        "num_images": len(records),
        "config": asdict(config),
    }
    images = [r["image"] for r in records]
    panoptic = [r["panoptic"] for r in records]
    write_panoptic_json(folder / "panoptic.json", images, panoptic, SHAPES_CATEGORIES, info=info)
    instances = [inst for r in records for inst in r["instances"]]
    for annotation_id, inst in enumerate(instances, start=1):
        inst["id"] = annotation_id
    things = [c for c in SHAPES_CATEGORIES if c["isthing"]]
    document = {"info": info, "images": images, "annotations": instances, "categories": things}
    write_json(folder / "instances.json", document)


def _move_into_place(staging: Path, destination: Path, overwrite: bool) -> None:
    """Rename the finished ``staging`` folder to ``destination``, replacing an existing one
    only if ``overwrite``; the old folder is kept until the new one is in place."""
    if not destination.exists():
        os.rename(staging, destination)
        return
    if not overwrite:  # it appeared while we were generating
        raise InputError(f"{destination}: already exists (pass overwrite=True to replace it)")
    old = staging.with_suffix(".old")
    os.rename(destination, old)
    try:
        os.rename(staging, destination)
    except BaseException:
        os.rename(old, destination)
        raise
    shutil.rmtree(old)
