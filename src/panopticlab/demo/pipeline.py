"""``panopticlab demo``: the built-in default, end to end on a laptop CPU (or a GPU when there is one).

1. Generate the overlapping-shapes dataset (train + val, 128x128) under ``<output>/data``.
2. Train the small Panoptic-DeepLab of ``configs/panoptic_deeplab/shapes_demo.yaml`` for a
   time budget (``--minutes``), its learning rate decaying with the budget spent.
3. Evaluate it on the held-out val split (PQ/SQ/RQ per class, mIoU, AP).
4. Write ``report.html`` and ``report.md`` (tables, the thing classes' confusion, the loss curve,
   pictures of image / ground truth / prediction) and ``metrics.json`` (:mod:`.report`).

The demo owns its output folder: a second run reuses the data when it was generated with the
same settings, and trains afresh.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from panopticlab.config import Config, load_config
from panopticlab.data.synthetic import (
    GENERATOR_VERSION,
    ShapesConfig,
    generate_split,
    iter_split_instances,
    occlusion_pairs,
)
from panopticlab.demo.report import draw_predictions, write_report
from panopticlab.distributed import resolve_device
from panopticlab.engine import test, train
from panopticlab.engine.trainer import resolve_amp
from panopticlab.errors import InputError
from panopticlab.fileio import read_json, write_json
from panopticlab.progress import ProgressFactory, no_progress

DEMO_CONFIG = Path(__file__).resolve().parents[3] / "configs" / "panoptic_deeplab" / "shapes_demo.yaml"
DEMO_DATA = ShapesConfig(height=128, width=128)


@dataclass(frozen=True)
class DemoPlan:
    """What a demo run will do, decided before it starts (the header ``panopticlab demo`` prints)."""

    output: Path
    minutes: float
    num_train: int
    num_val: int
    seed: int
    device: str
    amp: str

    def lines(self) -> list[str]:
        precision = "fp32" if self.amp == "off" else self.amp
        return [
            f"panopticlab demo: {self.num_train} + {self.num_val} overlapping-shapes images "
            f"({DEMO_DATA.height}x{DEMO_DATA.width}) in {self.output / 'data'},",
            f"  trains Panoptic-DeepLab ({DEMO_CONFIG.relative_to(DEMO_CONFIG.parents[2])}) for "
            f"{self.minutes:g} min on {self.device} ({precision}), evaluates it on the {self.num_val} held-out images",
            f"  and writes {self.output / 'report.html'} (run, config and checkpoints in {self.output / 'train'}).",
        ]


def plan_demo(output: str | Path, *, minutes: float = 10.0, num_train: int = 400, seed: int = 0) -> DemoPlan:
    """The plan of :func:`run_demo` with these arguments (device and precision resolved)."""
    config = demo_config(Path(output), seed)
    device = resolve_device(config.device)
    return DemoPlan(Path(output), minutes, num_train, max(1, num_train // 4), seed, str(device), resolve_amp(config.solver.amp, device))


def run_demo(
    output: str | Path,
    *,
    minutes: float = 10.0,
    num_train: int = 400,
    seed: int = 0,
    workers: int | None = None,
    progress: ProgressFactory = no_progress,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Generate, train, evaluate, report.

    Returns:
        ``(metrics, results)``: the contents of ``metrics.json`` (headline numbers, minutes,
        iterations, the data's description) and the evaluators' whole results.
    """
    output = Path(output)
    summary = {}
    for split, (num_images, split_seed) in {"train": (num_train, seed), "val": (max(1, num_train // 4), seed + 1)}.items():
        split_dir = ensure_split(output / "data", split, num_images, DEMO_DATA, split_seed, workers=workers, progress=progress)
        summary[split] = summarize_split(split_dir)
    write_json(output / "dataset_summary.json", summary, indent=2)

    config = demo_config(output, seed)
    started = time.monotonic()
    trained = train(config, overwrite=True, max_minutes=minutes, progress=progress)
    train_minutes = (time.monotonic() - started) / 60
    results = test(config, trained["weights"], output / "test", overwrite=True, progress=progress)

    device = resolve_device(config.device)
    metrics = {
        **{k: round(v, 2) for k, v in results["summary"].items()},
        "train_minutes": round(train_minutes, 2),
        "budget_minutes": minutes,
        "iterations": trained["iteration"],
        "train_images_per_s": round(trained["images_per_s"], 2),
        "device": str(device),
        "amp": resolve_amp(config.solver.amp, device),
        "generator_version": GENERATOR_VERSION,
        "data": summary,
    }
    write_json(output / "metrics.json", metrics, indent=2)
    pictures = draw_predictions(config, trained["weights"], output / "pictures")
    write_report(output, metrics, results, pictures)
    return metrics, results


def demo_config(output: Path, seed: int) -> Config:
    """The demo's config with its data and output folders under ``output``."""
    if not DEMO_CONFIG.is_file():
        raise InputError(f"{DEMO_CONFIG}: the demo's config is missing (run the demo from a source checkout)")
    config = load_config(Config, DEMO_CONFIG, [f"data.root={output / 'data'}", f"output_dir={output / 'train'}"])
    return replace(config, seed=seed)


def ensure_split(
    data_dir: Path,
    split: str,
    num_images: int,
    config: ShapesConfig,
    seed: int,
    *,
    workers: int | None = None,
    progress: ProgressFactory = no_progress,
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
        data_dir, num_images, config, seed=seed, split=split, workers=workers, overwrite=True, progress=progress
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
