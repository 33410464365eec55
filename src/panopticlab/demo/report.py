"""The demo's report: ``report.html`` (opens in a browser) and ``report.md``, and their pictures.

* the PQ / SQ / RQ table (All, Things, Stuff), mIoU and AP, how long it trained and on what;
* PQ per class;
* ``thing_confusion.png``: which shape the pixels of each shape are taken for (the rows of the
  evaluator's pixel confusion matrix, each normalised to 1);
* ``loss_curve.svg``: the training losses;
* ``pictures/*.png``: image | ground truth | prediction | predicted segments, at twice the size.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from panopticlab.config import Config
from panopticlab.data.dataset import CocoPanopticDataset
from panopticlab.fileio import atomic_path
from panopticlab.models import load_model
from panopticlab.visualize import categories_present, colorize, compose, overlay, save_picture

NUM_PICTURES = 8
#: pictures are drawn at this multiple of the images' size (128 px shapes are small on a screen)
PICTURE_SCALE = 2


def draw_predictions(config: Config, weights: Path, out: Path, *, scale: int = PICTURE_SCALE) -> list[Path]:
    """image | ground truth | prediction | predicted segments for the first val images, each panel
    enlarged ``scale`` times (nearest neighbour: every pixel stays a pixel)."""
    model = load_model(config, weights)
    val = CocoPanopticDataset.from_split_folder(Path(config.data.root) / config.data.test.folder, instances=False)
    paths = []
    for k in range(min(NUM_PICTURES, len(val))):
        item = val[k]
        image = item["image"].permute(1, 2, 0).numpy()
        prediction = model.predict(item["image"])[0]
        shown = categories_present(val.categories, item["panoptic"], prediction)
        panels = [
            ("image", image),
            ("ground truth", overlay(image, item["panoptic"], val.categories)),
            ("prediction", overlay(image, prediction, val.categories)),
            ("predicted segments", colorize(prediction, val.categories)),
        ]
        panels = [(title, panel.repeat(scale, axis=0).repeat(scale, axis=1)) for title, panel in panels]
        path = out / f"{Path(item['file_name']).stem}.png"
        save_picture(compose(panels, val.categories, shown), path)
        paths.append(path)
    return paths


def thing_confusion(results: dict[str, Any]) -> tuple[list[str], list[str], np.ndarray]:
    """Rows: the thing classes (ground truth); columns: the thing classes, then "stuff" (any stuff
    class) and "void" (predicted VOID), as predicted for their pixels. Each row sums to 1 (NaN
    for a class without pixels). Returns (row names, column names, float [T, T + 2])."""
    confusion = results["semantic"]["confusion"]
    matrix = np.asarray(confusion["matrix"], dtype=np.float64)  # [C, C + 1]
    index = {cat_id: k for k, cat_id in enumerate(confusion["ids"])}
    categories = {c["id"]: c for c in results["categories"]}
    things = [index[i] for i in confusion["ids"] if categories[i]["isthing"]]
    stuff = [index[i] for i in confusion["ids"] if not categories[i]["isthing"]]
    rows = matrix[things]
    table = np.concatenate([rows[:, things], rows[:, stuff].sum(axis=1, keepdims=True), rows[:, -1:]], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        table = table / table.sum(axis=1, keepdims=True)
    names = [categories[i]["name"] for i in confusion["ids"] if categories[i]["isthing"]]
    return names, [*names, "stuff", "void"], table


def confusion_picture(row_names: list[str], column_names: list[str], table: np.ndarray, cell: int = 44) -> Image.Image:
    """A heat map of ``table`` (fractions in [0, 1]) with its numbers in percent and labels."""
    font = ImageFont.load_default()
    left, top = 70, 34
    width, height = left + cell * len(column_names) + 8, top + cell * len(row_names) + 22
    picture = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(picture)
    draw.text((left, 2), "predicted as (share of the ground-truth class's pixels)", fill=(0, 0, 0), font=font)
    for j, name in enumerate(column_names):
        draw.text((left + j * cell + 3, 18), name[:7], fill=(0, 0, 0), font=font)
    for i, name in enumerate(row_names):
        y = top + i * cell
        draw.text((4, y + cell // 2 - 6), name, fill=(0, 0, 0), font=font)
        for j in range(len(column_names)):
            value = table[i, j]
            shade = 255 if math.isnan(value) else int(255 - 200 * value)
            colour = (shade, shade, 255) if i != j else (shade, 255, shade)  # the diagonal in green
            x = left + j * cell
            draw.rectangle([x, y, x + cell - 2, y + cell - 2], fill=colour, outline=(200, 200, 200))
            text = "-" if math.isnan(value) else f"{100 * value:.0f}"
            draw.text((x + cell // 2 - 8, y + cell // 2 - 6), text, fill=(0, 0, 0), font=font)
    draw.text((4, height - 16), "rows: ground truth; green: the right class", fill=(90, 90, 90), font=font)
    return picture


def loss_curve_svg(records: list[dict[str, Any]], width: int = 640, height: int = 240) -> str:
    """The training losses (log scale) against iterations, as a small standalone SVG."""
    losses = [{"iteration": r["iteration"], "loss": r["loss"], **r.get("losses", {})} for r in records if "loss" in r]
    if len(losses) < 2:
        return ""
    names = ["loss"] + sorted(k for k in losses[0] if k.startswith("loss_"))
    colours = ["#000000", "#d62728", "#1f77b4", "#2ca02c", "#9467bd"]
    x_max = max(r["iteration"] for r in losses)
    values = [max(r[n], 1e-6) for r in losses for n in names if n in r]
    lo, hi = np.log10(min(values)), np.log10(max(values))
    hi = hi if hi > lo else lo + 1
    pad = 40

    def xy(it: float, v: float) -> str:
        x = pad + (width - 2 * pad) * it / x_max
        y = height - pad - (height - 2 * pad) * (np.log10(max(v, 1e-6)) - lo) / (hi - lo)
        return f"{x:.1f},{y:.1f}"

    lines = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="11">']
    lines.append(f'<rect x="{pad}" y="{pad}" width="{width - 2 * pad}" height="{height - 2 * pad}" fill="none" stroke="#999"/>')
    for name, colour in zip(names, colours):
        points = " ".join(xy(r["iteration"], r[name]) for r in losses if name in r)
        lines.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{points}"/>')
    for k, (name, colour) in enumerate(zip(names, colours)):
        lines.append(f'<text x="{pad + 110 * k}" y="{pad - 8}" fill="{colour}">{name}</text>')
    lines.append(f'<text x="{pad}" y="{height - 12}">iteration 0 .. {x_max}; losses on a log scale, {10**lo:.3g} .. {10**hi:.3g}</text>')
    lines.append("</svg>")
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def _tables(metrics: dict[str, Any], results: dict[str, Any]) -> tuple[list[list[str]], list[list[str]]]:
    """The summary table and the per-class table, as rows of cells (first row: the header). The
    summary's "Things, any class" row: the things matched whatever their class (what the shape
    classes cost is its gap to "Things")."""
    summary = [["", "PQ", "SQ", "RQ"]] + [
        [name, f"{metrics[f'PQ{s}']:.1f}", f"{metrics[f'SQ{s}']:.1f}", f"{metrics[f'RQ{s}']:.1f}"]
        for name, s in (("All", ""), ("Things", "_th"), ("Stuff", "_st"), ("Things, any class", "_th_agnostic"))
        if f"PQ{s}" in metrics
    ]
    per_class = [["class", "kind", "PQ", "SQ", "RQ", "TP", "FP", "FN", "IoU"]]
    for c in results["categories"]:
        seen = c["tp"] + c["fp"] + c["fn"] > 0
        scores = [_pct(c[k]) if seen else "-" for k in ("pq", "sq", "rq")]
        per_class.append([c["name"], "thing" if c["isthing"] else "stuff", *scores, str(c["tp"]), str(c["fp"]), str(c["fn"]), _pct(c["semantic_iou"])])
    return summary, per_class


def _markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows[1:]])


def _html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows[1:])
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(output: Path, metrics: dict[str, Any], results: dict[str, Any], pictures: list[Path]) -> None:
    """``report.html`` and ``report.md`` beside ``metrics.json``, with ``loss_curve.svg`` and
    ``thing_confusion.png``."""
    records = [json.loads(line) for line in (output / "train" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    svg = loss_curve_svg(records)
    if svg:
        with atomic_path(output / "loss_curve.svg") as tmp:
            tmp.write_text(svg, encoding="utf-8")
    with atomic_path(output / "thing_confusion.png") as tmp:
        confusion_picture(*thing_confusion(results)).save(tmp, format="PNG")
    summary, per_class = _tables(metrics, results)
    precision = "fp32" if metrics["amp"] == "off" else metrics["amp"]
    intro = (
        f"Panoptic-DeepLab (configs/panoptic_deeplab/shapes_demo.yaml) trained for {metrics['train_minutes']:.1f} of "
        f"{metrics['budget_minutes']:g} min on {metrics['device']} ({precision}; {metrics['iterations']} iterations, "
        f"{metrics['train_images_per_s']:.1f} images/s) on {metrics['data']['train']['images']} overlapping-shapes images "
        f"(generator version {metrics['generator_version']}), evaluated on {metrics['data']['val']['images']} held-out ones."
    )
    ap = f", AP {metrics['AP']:.1f}" if "AP" in metrics else ""
    closing = f"mIoU {metrics['mIoU']:.1f}{ap}. All numbers in percent; PQ with panopticapi's rules."
    caption = "Image | ground truth | prediction | predicted segments (twice the size):"
    markdown = "\n\n".join(
        [
            "# panopticlab demo",
            intro,
            _markdown_table(summary),
            closing,
            "## Per class",
            _markdown_table(per_class),
            "## Which shape is taken for which",
            "![thing confusion](thing_confusion.png)",
            "## Training",
            "![training losses](loss_curve.svg)",
            "## Pictures",
            caption,
            "\n".join(f"![{p.stem}](pictures/{p.name})" for p in pictures),
        ]
    )
    with atomic_path(output / "report.md") as tmp:
        tmp.write_text(markdown + "\n", encoding="utf-8")
    images = "".join(f'<p><img src="pictures/{html.escape(p.name)}" alt="{html.escape(p.stem)}"></p>' for p in pictures)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>panopticlab demo: PQ {metrics['PQ']:.1f}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}</style></head><body>
<h1>panopticlab demo</h1><p>{html.escape(intro)}</p>{_html_table(summary)}<p>{html.escape(closing)}</p>
<h2>Per class</h2>{_html_table(per_class)}
<h2>Which shape is taken for which</h2><img src="thing_confusion.png" alt="thing confusion">
<h2>Training</h2><img src="loss_curve.svg" alt="training losses">
<h2>Pictures</h2><p>{html.escape(caption)}</p>{images}
</body></html>
"""
    with atomic_path(output / "report.html") as tmp:
        tmp.write_text(page, encoding="utf-8")


def result_lines(metrics: dict[str, Any], output: Path) -> list[str]:
    """Where the report is, and how long it trained: the last lines ``panopticlab demo`` prints."""
    return [
        f"trained {metrics['iterations']} iterations in {metrics['train_minutes']:.1f} min "
        f"({metrics['train_images_per_s']:.1f} images/s on {metrics['device']})",
        f"report: {output / 'report.html'} (also report.md)   metrics: {output / 'metrics.json'}",
    ]
