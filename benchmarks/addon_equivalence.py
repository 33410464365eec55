"""Same seed, same config, same results: a fixed-iteration train + test, for comparing two versions of the code.

Written for issue 28 (the shapes options moved out of the two families into add-ons): run it once
with the code before the change and once after, then compare the two runs. It uses only the public
API (``load_config``, ``engine.train``, ``engine.test``), so it runs on either version::

    # before: the old tree first on the path, its own config
    PYTHONPATH=/tmp/old/src python benchmarks/addon_equivalence.py run --config /tmp/old/configs/panoptic_deeplab/shapes_demo.yaml \
        --data DATA --iterations 60 --out runs/pd_before
    # after
    python benchmarks/addon_equivalence.py run --config configs/panoptic_deeplab/shapes_demo.yaml --data DATA --iterations 60 --out runs/pd_after
    # the old weights tested by the new code (the state-dict keys renamed: silhouette. -> addons.silhouette.)
    python benchmarks/addon_equivalence.py retest --config configs/... --data DATA --weights runs/pd_before/train/model_final.safetensors \
        --rename silhouette.=addons.silhouette. --out runs/pd_before_retest
    python benchmarks/addon_equivalence.py compare runs/pd_before runs/pd_after --rename silhouette.=addons.silhouette. --json OUT.json

``compare`` reports, tensor by tensor, the largest absolute difference of the final weights, and
prediction by prediction whether the panoptic PNGs and their segments (categories, areas, boxes,
scores) are identical, and the two test summaries.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from safetensors.numpy import load_file, save_file


def _config(path: str, data: str, out: Path, iterations: int, extra: list[str]):
    from panopticlab.config import Config, load_config

    overrides = [
        f"data.root={data}",
        f"output_dir={out / 'train'}",
        f"solver.max_iter={iterations}",
        f"solver.checkpoint_period={iterations}",
        "solver.max_minutes=0",
        "solver.schedule_by_time=false",
        "solver.amp='off'",  # quoted: YAML 1.1 reads a bare off as false
        "data.num_workers=0",
        *extra,
    ]
    return load_config(Config, path, overrides)


def run(args: argparse.Namespace) -> None:
    from panopticlab.engine import test, train

    out = Path(args.out)
    config = _config(args.config, args.data, out, args.iterations, args.overrides)
    started = time.monotonic()
    trained = train(config, overwrite=True, max_minutes=0)
    seconds = time.monotonic() - started
    results = test(config, trained["weights"], out / "test", overwrite=True)
    _write(out, {"command": sys.argv, "iterations": trained["iteration"], "train_seconds": round(seconds, 1),
                 "weights": str(trained["weights"]), "summary": results["summary"]})  # fmt: skip


def retest(args: argparse.Namespace) -> None:
    from panopticlab.engine import test

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    weights = Path(args.weights)
    if args.rename:
        tensors = _renamed(load_file(str(weights)), args.rename)
        weights = out / "renamed.safetensors"
        save_file(tensors, str(weights))
    config = _config(args.config, args.data, out, 1, args.overrides)
    results = test(config, weights, out / "test", overwrite=True)
    _write(out, {"command": sys.argv, "weights": str(weights), "summary": results["summary"]})


def compare(args: argparse.Namespace) -> None:
    a, b = Path(args.a), Path(args.b)
    report: dict[str, Any] = {"command": sys.argv, "a": str(a), "b": str(b)}
    run_a, run_b = (json.loads((p / "run.json").read_text()) for p in (a, b))
    if "iterations" in run_a and "iterations" in run_b:
        wa = _renamed(load_file(run_a["weights"]), args.rename)
        wb = load_file(run_b["weights"])
        report["weights"] = {
            "keys_only_in_a": sorted(set(wa) - set(wb)),
            "keys_only_in_b": sorted(set(wb) - set(wa)),
            "tensors": len(set(wa) & set(wb)),
            "max_abs_difference": max(
                (float(np.abs(wa[k].astype(np.float64) - wb[k].astype(np.float64)).max()) if wa[k].size else 0.0)
                for k in set(wa) & set(wb)
            ),
            "identical_tensors": sum(bool(np.array_equal(wa[k], wb[k])) for k in set(wa) & set(wb)),
        }
    report["predictions"] = _compare_predictions(a / "test" / "predictions", b / "test" / "predictions")
    report["summary_a"], report["summary_b"] = run_a["summary"], run_b["summary"]
    report["summary_equal"] = run_a["summary"] == run_b["summary"]
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")


def _compare_predictions(a: Path, b: Path) -> dict[str, Any]:
    ja, jb = (json.loads((p / "panoptic.json").read_text()) for p in (a, b))
    by_image = {ann["image_id"]: ann for ann in jb["annotations"]}
    images = pixels_differ = segments_differ = 0
    for ann in ja["annotations"]:
        other = by_image[ann["image_id"]]
        pa = np.asarray(Image.open(a / "panoptic" / ann["file_name"]))
        pb = np.asarray(Image.open(b / "panoptic" / other["file_name"]))
        images += 1
        pixels_differ += int((pa != pb).any(axis=-1).sum())
        segments_differ += int(ann["segments_info"] != other["segments_info"])
    return {"images": images, "pixels_that_differ": pixels_differ, "images_whose_segments_differ": segments_differ}


def _renamed(tensors: dict[str, np.ndarray], rules: list[str]) -> dict[str, np.ndarray]:
    for rule in rules or []:
        old, new = rule.split("=", 1)
        tensors = {(new + k[len(old):] if k.startswith(old) else k): v for k, v in tensors.items()}
    return tensors


def _write(out: Path, record: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record["summary"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "retest"):
        p = sub.add_parser(name)
        p.add_argument("--config", required=True)
        p.add_argument("--data", required=True, help="a shapes dataset root with train/ and val/")
        p.add_argument("--out", required=True)
        p.add_argument("overrides", nargs="*", help="KEY=VALUE config overrides")
        if name == "run":
            p.add_argument("--iterations", type=int, default=60)
        else:
            p.add_argument("--weights", required=True)
            p.add_argument("--rename", action="append", help="OLD_PREFIX=NEW_PREFIX for the weights' keys")
    p = sub.add_parser("compare")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--rename", action="append", help="OLD_PREFIX=NEW_PREFIX applied to a's weight keys")
    p.add_argument("--json")
    args = parser.parse_args()
    {"run": run, "retest": retest, "compare": compare}[args.command](args)


if __name__ == "__main__":
    main()
