"""The demo's recipe, one variant at a time: train the demo's config with overrides for a time
budget on the demo's data, test it on the held-out split, and append the result to a JSON list.

What ``panopticlab demo`` does, with the config values to try as ``KEY=VALUE`` words; the data
is the demo's (``panopticlab demo`` writes it to ``<demo output>/data``; generated here when
absent). Run one variant at a time on an otherwise idle machine: the budget is wall-clock time.

    python benchmarks/demo_recipe.py --name lr4 --minutes 10 solver.base_lr=0.004 \\
        --output benchmarks/results/demo/recipe.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--data", type=Path, default=Path("outputs") / "demo" / "data")
    parser.add_argument("--train-images", type=int, default=400, help="training images (the demo's: 400)")
    parser.add_argument("--work", type=Path, default=Path("outputs") / "demo_recipe")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "demo" / "recipe.json")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()

    from panopticlab.config import Config, load_config
    from panopticlab.data.synthetic import GENERATOR_VERSION
    from panopticlab.demo.pipeline import DEMO_CONFIG, DEMO_DATA, ensure_split
    from panopticlab.distributed import resolve_device
    from panopticlab.engine import test, train
    from panopticlab.engine.trainer import resolve_amp

    ensure_split(args.data, "train", args.train_images, DEMO_DATA, 0)
    ensure_split(args.data, "val", 100, DEMO_DATA, 1)
    run = args.work / args.name
    config = load_config(Config, DEMO_CONFIG, [f"data.root={args.data}", f"output_dir={run}", *args.overrides])
    started = time.monotonic()
    trained = train(config, overwrite=True, max_minutes=args.minutes)
    minutes = (time.monotonic() - started) / 60
    results = test(config, trained["weights"], run / "test", overwrite=True)
    device = resolve_device(config.device)
    row = {
        "name": args.name,
        "overrides": args.overrides,
        "train_images": args.train_images,
        "budget_minutes": args.minutes,
        "train_minutes": round(minutes, 2),
        "iterations": trained["iteration"],
        "images_per_s": round(trained["images_per_s"], 2),
        "device": str(device),
        "amp": resolve_amp(config.solver.amp, device),
        "generator_version": GENERATOR_VERSION,
        "summary": {k: round(v, 2) for k, v in results["summary"].items()},
        "command": " ".join(sys.argv),
    }
    rows = json.loads(args.output.read_text()) if args.output.is_file() else []
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps([r for r in rows if r["name"] != args.name] + [row], indent=1) + "\n")
    s = row["summary"]
    print(f"{args.name}: PQ {s['PQ']:.1f} (things {s['PQ_th']:.1f}, stuff {s['PQ_st']:.1f}), {row['iterations']} iterations")


if __name__ == "__main__":
    main()
