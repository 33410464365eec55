"""Predictions written to files: COCO panoptic PNGs + JSON, for a test split or for image files.

* :class:`PredictionWriter`: the evaluator protocol, writing instead of scoring: ``test`` puts it
  in its list of evaluators, so the predictions of a split are written as they are made (each
  process its share; the JSON by the main process at the end);
* :func:`predict_files`: ``panopticlab predict`` on image files and folders, with an overlay
  picture per image.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from panopticlab import distributed
from panopticlab.data.coco_panoptic import panoptic_annotation, write_panoptic_json, write_panoptic_png
from panopticlab.data.dataset import CocoPanopticDataset, read_image
from panopticlab.errors import InputError
from panopticlab.fileio import write_json
from panopticlab.models.base import PanopticModel
from panopticlab.progress import ProgressFactory, no_progress
from panopticlab.structures import PanopticResult
from panopticlab.visualize import categories_present, compose, overlay, save_picture

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class PredictionWriter:
    """Writes every prediction of a dataset split in COCO panoptic format.

    ``process`` writes each result's RGB id PNG to ``<folder>/panoptic/`` under the name of the
    image's ground-truth PNG; ``evaluate`` gathers the annotations of every process and the main
    process writes ``json_file`` (images in the dataset's order, segments with scores). It adds no
    scores to the results.

    Args:
        json_file: the predictions' JSON; the PNGs go to the folder beside it named ``panoptic``.
        dataset: the split predicted (image entries and PNG names).
    """

    def __init__(self, json_file: str | os.PathLike, dataset: CocoPanopticDataset):
        self.json_file = Path(json_file)
        self.png_folder = self.json_file.parent / "panoptic"
        self.dataset = dataset
        self.reset()

    def reset(self) -> None:
        self.annotations: list[dict[str, Any]] = []

    def process(self, inputs: Sequence[Mapping[str, Any]], outputs: Sequence[PanopticResult]) -> None:
        for item, prediction in zip(inputs, outputs, strict=True):
            png_name = Path(self.dataset.panoptic.annotations[item["image_id"]]["file_name"]).name
            write_panoptic_png(self.png_folder / png_name, prediction.id_map)
            self.annotations.append(panoptic_annotation(item["image_id"], png_name, prediction))

    def evaluate(self) -> dict[str, Any]:
        annotations = [a for part in distributed.all_gather(self.annotations) for a in part]
        if distributed.is_main_process():
            order = {image_id: k for k, image_id in enumerate(self.dataset.image_ids)}
            annotations.sort(key=lambda a: order[a["image_id"]])
            images = [self.dataset.panoptic.image(a["image_id"]) for a in annotations]
            write_panoptic_json(self.json_file, images, annotations, self.dataset.categories, overwrite=True)
        return {}


def image_files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Image files named on a command line: files as given, folders expanded (sorted, not recursive)."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise InputError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise InputError(f"{path}: no such file or folder")
    stems = [p.stem for p in files]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise InputError(f"several input images are named '{duplicates[0]}' (their outputs would collide)")
    return files


def predict_files(
    model: PanopticModel,
    paths: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    batch_size: int = 1,
    overwrite: bool = False,
    progress: ProgressFactory = no_progress,
) -> list[Path]:
    """Panoptic segmentation of image files (folders expanded), written to ``output_dir``:

    * ``panoptic/<stem>.png``: the COCO panoptic RGB id PNG;
    * ``panoptic/<stem>.json``: its ``segments_info`` (with scores) and the source image;
    * ``panoptic.json``: all of them as one COCO panoptic file (``panopticlab evaluate`` reads it);
    * ``overlays/<stem>.png``: the image beside its segmentation, with a legend.

    Returns the PNG paths.
    """
    output_dir = Path(output_dir)
    if (output_dir / "panoptic.json").exists() and not overwrite:
        raise InputError(f"{output_dir / 'panoptic.json'}: already exists (pass --overwrite to replace it)")
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    files = image_files(paths)
    categories = model.categories
    images, annotations, written = [], [], []
    with progress("predict", len(files)) as advance:
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            arrays = [read_image(p) for p in chunk]
            for path, image, result in zip(chunk, arrays, model.predict(arrays)):
                png = output_dir / "panoptic" / f"{path.stem}.png"
                write_panoptic_png(png, result.id_map)
                annotation = panoptic_annotation(path.stem, png.name, result)
                write_json(png.with_suffix(".json"), {**annotation, "image": str(path)}, indent=1)
                shown = categories_present(categories, result)
                picture = compose([("image", image), ("prediction", overlay(image, result, categories))], categories, shown)
                save_picture(picture, output_dir / "overlays" / f"{path.stem}.png")
                images.append({"id": path.stem, "file_name": path.name, "height": result.height, "width": result.width})
                annotations.append(annotation)
                written.append(png)
                advance(1)
    write_panoptic_json(output_dir / "panoptic.json", images, annotations, categories, overwrite=True)
    return written
