"""The test-time bilateral refinement add-on (``models/addons/bilateral.py``) on trained weights: PQ and time per setting.

Evaluates one set of weights (Panoptic-DeepLab, SOGNet, UPSNet or the heuristic merge) on a split
with each refinement setting (``model.addons.bilateral``: ``iterations``, ``radius``,
``sigma_space``, ``sigma_color``), and once without it, the peer: same weights,
same images, same process; with ``--grid KEY=V1,V2,...`` for every combination of those values. Each row gives the
split's PQ table and the seconds the whole test took per image (network, refinement,
post-processing and evaluation), the ratio to the unrefined run beside it. Choose a setting on a
split that is not the one you report on (the demo's data: ``tune`` is generated with seed 2,
``val`` with seed 1, ``train`` with seed 0). Run it alone on the machine:

    python benchmarks/bilateral_sweep.py --config outputs/demo/train/config.yaml \\
        --weights outputs/demo/train/model_final.safetensors --data outputs/demo/data --split tune \\
        --settings 5,9,9,30 10,7,7,30 --output benchmarks/results/demo/bilateral_sweep_tune.json
    python benchmarks/bilateral_sweep.py --config RUN/config.yaml --weights \
        RUN/model_final.safetensors --data outputs/shapes_default_overlap --split tune --settings 5,9,9,15 \
        --grid model.addons.silhouette.relabel=false,true model.sognet.score_threshold=0.2,0.3
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

SUMMARY_KEYS = ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "PQ_th_agnostic", "mIoU", "AP", "overlap_F1", "overlap_direction")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="the training run's config.yaml")
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="data root with the split's folder")
    parser.add_argument("--split", default="val", help="folder under --data (generated with --seed when absent)")
    parser.add_argument("--seed", type=int, default=2, help="generator seed of an absent split (the demo's data)")
    parser.add_argument("--images", type=int, default=100, help="images of an absent split")
    parser.add_argument("--settings", nargs="+", required=True, metavar="ITER,RADIUS,SIGMA_SPACE,SIGMA_COLOR")
    parser.add_argument("--grid", nargs="*", default=[], metavar="KEY=V1,V2", help="other test settings, every combination")
    parser.add_argument("--work", type=Path, default=Path("outputs") / "bilateral_sweep")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from panopticlab.config import Config, load_config
    from panopticlab.demo.pipeline import DEMO_DATA, ensure_split
    from panopticlab.engine import test
    from panopticlab.fileio import write_json

    if not (args.data / args.split / "panoptic.json").is_file():
        ensure_split(args.data, args.split, args.images, DEMO_DATA, args.seed)
    settings = [None] + [tuple(float(v) for v in text.split(",")) for text in args.settings]
    grid_keys = [text.split("=", 1)[0] for text in args.grid]
    grid_values = [text.split("=", 1)[1].split(",") for text in args.grid]
    rows = []
    for values, setting in itertools.product(itertools.product(*grid_values), settings):
        name = "none" if setting is None else "it{:g}_r{:g}_s{:g}_c{:g}".format(*setting)
        name = "_".join([*(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in zip(grid_keys, values)), name])
        key = "model.addons.bilateral"
        grid = [f"{k}={v}" for k, v in zip(grid_keys, values)]
        overrides = [f"data.root={args.data}", f"data.test.folder={args.split}", *grid, f"{key}=null"]
        if setting is not None:
            iterations, radius, sigma_space, sigma_color = setting
            overrides[-1] = f"{key}.iterations={int(iterations)}"
            overrides += [f"{key}.radius={int(radius)}", f"{key}.sigma_space={sigma_space}", f"{key}.sigma_color={sigma_color}"]
        config = load_config(Config, args.config, overrides)
        started = time.perf_counter()
        results = test(config, args.weights, args.work / name, overwrite=True)
        seconds = time.perf_counter() - started
        row = {"setting": name, **dict(zip(grid_keys, values)), "seconds_per_image": round(seconds / results["num_images"], 4)}
        row.update({k: round(float(results["summary"][k]), 2) for k in SUMMARY_KEYS if k in results["summary"]})
        rows.append(row)
        print(json.dumps(row), flush=True)
    # each row's time against the unrefined row of its grid point (every len(settings)-th row)
    for k, row in enumerate(rows):
        row["time_vs_none"] = round(row["seconds_per_image"] / rows[k - k % len(settings)]["seconds_per_image"], 2)
    report = {
        "task": "PQ of one set of weights with and without the test-time bilateral refinement",
        "config": str(args.config),
        "weights": str(args.weights),
        "split": str(args.data / args.split),
        "rows": rows,
        "threads": args.threads,
        "torch": torch.__version__,
    }
    if args.output:
        write_json(args.output, report)
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
