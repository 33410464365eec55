"""What a training sample costs the data loader, with and without the instance masks; and image lookup.

Two measurements, each with its peer side by side in this process, warm, alternated, median of
``--repeats``:

* **Loader, per training item** of the demo's Panoptic-DeepLab config (``shapes_demo.yaml``) on
  shapes images of its crop size: read the image and the panoptic PNG, augment (scale, crop,
  flip), make the model's targets (``data_transform``), exactly as ``TrainingSet`` does in the
  trainer's loader. ``without instances`` is what ``train`` does now for a model whose
  ``uses_instances`` is False; the peer ``with instances`` also decodes the split's amodal masks
  (RLE) and augments them, as every model's loader did before. The saving is also given as a
  share of a training step of the same config, timed here (forward, backward, Adam step on a
  batch of ``solver.batch_size`` items, fp32).
* **Image lookup**: ``PanopticDataset.image(id)`` for every image of a split of ``--images``
  entries (a dict lookup now), against the linear scan it replaced (the peer, written here).

    python benchmarks/bench_loader.py --output benchmarks/results/bench_loader.json
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from panopticlab.config import Config, load_config
from panopticlab.data.build import TrainingSet, build_dataset
from panopticlab.data.coco_panoptic import Categories, PanopticDataset
from panopticlab.data.synthetic import SHAPES_CATEGORIES, ShapesConfig, generate_split
from panopticlab.data.transforms import training_transforms
from panopticlab.fileio import write_json
from panopticlab.models import build_model

ROOT = Path(__file__).resolve().parents[1]
SHAPES_CONFIG = ROOT / "configs" / "panoptic_deeplab" / "shapes_demo.yaml"


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def loader_case(config: Config, items: int, repeats: int) -> dict[str, Any]:
    model = build_model(config)
    i = config.input
    augment = training_transforms(tuple(i.crop_size), i.min_scale, i.max_scale, i.flip)
    sets = {
        name: TrainingSet(build_dataset(config, "train", instances=instances), augment, model.data_transform(), config.seed)
        for name, instances in (("without_instances", False), ("with_instances", True))
    }
    assert "instances" in sets["with_instances"][(0, 0)] and "instances" not in sets["without_instances"][(0, 0)]

    def run(training_set: TrainingSet) -> Callable[[], None]:
        size = len(training_set)
        return lambda: [training_set[(k % size, k)] for k in range(items)]

    for training_set in sets.values():  # warm: file caches, allocator
        run(training_set)()
    seconds = {name: [] for name in sets}
    for _ in range(repeats):
        for name, training_set in sets.items():  # alternated, so drifts hit both
            seconds[name].append(median_seconds(run(training_set), 1))
    ms = {name: 1000 * statistics.median(values) / items for name, values in seconds.items()}
    batch = [sets["without_instances"][(k, k)] for k in range(config.solver.batch_size)]
    step_ms = 1000 * training_step_seconds(model, batch, repeats)
    saved = ms["with_instances"] - ms["without_instances"]
    return {
        "ms_per_item": ms,
        "saved_ms_per_item": saved,
        "batch_size": len(batch),
        "step_ms": step_ms,
        "saved_share_of_a_step": len(batch) * saved / step_ms,
    }


def training_step_seconds(model: torch.nn.Module, batch: list[dict[str, Any]], repeats: int) -> float:
    """Median time of forward + backward + Adam step on ``batch`` (after two warm steps)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()

    def step() -> None:
        loss = sum(model(batch).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    return median_seconds(step, repeats)


def scan(images: list[dict[str, Any]], image_id: Any) -> dict[str, Any]:
    """The peer: PanopticDataset.image as it was, a scan of the image list."""
    for img in images:
        if img["id"] == image_id:
            return img
    raise KeyError(image_id)


def lookup_case(num_images: int, repeats: int) -> dict[str, Any]:
    images = [{"id": k + 1, "file_name": f"{k + 1:012d}.jpg"} for k in range(num_images)]
    dataset = PanopticDataset(Path("synthetic.json"), images, {}, Categories(SHAPES_CATEGORIES), raw={})
    ids = [img["id"] for img in images]
    ours = median_seconds(lambda: [dataset.image(i) for i in ids], repeats)
    peer = median_seconds(lambda: [scan(images, i) for i in ids], max(1, repeats // 2))
    return {"images": num_images, "dict_lookup_s": ours, "scan_s": peer, "scan_over_dict": peer / ours}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200, help="training items per timed pass")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=20_000, help="split size of the lookup case")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", type=Path, default=Path("outputs") / "bench_loader_data")
    parser.add_argument("--output", type=Path, default=Path("outputs") / "bench_loader.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = load_config(Config, SHAPES_CONFIG, [f"data.root={args.data}", "data.train.folder=train"])
    if not (args.data / "train" / "panoptic.json").is_file():
        height, width = config.input.crop_size
        generate_split(args.data, 64, ShapesConfig(height=height, width=width), seed=0, split="train")
    loader = loader_case(config, args.items, args.repeats)
    ms = loader["ms_per_item"]
    print(f"loader, per item: {ms['without_instances']:.2f} ms without instances, {ms['with_instances']:.2f} ms with (the peer)")
    print(
        f"  saved per step of {loader['batch_size']}: {100 * loader['saved_share_of_a_step']:.1f} % of a "
        f"{loader['step_ms']:.0f} ms training step"
    )
    lookup = lookup_case(args.images, args.repeats)
    print(
        f"image lookup, {lookup['images']} images: dict {1000 * lookup['dict_lookup_s']:.1f} ms, "
        f"scan (the peer) {lookup['scan_s']:.1f} s: {lookup['scan_over_dict']:.0f}x"
    )
    result = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "config": str(SHAPES_CONFIG.relative_to(ROOT)),
        "command": " ".join(sys.argv),
        "loader": loader,
        "image_lookup": lookup,
    }
    write_json(args.output, result, indent=2)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
