"""How hard the built-in shapes dataset is: occlusion, small objects, and what sets the classes apart.

Writes a split with the generator's defaults (or ``--overlap``, ``--size``) and measures it from
the files, through the public reading API only (so the same script measures an older generator
checked out beside it, e.g. with ``PYTHONPATH=<worktree>/src``):

* overlapping thing pairs per image (amodal masks that touch; ``occlusion_pairs``);
* the share of (non-crowd) things with a quarter or more of their amodal mask hidden (fully
  hidden ones included), and fully hidden;
* visible thing segments: the share under 150 pixels, the 5th percentile and the smallest;
  the smallest amodal diameter (of a disc of the same area);
* crowd segments and images with VOID.

The issue's floor (#13): at least 3 overlapping pairs per image and 15 % of things a quarter
hidden on the default split, crowd and VOID kept.

    python benchmarks/shapes_difficulty.py --size 128 --output benchmarks/results/shapes_difficulty.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np

from panopticlab.data.synthetic import GENERATOR_VERSION, ShapesConfig, generate_split, iter_split_instances, occlusion_pairs


def describe(split_dir: Path) -> dict:
    panoptic = json.loads((split_dir / "panoptic.json").read_text())
    segment_area = {
        (ann["image_id"], s["id"]): s["area"] for ann in panoptic["annotations"] for s in ann["segments_info"]
    }
    pairs, hidden_quarter, fully_hidden, visible_areas, amodal_areas, things = 0, 0, 0, [], [], 0
    images = 0
    for image, instances in iter_split_instances(split_dir):
        images += 1
        pairs += len(occlusion_pairs(instances))
        for inst in instances:
            if inst.iscrowd:
                continue
            things += 1
            amodal = int(inst.mask.sum())
            visible = 0 if inst.panoptic_segment_id is None else segment_area[(image["id"], inst.panoptic_segment_id)]
            amodal_areas.append(amodal)
            hidden_quarter += visible <= 0.75 * amodal
            fully_hidden += visible == 0
            if visible:
                visible_areas.append(visible)
    visible = np.array(visible_areas)
    crowd = sum(s["iscrowd"] for ann in panoptic["annotations"] for s in ann["segments_info"])
    labelled = {ann["image_id"]: sum(s["area"] for s in ann["segments_info"]) for ann in panoptic["annotations"]}
    with_void = sum(labelled[img["id"]] < img["height"] * img["width"] for img in panoptic["images"])
    return {
        "images": images,
        "things": things,
        "overlapping_pairs_per_image": pairs / images,
        "share_a_quarter_hidden": hidden_quarter / things,
        "share_fully_hidden": fully_hidden / things,
        "share_visible_under_150_px": float((visible < 150).mean()),
        "visible_area_p5": float(np.percentile(visible, 5)),
        "visible_area_min": int(visible.min()),
        "smallest_amodal_diameter_px": 2 * math.sqrt(min(amodal_areas) / math.pi),
        "crowd_segments_per_image": crowd / images,
        "share_images_with_void": with_void / images,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=500)
    parser.add_argument("--size", type=int, default=128, help="image height and width")
    parser.add_argument("--overlap", type=float, default=None, help="default: the generator's")
    parser.add_argument("--output", type=Path, default=None, help="append this run to a JSON list in this file")
    args = parser.parse_args()
    config = ShapesConfig(height=args.size, width=args.size)
    if args.overlap is not None:
        config = ShapesConfig(height=args.size, width=args.size, overlap=args.overlap)
    with tempfile.TemporaryDirectory() as tmp:
        split = generate_split(Path(tmp), args.num_images, config, seed=0, split="train")
        result = {"generator_version": GENERATOR_VERSION, "size": args.size, "overlap": config.overlap, **describe(split)}
    print(json.dumps(result, indent=1))
    if args.output:
        runs = json.loads(args.output.read_text()) if args.output.is_file() else []
        runs = [r for r in runs if (r["generator_version"], r["size"], r["overlap"]) != (result["generator_version"], args.size, config.overlap)]
        args.output.write_text(json.dumps(runs + [result], indent=1) + "\n")
    sys.exit(0)


if __name__ == "__main__":
    main()
