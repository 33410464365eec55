"""Results as rich tables on the terminal and as plain JSON."""

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


def _pct(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def summary_table(results: dict[str, Any]) -> Table:
    """PQ, SQ, RQ (percent) and the number of categories for All / Things / Stuff."""
    table = Table(title="Panoptic quality", title_justify="left")
    for name in ("", "PQ", "SQ", "RQ", "N"):
        table.add_column(name, justify="left" if not name else "right")
    for split in ("All", "Things", "Stuff"):
        row = results["panoptic"][split]
        table.add_row(split, _pct(row["pq"]), _pct(row["sq"]), _pct(row["rq"]), str(row["n"]))
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
    """Print the standard table, mIoU (and AP when computed), optionally per class and worst images."""
    console = console or Console()
    if per_class:
        console.print(per_class_table(results))
    console.print(summary_table(results))
    semantic = results["semantic"]
    line = f"mIoU {_pct(semantic['miou'])}   pixel accuracy {_pct(semantic['pixel_accuracy'])}"
    if "instance" in results:
        line += f"   AP {_pct(results['instance']['AP'])}   AP50 {_pct(results['instance']['AP50'])}"
    console.print(f"{line}   ({results['num_images']} images)")
    if worst and results["worst_images"]:
        console.print(worst_images_table(results))
