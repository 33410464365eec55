"""The depth rules of the shapes generator, measured on written splits: for each rule and
consistency, the share of overlapping thing pairs in which each rule's front thing is the one in
front, the pairs per image, and the share of pairs within one class.

Under ``depth_rule: random`` (the default) every rule should hold for about half of the pairs:
the order is then independent of size, position and class, which is what makes the occlusion
order unlearnable from them. Things per image show what the re-ordering leaves out (things that
would become slivers). Read from the files through the public reading API.

    python benchmarks/shapes_depth_rules.py --output benchmarks/results/shapes_depth_rules.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


from panopticlab.data.synthetic import GENERATOR_VERSION, ShapesConfig, generate_split, iter_split_instances, occlusion_pairs
from panopticlab.data.synthetic.scene import rule_puts_in_front

CASES = [
    ("random", 1.0, 0),
    ("size", 1.0, 0),
    ("size", 0.8, 0),
    ("size", 0.5, 0),
    ("vertical", 1.0, 0),
    ("vertical", 0.5, 0),
    ("class", 1.0, 0),
    ("size", 1.0, 1),
    ("random", 1.0, 2),
]


def measure(split_dir: Path) -> dict:
    obeyed = {rule: [0, 0] for rule in ("size", "vertical", "class")}
    pairs = same_class = images = things = 0
    for _, instances in iter_split_instances(split_dir):
        images += 1
        things += sum(not inst.iscrowd for inst in instances)
        for front, back in occlusion_pairs(instances):
            pairs += 1
            a, b = instances[front], instances[back]
            same_class += a.category_id == b.category_id
            for rule, counts in obeyed.items():
                says = rule_puts_in_front(rule, a.mask, a.category_id, b.mask, b.category_id)
                if says is not None:
                    counts[0] += says
                    counts[1] += 1
    return {
        "things_per_image": things / images,
        "pairs_per_image": pairs / images,
        "same_class_share": same_class / max(pairs, 1),
        **{f"{rule}_rule_share": (c[0] / c[1] if c[1] else None) for rule, c in obeyed.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, (rule, consistency, classes) in enumerate(CASES):
            config = ShapesConfig(height=args.size, width=args.size, depth_rule=rule, depth_consistency=consistency, classes_per_image=classes)
            split = generate_split(Path(tmp), args.images, config, seed=0, split=f"case{k}")
            row = {"depth_rule": rule, "depth_consistency": consistency, "classes_per_image": classes, **measure(split)}
            rows.append(row)
            shares = "  ".join(f"{r} {row[f'{r}_rule_share']:.3f}" for r in ("size", "vertical", "class") if row[f"{r}_rule_share"] is not None)
            print(f"{rule:8s} p={consistency:.1f} classes={classes}: {row['pairs_per_image']:.2f} pairs/image, same class {row['same_class_share']:.2f}; {shares}")
    result = {"generator_version": GENERATOR_VERSION, "images": args.images, "size": args.size, "command": " ".join(sys.argv), "rows": rows}
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
