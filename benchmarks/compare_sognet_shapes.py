"""SOGNet vs UPSNet vs the heuristic merge on a shapes split, same budget.

Generates (once) a split of the built-in shapes dataset (``--overlap``: 0.8 by default, where
most things overlap another; 0.5 is the generator's default; 128 x 128; 400 training, 100
validation and 100 tuning images by default), then for each
method trains ``configs/sognet/shapes.yaml`` with ``model.sognet.panoptic=<method>`` from the same
seed for the same wall-clock budget (``--minutes``; the schedule is fitted to it) and tests it on
the validation split. Reported per method: iterations reached, PQ, PQ_th, PQ_st, mIoU, AP and, for
SOGNet (the only one with a relation module), the overlap-relation figures (detection F1 of
overlapping pairs and direction accuracy, with ground-truth boxes and classes).

Run it on a quiet machine: the budget is wall-clock time, so a loaded machine trains fewer
iterations (they are in the output). ``--test-overrides`` evaluates again with other inference
settings (no retraining); ``--train-overrides`` changes the recipe of every method.
``--score-thresholds`` chooses the instance score threshold on the tuning split (its own seed,
never the validation images) by PQ, and tests with it.

    python benchmarks/compare_sognet_shapes.py --minutes 20 --threads 2
    python benchmarks/compare_sognet_shapes.py --minutes 1 --train-images 40 --val-images 10   # smoke

Writes ``OUT/comparison.json`` and prints a Markdown table (default OUT: outputs/compare_sognet_shapes).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path

import torch

from panopticlab.config import Config, load_config
from panopticlab.data.synthetic import ShapesConfig, generate_split
from panopticlab.engine import test, train
from panopticlab.fileio import write_json

METHODS = ("sognet", "upsnet", "heuristic")
COLUMNS = ("PQ", "PQ_th", "PQ_st", "mIoU", "AP", "overlap_F1", "overlap_direction")


def make_split(data_root: Path, train_images: int, val_images: int, overlap: float) -> None:
    """The splits, written once (reused when the folders exist): train, val and tune."""
    shapes = replace(ShapesConfig(), height=128, width=128, overlap=overlap)
    for split, count, seed in (("train", train_images, 0), ("val", val_images, 1), ("tune", val_images, 2)):
        if not (data_root / split / "panoptic.json").is_file():
            print(f"generating {data_root / split} ({count} images)")
            generate_split(data_root, count, shapes, seed=seed, split=split)


def run_method(method: str, args: argparse.Namespace) -> dict:
    """Train one method for the budget and test it; the row of the table."""
    out = args.output / method
    overrides = [
        f"model.sognet.panoptic={method}",
        f"data.root={args.data}",
        f"output_dir={out}",
        f"seed={args.seed}",
        "solver.checkpoint_period=100000",  # only the final weights
        *args.train_overrides,
    ]
    config = load_config(Config, args.config, overrides)
    start = time.perf_counter()
    trained = train(config, overwrite=True, max_minutes=args.minutes)
    row = {"method": method, "iterations": trained["iteration"], "train_minutes": (time.perf_counter() - start) / 60}
    if args.score_thresholds:
        tuning = {}
        for threshold in args.score_thresholds:
            tune = load_config(Config, args.config, [*overrides, "data.test.folder=tune", f"model.sognet.score_threshold={threshold}"])
            tuning[threshold] = test(tune, trained["weights"], out / f"tune_{threshold}", overwrite=True)["summary"]["PQ"]
        row["score_threshold_tuning_PQ"] = tuning
        row["score_threshold"] = max(tuning, key=tuning.get)
        overrides.append(f"model.sognet.score_threshold={row['score_threshold']}")
        config = load_config(Config, args.config, overrides)
    results = test(config, trained["weights"], out / "test", overwrite=True)
    row.update(results["summary"])
    if args.test_overrides:
        config = load_config(Config, args.config, overrides + args.test_overrides)
        again = test(config, trained["weights"], out / "test_overrides", overwrite=True)
        row["with_test_overrides"] = again["summary"]
    return row


def markdown(rows: list[dict], columns: tuple[str, ...] = COLUMNS) -> str:
    lines = ["| method | iterations | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"{row[c]:.1f}" if c in row else "-" for c in columns]
        lines.append(f"| {row['method']} | {row['iterations']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=20.0, help="training budget of each method")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--config", type=Path, default=Path("configs/sognet/shapes.yaml"))
    parser.add_argument("--data", type=Path, default=Path("data/shapes_overlap"))
    parser.add_argument("--overlap", type=float, default=0.8, help="the generator's overlap (its default: 0.5)")
    parser.add_argument("--score-thresholds", type=float, nargs="*", default=[], help="chosen among on the tune split")
    parser.add_argument("--train-images", type=int, default=400)
    parser.add_argument("--val-images", type=int, default=100)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-overrides", nargs="*", default=[], metavar="KEY=VALUE", help="config values of every method's run")
    parser.add_argument("--test-overrides", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--output", type=Path, default=Path("outputs/compare_sognet_shapes"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    make_split(args.data, args.train_images, args.val_images, args.overlap)
    result = {
        "minutes": args.minutes,
        "threads": args.threads,
        "torch": torch.__version__,
        "load_average_at_start": os.getloadavg()[0],
        "data": {"root": str(args.data), "train": args.train_images, "val": args.val_images, "overlap": args.overlap},
        "train_overrides": args.train_overrides,
        "test_overrides": args.test_overrides,
        "rows": [],
    }
    for method in args.methods:
        result["rows"].append(run_method(method, args))
        write_json(args.output / "comparison.json", result, indent=2)  # after each method: a crash keeps the rest
    result["load_average_at_end"] = os.getloadavg()[0]
    write_json(args.output / "comparison.json", result, indent=2)
    print(markdown(result["rows"]))
    if args.test_overrides:
        print(f"\nwith {' '.join(args.test_overrides)}:")
        print(markdown([{**r, **r["with_test_overrides"]} for r in result["rows"]]))
    print(f"wrote {args.output / 'comparison.json'}")


if __name__ == "__main__":
    main()
