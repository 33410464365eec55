"""``panopticlab demo``: the built-in default, run end to end on a laptop CPU.

So far: generate the overlapping-shapes dataset (train + val), draw the validation images
with their ground truth, and summarise the data. The model and trainer issues extend it to
train a small Panoptic-DeepLab and evaluate it.

Everything is written under one output folder that the demo owns; a second run reuses the
dataset when it was generated with the same settings.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from panopticlab.data.dataset import CocoPanopticDataset
from panopticlab.data.synthetic import GENERATOR_VERSION, ShapesConfig, generate_split, iter_split_instances, occlusion_pairs
from panopticlab.fileio import read_json, write_json
from panopticlab.progress import progress_bar
from panopticlab.visualize import render_ground_truth, save_picture

NUM_PICTURES = 8


def run_demo(output: str | Path, *, num_train: int = 400, seed: int = 0, workers: int | None = None) -> dict[str, Any]:
    """Generate the data, draw pictures, write and return the summary."""
    output = Path(output)
    config = ShapesConfig()
    splits = {"train": (num_train, seed), "val": (max(1, num_train // 4), seed + 1)}
    summary: dict[str, Any] = {}
    for split, (num_images, split_seed) in splits.items():
        split_dir = ensure_split(output / "data", split, num_images, config, split_seed, workers=workers)
        summary[split] = summarize_split(split_dir)

    val = CocoPanopticDataset.from_split_folder(output / "data" / "val")
    for k in range(min(NUM_PICTURES, len(val))):
        item = val[k]
        picture = render_ground_truth(item["image"].permute(1, 2, 0).numpy(), item["panoptic"], val.categories)
        save_picture(picture, output / "pictures" / f"{Path(item['file_name']).stem}.png")

    write_json(output / "dataset_summary.json", summary, indent=2)
    _print_summary(summary, output)
    return summary


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
    with progress_bar(f"generating {split}", total=num_images) as advance:
        # The demo owns data_dir, so an out-of-date split is replaced (only once the new one is complete).
        return generate_split(
            data_dir, num_images, config, seed=seed, split=split, workers=workers, overwrite=True,
            progress=lambda done, total: advance(1),
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
        "overlapping_pairs_per_image": round(pairs / num_images, 3),
        "void_pixel_fraction": round(float(1 - labelled / pixels), 4) if pixels else float(np.nan),
    }


def _print_summary(summary: dict[str, Any], output: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="overlapping-shapes data")
    table.add_column("")
    for split in summary:
        table.add_column(split, justify="right")
    for key in next(iter(summary.values())):
        table.add_row(key.replace("_", " "), *(str(summary[s][key]) for s in summary))
    console = Console()
    console.print(table)
    console.print(f"data: {output / 'data'}   pictures: {output / 'pictures'}   summary: {output / 'dataset_summary.json'}")
