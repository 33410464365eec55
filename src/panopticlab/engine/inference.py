"""Evaluation over a configured split, and prediction of image files, for any model with
``predict(images) -> list[PanopticResult]`` and ``categories``.

``test`` writes the predictions in COCO panoptic format (one RGB id PNG per image and one
JSON), the scores as JSON, and prints PQ/SQ/RQ, mIoU and AP. Under ``torchrun`` every process
predicts its share of the images and the evaluator sums the counts across processes.

A model that also offers ``predict_relations(image, boxes, labels) -> O [N, N] | None`` (the
overlap relation of given instances, ``O_ij > 0`` where j is in front of i) gets the
overlap-relation metric (:mod:`panopticlab.evaluation.overlap`) on the items that carry
``instances``, reported as ``overlap``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from panopticlab.config import Config
from panopticlab.data.build import build_dataset, build_test_loader, check_categories
from panopticlab.data.coco_panoptic import panoptic_annotation, write_panoptic_json, write_panoptic_png
from panopticlab.data.dataset import Item, read_image
from panopticlab import distributed
from panopticlab.errors import InputError
from panopticlab.evaluation import OverlapRelationEvaluator, PanopticEvaluator
from panopticlab.fileio import write_json
from panopticlab.structures import PanopticResult

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Any,
    config: Config,
    *,
    on_prediction: Callable[[Item, PanopticResult], None] | None = None,
) -> dict[str, Any]:
    """Predict every item of ``loader`` and score it (summed over processes under torch.distributed).

    Returns the evaluator's results (see ``PanopticEvaluator.evaluate``) plus ``summary``
    (see :func:`summarize`), and ``cityscapes_instance`` (see
    :func:`~panopticlab.data.cityscapes.cityscapes_instance_ap`) when
    ``test.cityscapes_instance_gt`` names a gtFine split.
    """
    evaluator = PanopticEvaluator(model.categories, compute_ap=config.test.compute_ap)
    overlap = OverlapRelationEvaluator() if callable(getattr(model, "predict_relations", None)) else None
    cityscapes = None
    if config.test.cityscapes_instance_gt:
        from panopticlab.data.cityscapes import CityscapesInstanceAP

        cityscapes = CityscapesInstanceAP(Path(config.data.root) / config.test.cityscapes_instance_gt)
    for batch in loader:
        predictions = model.predict(
            [item["image"] for item in batch], tta_scales=config.test.tta_scales, tta_flip=config.test.tta_flip
        )
        for item, prediction in zip(batch, predictions):
            evaluator.add(item["panoptic"], prediction, image_id=item["image_id"])
            if overlap is not None and "instances" in item:
                _add_overlap_relations(overlap, model, item)
            if cityscapes is not None:
                cityscapes.add(item["image_id"], prediction)
            if on_prediction is not None:
                on_prediction(item, prediction)
    results = evaluator.evaluate()
    if overlap is not None:
        counts = {key: sum(part[key] for part in distributed.all_gather(overlap.counts())) for key in overlap.counts()}
        if counts["images"] > 0:
            results["overlap"] = overlap.evaluate(counts)
    if cityscapes is not None:
        results["cityscapes_instance"] = cityscapes.evaluate()
    results["summary"] = summarize(results)
    return results


def _add_overlap_relations(evaluator: OverlapRelationEvaluator, model: nn.Module, item: Item) -> None:
    """Score the model's relation on the item's non-crowd instances (GT boxes and classes):
    the front from the depth order when every instance has one (shapes), else from which
    visible segment owns the shared amodal region (COCO-style)."""
    instances = item["instances"]
    keep = ~instances["iscrowd"] & instances["masks"].flatten(1).any(dim=1)
    relation = model.predict_relations(item["image"], instances["boxes"][keep], instances["labels"][keep])
    if relation is None:  # the model has no relation module (e.g. a baseline)
        return
    masks, depth = instances["masks"][keep], instances["depth"][keep]
    if bool((depth >= 0).all()):
        evaluator.add_masks(relation, masks, depth=depth)
    else:
        segment_ids = instances["panoptic_segment_ids"][keep][:, None, None]
        id_map = torch.from_numpy(item["panoptic"].id_map).to(torch.int64)
        evaluator.add_masks(relation, masks, visible_masks=(id_map[None] == segment_ids) & (segment_ids != 0))


def summarize(results: dict[str, Any]) -> dict[str, float]:
    """The headline numbers in percent, named as detectron2 reports them: PQ, SQ, RQ,
    PQ_th, SQ_th, RQ_th, PQ_st, SQ_st, RQ_st, mIoU, and AP when computed (with the Cityscapes
    instance AP, AP and AP50 are that one's, the "AP" of Cityscapes tables)."""
    summary = {}
    for split, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
        for key in ("pq", "sq", "rq"):
            summary[f"{key.upper()}{suffix}"] = 100 * float(results["panoptic"][split][key])
    summary["mIoU"] = 100 * float(results["semantic"]["miou"])
    if "overlap" in results:
        summary["overlap_F1"] = 100 * float(results["overlap"]["f1"])
        summary["overlap_direction"] = 100 * float(results["overlap"]["direction_accuracy"])
    if "instance" in results:
        summary["AP"] = 100 * float(results["instance"]["AP"])
    if "cityscapes_instance" in results:
        summary["AP"] = 100 * float(results["cityscapes_instance"]["AP"])
        summary["AP50"] = 100 * float(results["cityscapes_instance"]["AP50"])
    return summary


def test(
    config: Config,
    weights: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    *,
    overwrite: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Evaluate ``weights`` on the config's ``data.test`` split.

    Writes to ``output_dir`` (default ``<config.output_dir>/test``): ``predictions/panoptic/*.png``
    and ``predictions/panoptic.json`` (COCO panoptic, segments with scores), and
    ``metrics.json`` (the evaluator's results; ``summary`` in percent). Prints the tables.

    Returns:
        the evaluator's results with ``summary`` added (see :func:`evaluate`).
    """
    from panopticlab.weights import load_weights
    from panopticlab.evaluation.report import print_results, to_jsonable
    from panopticlab.models import build_model

    output_dir = Path(output_dir) if output_dir is not None else Path(config.output_dir) / "test"
    predictions_json = output_dir / "predictions" / "panoptic.json"
    if predictions_json.exists() and not overwrite:
        raise InputError(f"{predictions_json}: already exists (pass --overwrite to replace it)")
    process = distributed.setup(config.device)
    try:
        model = build_model(config)
        load_weights(model, weights)
        model.to(process.device).eval()
        dataset = build_dataset(config, "test")
        check_categories(dataset, model.categories, where=f"data.test ({dataset.panoptic.json_file})")
        loader = build_test_loader(config, dataset, rank=process.rank, world_size=process.world_size)

        png_folder = output_dir / "predictions" / "panoptic"
        annotations: list[dict[str, Any]] = []

        def write_prediction(item: Item, prediction: PanopticResult) -> None:
            png_name = Path(dataset.panoptic.annotations[item["image_id"]]["file_name"]).name
            write_panoptic_png(png_folder / png_name, prediction.id_map)
            annotations.append(panoptic_annotation(item["image_id"], png_name, prediction))

        results = evaluate(model, loader, config, on_prediction=write_prediction)
        annotations = [a for part in distributed.all_gather(annotations) for a in part]
        if process.is_main:
            order = {image_id: k for k, image_id in enumerate(dataset.image_ids)}
            annotations.sort(key=lambda a: order[a["image_id"]])
            images = [dataset.panoptic.image(a["image_id"]) for a in annotations]
            write_panoptic_json(predictions_json, images, annotations, model.categories, overwrite=True)
            write_json(output_dir / "metrics.json", to_jsonable(results), indent=1)
            if not quiet:
                print_results(results)
                if "overlap" in results:
                    o = results["overlap"]
                    print(
                        f"Overlap relation: F1 {100 * o['f1']:.1f}   direction accuracy {100 * o['direction_accuracy']:.1f}"
                        f"   ({o['pairs']} overlapping pairs)"
                    )
                if "cityscapes_instance" in results:
                    cs = results["cityscapes_instance"]
                    print(f"Cityscapes instance AP {100 * cs['AP']:.1f}   AP50 {100 * cs['AP50']:.1f}   (cityscapesscripts)")
                print(f"wrote predictions and metrics to {output_dir}")
        return results
    finally:
        distributed.teardown(process)


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


@torch.no_grad()
def predict_files(
    model: nn.Module,
    paths: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    batch_size: int = 1,
    tta_scales: Sequence[float] = (1.0,),
    tta_flip: bool = False,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> list[Path]:
    """Panoptic segmentation of image files (folders expanded), written to ``output_dir``:

    * ``panoptic/<stem>.png``: the COCO panoptic RGB id PNG;
    * ``panoptic/<stem>.json``: its ``segments_info`` (with scores) and the source image;
    * ``panoptic.json``: all of them as one COCO panoptic file (``panopticlab evaluate`` reads it);
    * ``overlays/<stem>.png``: the image beside its segmentation, with a legend.

    Returns the PNG paths.
    """
    from panopticlab.visualize import categories_present, compose, overlay, save_picture

    output_dir = Path(output_dir)
    if (output_dir / "panoptic.json").exists() and not overwrite:
        raise InputError(f"{output_dir / 'panoptic.json'}: already exists (pass --overwrite to replace it)")
    files = image_files(paths)
    categories = model.categories
    images, annotations, written = [], [], []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        arrays = [read_image(p) for p in chunk]
        results = model.predict(arrays, tta_scales=tta_scales, tta_flip=tta_flip)
        for path, image, result in zip(chunk, arrays, results):
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
            if progress is not None:
                progress(1)
    write_panoptic_json(output_dir / "panoptic.json", images, annotations, categories, overwrite=True)
    return written
