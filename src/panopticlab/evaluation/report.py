"""Results as headline numbers, rich tables on the terminal, and plain JSON.

Every function takes the merged dict of the engine's evaluators (:mod:`.protocol`): ``panoptic``,
``semantic``, ``categories``, ``num_images`` and optionally ``instance`` from
:class:`~.evaluator.PanopticEvaluator`, ``cityscapes_instance``, ``overlap``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table


def to_jsonable(value: Any) -> Any:
    """Plain JSON types: numpy scalars/arrays to Python, NaN to None, dict keys to str."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def summarize(results: dict[str, Any]) -> dict[str, float]:
    """The headline numbers in percent, named as detectron2 reports them: PQ, SQ, RQ,
    PQ_th, SQ_th, RQ_th, PQ_st, SQ_st, RQ_st, mIoU, and AP when computed (with the Cityscapes
    instance AP, AP and AP50 are that one's, the "AP" of Cityscapes tables); overlap_F1 and
    overlap_direction with the overlap-relation metric; PQ_th_agnostic, SQ_th_agnostic and
    RQ_th_agnostic, the things matched whatever their class, where the data has things."""
    summary = {}
    for split, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
        for key in ("pq", "sq", "rq"):
            summary[f"{key.upper()}{suffix}"] = 100 * float(results["panoptic"][split][key])
    summary["mIoU"] = 100 * float(results["semantic"]["miou"])
    agnostic = results.get("things_class_agnostic")
    if agnostic is not None and not math.isnan(agnostic["pq"]):
        for key in ("pq", "sq", "rq"):
            summary[f"{key.upper()}_th_agnostic"] = 100 * float(agnostic[key])
    if "overlap" in results:
        summary["overlap_F1"] = 100 * float(results["overlap"]["f1"])
        summary["overlap_direction"] = 100 * float(results["overlap"]["direction_accuracy"])
    if "instance" in results:
        summary["AP"] = 100 * float(results["instance"]["AP"])
    if "cityscapes_instance" in results:
        summary["AP"] = 100 * float(results["cityscapes_instance"]["AP"])
        summary["AP50"] = 100 * float(results["cityscapes_instance"]["AP50"])
    return summary


def _pct(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def summary_table(results: dict[str, Any]) -> Table:
    """PQ, SQ, RQ (percent) and the number of categories for All / Things / Stuff, and for the
    things matched whatever their class ("Things, any class") when there are any."""
    table = Table(title="Panoptic quality", title_justify="left")
    for name in ("", "PQ", "SQ", "RQ", "N"):
        table.add_column(name, justify="left" if not name else "right")
    for split in ("All", "Things", "Stuff"):
        row = results["panoptic"][split]
        table.add_row(split, _pct(row["pq"]), _pct(row["sq"]), _pct(row["rq"]), str(row["n"]))
    agnostic = results.get("things_class_agnostic")
    if agnostic is not None and not math.isnan(agnostic["pq"]):
        table.add_row("Things, any class", _pct(agnostic["pq"]), _pct(agnostic["sq"]), _pct(agnostic["rq"]), "1")
    return table


def per_class_table(results: dict[str, Any]) -> Table:
    """One row per category: PQ/SQ/RQ, TP/FP/FN and semantic IoU (categories never seen show '-')."""
    table = Table(title="Per category", title_justify="left")
    for name in ("category", "id", "kind", "PQ", "SQ", "RQ", "TP", "FP", "FN", "IoU"):
        table.add_column(name, justify="left" if name in ("category", "kind") else "right")
    for cat in results["categories"]:
        seen = cat["tp"] + cat["fp"] + cat["fn"] > 0
        scores = [_pct(cat[k]) if seen else "-" for k in ("pq", "sq", "rq")]
        kind = "thing" if cat["isthing"] else "stuff"
        counts = [str(cat[k]) for k in ("tp", "fp", "fn")]
        table.add_row(cat["name"], str(cat["id"]), kind, *scores, *counts, _pct(cat["semantic_iou"]))
    return table


def worst_images_table(results: dict[str, Any]) -> Table:
    """The images of lowest PQ with their TP/FP/FN counts."""
    table = Table(title="Worst images", title_justify="left")
    for name in ("image_id", "PQ", "TP", "FP", "FN"):
        table.add_column(name, justify="left" if name == "image_id" else "right")
    for image in results["worst_images"]:
        table.add_row(str(image["image_id"]), _pct(image["pq"]), str(image["tp"]), str(image["fp"]), str(image["fn"]))
    return table


def print_results(
    results: dict[str, Any], *, console: Console | None = None, per_class: bool = False, worst: bool = False
) -> None:
    """Print the standard table, mIoU (and each AP and the overlap relation when computed),
    optionally per class and worst images."""
    console = console or Console()
    if per_class:
        console.print(per_class_table(results))
    console.print(summary_table(results))
    semantic = results["semantic"]
    line = f"mIoU {_pct(semantic['miou'])}   pixel accuracy {_pct(semantic['pixel_accuracy'])}"
    if "instance" in results:
        line += f"   AP {_pct(results['instance']['AP'])}   AP50 {_pct(results['instance']['AP50'])}"
    console.print(f"{line}   ({results['num_images']} images)")
    if "cityscapes_instance" in results:
        cs = results["cityscapes_instance"]
        console.print(f"Cityscapes instance AP {_pct(cs['AP'])}   AP50 {_pct(cs['AP50'])}   (cityscapesscripts)")
    if "overlap" in results:
        o = results["overlap"]
        console.print(
            f"Overlap relation: F1 {_pct(o['f1'])}   direction accuracy {_pct(o['direction_accuracy'])}"
            f"   ({o['pairs']} overlapping pairs)"
        )
    if worst and results["worst_images"]:
        console.print(worst_images_table(results))
