"""Panoptic evaluation of COCO-panoptic files (JSON + RGB id PNGs): ``pq_compute`` and friends.

The ground-truth and prediction JSON files are read here, their annotations paired by
``image_id`` (ints or strings), and each pair's PNGs decoded and matched, in worker processes
when asked. The matches are added to a :class:`PanopticEvaluator` in image order, so the
floating-point sums do not depend on the number of workers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


from panopticlab.data.coco_panoptic import read_panoptic_png
from panopticlab.errors import InputError
from panopticlab.evaluation.categories import CategoryTable
from panopticlab.evaluation.evaluator import PanopticEvaluator, evaluate_image
from panopticlab.evaluation.pq import ImageMatch
from panopticlab.fileio import read_json
from panopticlab.parallel import imap_processes, usable_cpus

# -- JSON files --------------------------------------------------------------------------------


def _default_folder(json_file: str | os.PathLike) -> Path:
    path = Path(json_file)
    return path.with_suffix("") if path.suffix == ".json" else path


def _annotations(data: Any, path: Path) -> list[dict[str, Any]]:
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise InputError(f"{path}: expected a COCO-panoptic JSON object with an 'annotations' list")
    for k, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann or "file_name" not in ann or "segments_info" not in ann:
            raise InputError(f"{path}: annotation #{k} needs 'image_id', 'file_name' and 'segments_info'")
    return data["annotations"]


def pair_annotations(
    gt_json_file: str | os.PathLike, pred_json_file: str | os.PathLike
) -> tuple[CategoryTable, list[tuple[dict[str, Any], dict[str, Any]]]]:
    """Read both JSON files; return the categories and the (gt, pred) annotation of every GT image.

    Predictions for images absent from the ground truth are ignored, as in panopticapi.
    """
    gt_path, pred_path = Path(gt_json_file), Path(pred_json_file)
    gt_json, pred_json = read_json(gt_path), read_json(pred_path)
    gt_anns = _annotations(gt_json, gt_path)
    pred_anns = _annotations(pred_json, pred_path)
    if not isinstance(gt_json.get("categories"), list):
        raise InputError(f"{gt_path}: no 'categories' list")
    categories = CategoryTable.from_coco(gt_json["categories"], where=f"{gt_path}: categories")

    by_image: dict[Any, dict[str, Any]] = {}
    for ann in pred_anns:
        if ann["image_id"] in by_image:
            raise InputError(f"{pred_path}: image_id {ann['image_id']!r} has two annotations")
        by_image[ann["image_id"]] = ann
    pairs, seen = [], set()
    for ann in gt_anns:
        image_id = ann["image_id"]
        if image_id in seen:
            raise InputError(f"{gt_path}: image_id {image_id!r} has two annotations")
        seen.add(image_id)
        if image_id not in by_image:
            hint = ""
            if isinstance(image_id, (int, str)) and str(image_id) in {str(i) for i in by_image}:
                hint = " (an image_id with the same digits but another type, int vs string, is there)"
            raise InputError(f"{pred_path}: no prediction for image_id {image_id!r} of {gt_path}{hint}")
        pairs.append((ann, by_image[image_id]))
    return categories, pairs


# -- evaluating pairs of files -----------------------------------------------------------------


def _evaluate_pair(
    gt_ann: dict[str, Any],
    pred_ann: dict[str, Any],
    gt_folder: Path,
    pred_folder: Path,
    categories: CategoryTable,
    check_gt: bool,
    compute_ap: bool,
    class_agnostic: bool,
) -> ImageMatch:
    image_id = gt_ann["image_id"]
    gt_file, pred_file = gt_folder / gt_ann["file_name"], pred_folder / pred_ann["file_name"]
    gt_map = read_panoptic_png(gt_file, where=f"image {image_id!r}")
    pred_map = read_panoptic_png(pred_file, where=f"image {image_id!r}")
    if gt_map.shape != pred_map.shape:
        raise InputError(
            f"image {image_id!r}: {gt_file} is {gt_map.shape[1]}x{gt_map.shape[0]} but "
            f"{pred_file} is {pred_map.shape[1]}x{pred_map.shape[0]}"
        )
    return evaluate_image(
        gt_map,
        gt_ann["segments_info"],
        pred_map,
        pred_ann["segments_info"],
        categories,
        image_id=image_id,
        check_gt=check_gt,
        compute_ap=compute_ap,
        class_agnostic=class_agnostic,
        where=f"image {image_id!r} ({gt_file} / {pred_file})",
    )


def _evaluate_chunk(args: tuple[Any, ...]) -> list[ImageMatch]:
    pairs, *rest = args
    return [_evaluate_pair(gt_ann, pred_ann, *rest) for gt_ann, pred_ann in pairs]


def default_workers(num_images: int) -> int:
    """One process per ~100 images, at most one per available core (1 = in this process)."""
    return max(1, min(usable_cpus(), num_images // 100))


def evaluate_files(
    gt_json_file: str | os.PathLike,
    pred_json_file: str | os.PathLike,
    gt_folder: str | os.PathLike | None = None,
    pred_folder: str | os.PathLike | None = None,
    *,
    workers: int | None = None,
    check_gt: bool = True,
    compute_ap: bool = False,
    class_agnostic: bool = False,
) -> PanopticEvaluator:
    """Evaluate COCO-panoptic files; return the filled evaluator (call ``.evaluate()`` on it).

    Args:
        gt_json_file, pred_json_file: COCO-panoptic JSON files.
        gt_folder, pred_folder: PNG folders; default: the JSON path without ``.json``.
        workers: processes; ``None`` picks :func:`default_workers`, 0 or 1 runs in this process.
        check_gt: see :func:`~panopticlab.evaluation.pq.match_image`.
        compute_ap: also score instance AP (needs a ``score`` on every predicted thing segment).
        class_agnostic: also score the things matched whatever their class (see :class:`PanopticEvaluator`).
    """
    categories, pairs = pair_annotations(gt_json_file, pred_json_file)
    gt_dir = Path(gt_folder) if gt_folder is not None else _default_folder(gt_json_file)
    pred_dir = Path(pred_folder) if pred_folder is not None else _default_folder(pred_json_file)
    for folder in (gt_dir, pred_dir):
        if not folder.is_dir():
            raise InputError(f"{folder}: PNG folder not found")
    evaluator = PanopticEvaluator(categories, compute_ap=compute_ap, check_gt=check_gt, class_agnostic=class_agnostic)
    settings = (gt_dir, pred_dir, categories, check_gt, compute_ap, class_agnostic)

    workers = default_workers(len(pairs)) if workers is None else max(int(workers), 1)
    workers = min(workers, max(len(pairs), 1))
    if workers == 1:
        for gt_ann, pred_ann in pairs:
            evaluator.add_match(_evaluate_pair(gt_ann, pred_ann, *settings))
        return evaluator

    # Small chunks keep the workers busy to the end; ordered imap keeps the sums deterministic.
    chunk = max(1, min(32, len(pairs) // (4 * workers)))
    tasks = [(pairs[i : i + chunk], *settings) for i in range(0, len(pairs), chunk)]
    for matches in imap_processes(_evaluate_chunk, tasks, workers):
        for match in matches:
            evaluator.add_match(match)
    return evaluator


def pq_compute(
    gt_json_file: str | os.PathLike,
    pred_json_file: str | os.PathLike,
    gt_folder: str | os.PathLike | None = None,
    pred_folder: str | os.PathLike | None = None,
    *,
    workers: int | None = None,
    check_gt: bool = True,
) -> dict[str, Any]:
    """Drop-in for panopticapi's ``pq_compute``: same arguments, same returned dict.

    Returns:
        ``{"All" | "Things" | "Stuff": {"pq", "sq", "rq", "n"}, "per_class": {category_id:
        {"pq", "sq", "rq"}}}`` with values in [0, 1]. Where panopticapi raises
        ZeroDivisionError (a split with no category to average) the split's pq/sq/rq are NaN
        and ``n`` is 0. Unlike panopticapi nothing is printed.

    Raises:
        InputError: bad input, with the file, image and segment named.
    """
    evaluator = evaluate_files(gt_json_file, pred_json_file, gt_folder, pred_folder, workers=workers, check_gt=check_gt)
    return evaluator.evaluate()["panoptic"]
