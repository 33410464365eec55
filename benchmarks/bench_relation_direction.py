"""What SOGNet's direction options cost per training step (issue 30's goal: at most 5 % more).

Two models from ``configs/sognet/shapes.yaml`` with the relation experiment's merge-only training
(``detector_training: mask_head_only``), built from one seed, one with the experiment's
``sognet_direction`` options (``DIRECTION``: the direction target, the mask geometry term, the
relation's learning-rate scale). A step is what the trainer does per batch: the model's data
transform on each item (resize and targets, the direction target included when it is on), the
forward, the backward and the recipe's optimizer step (Adam). The two run alternately on the same batch of shapes images
(128 x 128, overlap 0.8), after warm-up steps; reported: the median seconds per step of each and
their ratio.

    python benchmarks/bench_relation_direction.py --output benchmarks/results/sognet/bench_relation_direction.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from panopticlab.config import Config, load_config
from panopticlab.engine.trainer import build_optimizer
from panopticlab.data.dataset import CocoPanopticDataset
from panopticlab.data.synthetic import ShapesConfig, generate_split
from panopticlab.fileio import write_json
from panopticlab.models import build_model

REPO = Path(__file__).resolve().parents[1]
MERGE_ONLY = ["model.sognet.detector_training=mask_head_only"]
#: benchmarks/sognet_relation_experiment.py's DIRECTION_OPTIONS
DIRECTION = [
    "model.sognet.relation_direction_loss_weight=1.0",
    "model.sognet.relation_mask_geometry_channels=16",
    "model.sognet.relation_lr_scale=10",
]


def shapes_items(n: int, folder: Path) -> list[dict]:
    """n items of a shapes split (128 px, overlap 0.8) as the trainer's dataset reads them."""
    generate_split(folder, n, replace(ShapesConfig(), height=128, width=128, overlap=0.8), seed=0, split="train")
    dataset = CocoPanopticDataset.from_split_folder(folder / "train")
    return [dataset[k] for k in range(n)]


def model_config(direction: bool) -> Config:
    return load_config(Config, REPO / "configs/sognet/shapes.yaml", MERGE_ONLY + (DIRECTION if direction else []))


def make_model(direction: bool, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(model_config(direction)).train()


def step(model, optimizer, transform, items: list[dict]) -> float:
    start = time.perf_counter()
    batch = [transform(dict(item)) for item in items]
    losses = model(batch)
    optimizer.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        items = shapes_items(args.batch, Path(folder))
    models = {"released": make_model(False, 0), "direction": make_model(True, 0)}
    state = {"optimizers": {}, "transforms": {}}
    for name, model in models.items():
        state["optimizers"][name] = build_optimizer(model, model_config(name == "direction"))
        state["transforms"][name] = model.data_transform()
    seconds: dict[str, list[float]] = {name: [] for name in models}
    for k in range(args.warmup + args.steps):
        for name, model in models.items():  # alternately, so that a slow spell of the machine hits both
            t = step(model, state["optimizers"][name], state["transforms"][name], items)
            if k >= args.warmup:
                seconds[name].append(t)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    report = {
        "command": "python benchmarks/bench_relation_direction.py" + (f" --output {args.output}" if args.output else ""),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {"processor": platform.processor(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "seconds_per_step_median": median,
        "seconds_per_step": seconds,
        "ratio_direction_to_released": median["direction"] / median["released"],
    }
    print(json.dumps({k: report[k] for k in ("seconds_per_step_median", "ratio_direction_to_released")}, indent=1))
    if args.output:
        write_json(args.output, report)


if __name__ == "__main__":
    main()
