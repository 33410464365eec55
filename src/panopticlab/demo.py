"""``panopticlab demo``: the built-in default, end to end on a laptop CPU.

1. Generate the overlapping-shapes dataset (train + val, 128x128) under ``<output>/data``.
2. Train the small Panoptic-DeepLab of ``configs/panoptic_deeplab/shapes_demo.yaml`` for a
   time budget (``--minutes``), its schedule fitted to the budget.
3. Evaluate it on the held-out val split (PQ/SQ/RQ, mIoU, AP).
4. Write ``report.md`` (PQ table, loss curve, pictures of image / ground truth / prediction)
   and ``metrics.json``.

The demo owns its output folder: a second run reuses the data when it was generated with the
same settings, and trains afresh.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from panopticlab.config import Config, load_config
from panopticlab.data.dataset import CocoPanopticDataset
from panopticlab.data.synthetic import (
    GENERATOR_VERSION,
    ShapesConfig,
    generate_split,
    iter_split_instances,
    occlusion_pairs,
)
from panopticlab.engine import test, train
from panopticlab.errors import InputError
from panopticlab.fileio import atomic_path, read_json, write_json
from panopticlab.models import load_model
from panopticlab.progress import progress_bar
from panopticlab.visualize import (
    categories_present,
    colorize,
    compose,
    overlay,
    save_picture,
)

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "panoptic_deeplab" / "shapes_demo.yaml"
DEMO_DATA = ShapesConfig(height=128, width=128)
NUM_PICTURES = 8


def run_demo(
    output: str | Path, *, minutes: float = 10.0, num_train: int = 400, seed: int = 0, workers: int | None = None
) -> dict[str, Any]:
    """Generate, train, evaluate, report. Returns the contents of ``metrics.json``."""
    output = Path(output)
    summary = {}
    for split, (num_images, split_seed) in {"train": (num_train, seed), "val": (max(1, num_train // 4), seed + 1)}.items():
        split_dir = ensure_split(output / "data", split, num_images, DEMO_DATA, split_seed, workers=workers)
        summary[split] = summarize_split(split_dir)
    write_json(output / "dataset_summary.json", summary, indent=2)

    config = demo_config(output, seed)
    started = time.monotonic()
    trained = train(config, overwrite=True, max_minutes=minutes)
    train_minutes = (time.monotonic() - started) / 60
    results = test(config, trained["weights"], output / "test", overwrite=True)

    metrics = {
        **{k: round(v, 2) for k, v in results["summary"].items()},
        "train_minutes": round(train_minutes, 2),
        "iterations": trained["iteration"],
        "train_images_per_s": round(trained["images_per_s"], 2),
        "data": summary,
    }
    write_json(output / "metrics.json", metrics, indent=2)
    pictures = draw_predictions(config, trained["weights"], output / "pictures")
    write_report(output, metrics, pictures)
    return metrics


def demo_config(output: Path, seed: int) -> Config:
    """The demo's config with its data and output folders under ``output``."""
    if not DEMO_CONFIG.is_file():
        raise InputError(f"{DEMO_CONFIG}: the demo's config is missing (run the demo from a source checkout)")
    config = load_config(Config, DEMO_CONFIG, [f"data.root={output / 'data'}", f"output_dir={output / 'train'}"])
    return replace(config, seed=seed)


def ensure_split(
    data_dir: Path, split: str, num_images: int, config: ShapesConfig, seed: int, *, workers: int | None = None
) -> Path:
    """The split folder, generated unless one made with the same settings is already there."""
    split_dir = data_dir / split
    wanted = {"generator_version": GENERATOR_VERSION, "seed": seed, "num_images": num_images, "config": asdict(config)}
    if (split_dir / "panoptic.json").is_file():
        info = read_json(split_dir / "panoptic.json").get("info", {})
        if all(info.get(k) == v for k, v in wanted.items()):
            return split_dir
    # The demo owns data_dir, so an out-of-date split is replaced (only once the new one is complete).
    return generate_split(
        data_dir, num_images, config, seed=seed, split=split, workers=workers, overwrite=True, progress=progress_bar
    )


def summarize_split(split_dir: Path) -> dict[str, Any]:
    """Counts that say what the data holds: segments by kind, occlusions, VOID."""
    panoptic = read_json(split_dir / "panoptic.json")
    segments = [s for ann in panoptic["annotations"] for s in ann["segments_info"]]
    thing_ids = {c["id"] for c in panoptic["categories"] if c["isthing"]}
    pixels = sum(img["height"] * img["width"] for img in panoptic["images"])
    labelled = sum(s["area"] for s in segments)
    pairs = hidden = instances = 0
    for _, image_instances in iter_split_instances(split_dir):
        pairs += len(occlusion_pairs(image_instances))
        things = [inst for inst in image_instances if not inst.iscrowd]
        instances += len(things)
        hidden += sum(inst.panoptic_segment_id is None for inst in things)
    num_images = len(panoptic["images"])
    return {
        "images": num_images,
        "thing_segments": sum(s["category_id"] in thing_ids and not s["iscrowd"] for s in segments),
        "stuff_segments": sum(s["category_id"] not in thing_ids for s in segments),
        "crowd_segments": sum(bool(s["iscrowd"]) for s in segments),
        "thing_instances": instances,
        "fully_hidden_instances": hidden,
        "overlapping_pairs": pairs,
        "void_pixel_fraction": round(float(1 - labelled / pixels), 4) if pixels else float(np.nan),
    }


def draw_predictions(config: Config, weights: Path, out: Path) -> list[Path]:
    """image | ground truth | prediction for the first val images."""
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
        path = out / f"{Path(item['file_name']).stem}.png"
        save_picture(compose(panels, val.categories, shown), path)
        paths.append(path)
    return paths


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


def write_report(output: Path, metrics: dict[str, Any], pictures: list[Path]) -> None:
    """``report.md`` beside ``metrics.json``, with ``loss_curve.svg``."""
    records = [json.loads(line) for line in (output / "train" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    svg = loss_curve_svg(records)
    if svg:
        with atomic_path(output / "loss_curve.svg") as tmp:
            tmp.write_text(svg, encoding="utf-8")
    rows = "\n".join(
        f"| {name} | {metrics[f'PQ{s}']:.1f} | {metrics[f'SQ{s}']:.1f} | {metrics[f'RQ{s}']:.1f} |"
        for name, s in (("All", ""), ("Things", "_th"), ("Stuff", "_st"))
    )
    ap = f", AP {metrics['AP']:.1f}" if "AP" in metrics else ""
    text = f"""# panopticlab demo

Panoptic-DeepLab (`configs/panoptic_deeplab/shapes_demo.yaml`) trained for {metrics['train_minutes']:.1f} min
({metrics['iterations']} iterations, {metrics['train_images_per_s']:.1f} images/s) on
{metrics['data']['train']['images']} overlapping-shapes images, evaluated on {metrics['data']['val']['images']} held-out ones.

| | PQ | SQ | RQ |
|---|---|---|---|
{rows}

mIoU {metrics['mIoU']:.1f}{ap}. All numbers in percent; PQ with panopticapi's rules.

![training losses](loss_curve.svg)

Image | ground truth | prediction | predicted segments:

""" + "\n".join(f"![{p.stem}](pictures/{p.name})" for p in pictures) + "\n"
    with atomic_path(output / "report.md") as tmp:
        tmp.write_text(text, encoding="utf-8")


def result_lines(metrics: dict[str, Any], output: Path) -> list[str]:
    """What the demo reached, and where its report is: the lines ``panopticlab demo`` prints at the end."""
    return [
        f"PQ {metrics['PQ']:.1f}  (things {metrics['PQ_th']:.1f}, stuff {metrics['PQ_st']:.1f})  "
        f"SQ {metrics['SQ']:.1f}  RQ {metrics['RQ']:.1f}  mIoU {metrics['mIoU']:.1f}  "
        f"after {metrics['train_minutes']:.1f} min of training",
        f"report: {output / 'report.md'}   metrics: {output / 'metrics.json'}",
    ]
