"""Does SOGNet's relation resolve overlaps better than UPSNet's head or the heuristic merge?

The test of SOGNet's claim on shapes scenes whose occlusion order is known exactly
(issue 14, parts 4-6). Each *condition* is a shapes split (128 x 128, overlap 0.8) with a
depth rule that the relation module's inputs can see (``size``: the smaller thing is in front)
holding for a fraction p of the overlapping pairs: p = 1 (learnable) and p = 0.5 (the negative
control: geometry says nothing), with every thing class per image (``default``) or one class
per image (``few``: semantics cannot decide either).

**Merge-only.** Detection is skipped: every arm merges the ground truth's boxes and classes
(``SOGNet.merge_given``), so the figures measure the merge, not the detector. The models train
only the heads a merge needs (``detector_training: mask_head_only``: backbone, FPN, mask head on
the ground-truth boxes, semantic head, and the relation module and panoptic head where the
method has them), for a fixed number of iterations from the same seed.

Trainings per (condition, seed) and the arms tested from them:

* ``sognet`` (released maths) -> ``sognet`` (its O), ``sognet_O0`` (O = 0), ``sognet_Ogt`` (O
  from the true depth order on the overlapping pairs: the upper bound), ``sognet_Orandom`` (the
  same pairs, random directions), ``heuristic_amodal`` (the same weights, Panoptic-FPN merge
  ordered by mask confidence; its mask head learned amodal masks);
* ``sognet_pair``: SOGNet with the pair appearance term (the intersection's features) -> its O;
* ``sognet_direction``: SOGNet with panopticlab's direction target on the relation
  (``relation_direction_loss_weight=1``: which instance of an overlapping pair is in front, from
  the visible segments), its mask geometry term (``relation_mask_geometry_channels=16``) and the
  relation module at 10x the learning rate (``relation_lr_scale=10``) -> its O;
  ``--direction-options`` measures each lever on its own;
* ``upsnet_matched``: no relation module, no unknown class, SOGNet's test logits (isolates the relation);
* ``upsnet``: stock UPSNet (unknown class, ``Y + X`` at test);
* ``heuristic_visible``: the heuristic merge with a mask head trained on visible masks.

Per arm: PQ_th over all things and over occluded things (>= 10 % of the amodal mask hidden), the
share of overlap pixels given to the true front instance, direction accuracy of the O it used
(or of the module's O on the ground-truth instances), and for the heuristic arms the rate at
which the higher mask confidence is the front instance. Figures are means over seeds with a 95 %
bootstrap interval over images (the seeds' counts summed per image), and paired intervals of
``sognet - upsnet_matched`` on the occluded-thing PQ_th.

    python benchmarks/sognet_relation_experiment.py                     # the experiment (about 100 min on 2 cores)
    python benchmarks/sognet_relation_experiment.py --quick             # a smoke run (a minute)

Writes ``OUT/experiment.json`` (default OUT: outputs/sognet_relation) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from panopticlab.config import Config, load_config
from panopticlab.data.dataset import CocoPanopticDataset
from panopticlab.data.synthetic import ShapesConfig, generate_split
from panopticlab.engine import train
from panopticlab.evaluation.categories import as_categories
from panopticlab.evaluation.evaluator import evaluate_image
from panopticlab.evaluation.occlusion import (
    bootstrap_interval,
    class_counts,
    front_pixels,
    occluded_instances,
    pairs_ranked_front,
    panoptic_quality,
)
from panopticlab.evaluation.overlap import OverlapRelationEvaluator, front_from_depth
from panopticlab.fileio import write_json
from panopticlab.masks import overlap_graph
from panopticlab.models import load_model
from panopticlab.progress import no_progress

CONDITIONS = {
    "size_p1": {"depth_rule": "size", "depth_consistency": 1.0, "classes_per_image": 0},
    "size_p05": {"depth_rule": "size", "depth_consistency": 0.5, "classes_per_image": 0},
    "size_p1_few": {"depth_rule": "size", "depth_consistency": 1.0, "classes_per_image": 1},
    "size_p05_few": {"depth_rule": "size", "depth_consistency": 0.5, "classes_per_image": 1},
    "vertical_p1": {"depth_rule": "vertical", "depth_consistency": 1.0, "classes_per_image": 0},
}

#: training name -> config overrides (on top of configs/sognet/shapes.yaml, merge-only)
TRAININGS = {
    "sognet": [],
    "sognet_pair": ["model.sognet.relation_pair_appearance_channels=32"],
    "sognet_direction": [],  # --direction-options (DIRECTION_OPTIONS), set in main
    "upsnet_matched": ["model.sognet.panoptic=upsnet", "model.sognet.unknown_class=false", "model.sognet.test_x2mask=true"],
    "upsnet": ["model.sognet.panoptic=upsnet"],
    "heuristic_visible": ["model.sognet.panoptic=heuristic", "model.sognet.mask_target=visible"],
}

#: sognet_direction: the direction target, the mask geometry term that lets the module see the
#: masks' sizes (the boxes' sizes order 79 % of the size rule's pairs, the masks' 100 %), and the
#: relation module at 10x the learning rate (Adam's steps over 150 iterations move its weights too
#: little to settle the sign in every seed: docs/sognet.md)
DIRECTION_OPTIONS = [
    "model.sognet.relation_direction_loss_weight=1.0",
    "model.sognet.relation_mask_geometry_channels=16",
    "model.sognet.relation_lr_scale=10",
]

#: arm -> (training, relation given at test: module | zero | truth | random, merge override)
ARMS = {
    "sognet": ("sognet", "module", None),
    "sognet_O0": ("sognet", "zero", None),
    "sognet_Ogt": ("sognet", "truth", None),
    "sognet_Orandom": ("sognet", "random", None),
    "heuristic_amodal": ("sognet", "module", "heuristic"),
    "sognet_pair": ("sognet_pair", "module", None),
    "sognet_direction": ("sognet_direction", "module", None),
    "upsnet_matched": ("upsnet_matched", "module", None),
    "upsnet": ("upsnet", "module", None),
    "heuristic_visible": ("heuristic_visible", "module", None),
}


#: paired differences of occluded-thing PQ_th reported with bootstrap intervals
COMPARISONS = (
    ("sognet", "upsnet_matched"),
    ("sognet_direction", "upsnet_matched"),
    ("sognet_direction", "sognet"),
    ("sognet", "sognet_O0"),
    ("sognet_Ogt", "sognet_O0"),
    ("sognet_pair", "sognet"),
)


def make_condition(root: Path, name: str, train_images: int, val_images: int) -> Path:
    """The condition's train and val splits, written once (seeds 0 and 1)."""
    folder = root / name
    shapes = replace(ShapesConfig(), height=128, width=128, overlap=0.8, **CONDITIONS[name])
    for split, count, seed in (("train", train_images, 0), ("val", val_images, 1)):
        if not (folder / split / "panoptic.json").is_file():
            print(f"generating {folder / split} ({count} images)")
            generate_split(folder, count, shapes, seed=seed, split=split)
    return folder


def train_one(args: argparse.Namespace, data: Path, training: str, seed: int, out: Path) -> tuple[Config, Path, dict]:
    overrides = [
        f"data.root={data}",
        f"output_dir={out}",
        f"seed={seed}",
        f"solver.max_iter={args.iterations}",
        f"solver.warmup_iters={min(50, args.iterations // 4)}",
        "solver.schedule_by_time=false",
        "solver.checkpoint_period=1000000",
        "model.sognet.detector_training=mask_head_only",
        *TRAININGS[training],
    ]
    config = load_config(Config, args.config, overrides)
    start = time.perf_counter()
    trained = train(config, overwrite=True, max_minutes=0, progress=no_progress)
    info = {"iterations": trained["iteration"], "train_seconds": time.perf_counter() - start}
    return config, Path(trained["weights"]), info


def given_relation(kind: str, overlap: torch.Tensor, front: torch.Tensor, generator: torch.Generator) -> torch.Tensor | None:
    """O [N, N] for an arm: None (the module's), zero, the truth on the overlapping pairs, or random directions."""
    if kind == "module":
        return None
    n = len(overlap)
    if kind == "zero":
        return torch.zeros(n, n)
    pairs = torch.triu(overlap > 0, diagonal=1)
    if kind == "truth":
        j_front = front
    else:
        j_front = torch.rand(n, n, generator=generator) < 0.5
    upper = pairs & j_front  # i < j, j in front of i
    lower = pairs & ~j_front  # i < j, i in front of j
    return (upper | lower.T).float()


def test_arm(model, dataset: CocoPanopticDataset, relation_kind: str, merge: str | None, seed: int) -> dict[str, np.ndarray]:
    """Per-image figures of one arm on the validation split."""
    table = as_categories(dataset.categories)
    num = len(table)
    generator = torch.Generator().manual_seed(seed)
    rows = {"all": [], "occluded": [], "front": [], "direction": [], "score_front": []}
    for index in range(len(dataset)):
        item = dataset[index]
        inst = item["instances"]
        keep = ~inst["iscrowd"] & inst["masks"].flatten(1).any(dim=1)
        masks, boxes, labels, depth = inst["masks"][keep], inst["boxes"][keep], inst["labels"][keep], inst["depth"][keep]
        segment_ids = inst["panoptic_segment_ids"][keep]
        id_map = torch.from_numpy(item["panoptic"].id_map).to(torch.int64)
        visible = (id_map[None] == segment_ids[:, None, None]) & (segment_ids[:, None, None] != 0)
        overlap = overlap_graph(masks, 0.1)
        front = front_from_depth(depth)
        given = given_relation(relation_kind, overlap, front, generator)
        merged = model.merge_given(item["image"], boxes, labels, relation=given, merge=merge)
        result = merged.result
        match = evaluate_image(item["panoptic"].id_map, item["panoptic"].segments, result.id_map, result.segments, table)
        occluded = occluded_instances(masks, visible)
        occluded_gt = {int(s) for s in segment_ids[occluded] if s != 0}
        # each predicted thing segment is the given instance that owns its pixels
        owner = merged.owner.numpy()
        occluded_pred = {s.id for s in result.segments if s.isthing and bool(occluded[int(owner[result.id_map == s.id][0])])}
        rows["all"].append(class_counts(match, num))
        rows["occluded"].append(class_counts(match, num, gt_ids=occluded_gt, fp_ids=occluded_pred))
        rows["front"].append(front_pixels(masks, visible, merged.owner))
        used = None if merge == "heuristic" else merged.relation if given is None else given
        direction = (0, 0)
        if used is not None:
            scorer = OverlapRelationEvaluator()
            scorer.add(used, overlap, front)
            direction = (scorer.counts()["direction_correct"], scorer.counts()["direction_pairs"])
        rows["direction"].append(direction)
        rows["score_front"].append(pairs_ranked_front(merged.scores, overlap, front))
    return {key: np.asarray(value, dtype=np.float64) for key, value in rows.items()}


def statistics(things: list[int]) -> dict[str, tuple[str, Callable[[np.ndarray], float]]]:
    """Each figure (a percentage): the per-image array it is computed from, and how (summed over images)."""

    def pq(counts: np.ndarray) -> float:
        return 100 * panoptic_quality(counts.sum(0), things)

    def ratio(pairs: np.ndarray) -> float:
        correct, total = pairs.sum(0)
        return 100 * correct / total if total else float("nan")

    return {
        "PQ_th": ("all", pq),
        "PQ_th_occluded": ("occluded", pq),
        "front_pixels": ("front", ratio),
        "direction": ("direction", ratio),
        "score_front": ("score_front", ratio),
    }


#: the figures given with a bootstrap interval
WITH_INTERVALS = ("PQ_th", "PQ_th_occluded", "front_pixels")


def figures(per_image: dict[str, np.ndarray], things: list[int]) -> dict[str, float]:
    """The arm's figures from per-image arrays (the seeds' summed per image)."""
    return {name: statistic(per_image[source]) for name, (source, statistic) in statistics(things).items()}


def intervals(per_image: dict[str, np.ndarray], things: list[int], resamples: int) -> dict[str, list[float]]:
    """95 % bootstrap intervals over images of the headline figures."""
    table = statistics(things)
    return {
        name: list(bootstrap_interval(per_image[table[name][0]], table[name][1], resamples=resamples))
        for name in WITH_INTERVALS
    }


def paired_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray], things: list[int], resamples: int) -> dict[str, float]:
    """Occluded-thing PQ_th of arm a minus arm b, with a paired bootstrap interval (the same images resampled for both)."""
    stacked = np.stack([a["occluded"], b["occluded"]], axis=1)  # [images, 2, C, 4]
    _, pq = statistics(things)["PQ_th_occluded"]

    def difference(x: np.ndarray) -> float:
        return pq(x[:, 0]) - pq(x[:, 1])

    low, high = bootstrap_interval(stacked, difference, resamples=resamples)
    return {"difference": difference(stacked), "low": low, "high": high}


def _pooled(runs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The seeds' per-image arrays summed per image."""
    return {key: np.sum([run[key] for run in runs], axis=0) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/sognet/shapes.yaml")
    parser.add_argument("--data", type=Path, default=Path("data/sognet_relation"))
    parser.add_argument("--output", type=Path, default=Path("outputs/sognet_relation"))
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS))
    parser.add_argument("--trainings", nargs="+", default=list(TRAININGS), choices=list(TRAININGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--one-seed-trainings", nargs="*", default=["sognet_pair", "upsnet"], choices=list(TRAININGS),
        help="trainings run with the first seed only (to fit the budget)",
    )
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument(
        "--direction-options", nargs="+", default=DIRECTION_OPTIONS,
        help="sognet_direction's config overrides (to measure each lever on its own)",
    )
    parser.add_argument("--train-images", type=int, default=400)
    parser.add_argument("--val-images", type=int, default=100)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a smoke run: one condition, one seed, 6 iterations, 16 + 6 images")
    parser.add_argument("--table-from", type=Path, help="print the Markdown tables of an experiment.json and stop")
    args = parser.parse_args()
    if args.table_from:
        print_table(json.loads(args.table_from.read_text()))
        return
    if args.quick:
        args.conditions, args.seeds, args.iterations = args.conditions[:1], args.seeds[:1], 6
        args.train_images, args.val_images, args.resamples = 16, 6, 50
        args.data, args.output = args.data.with_name(args.data.name + "_quick"), args.output.with_name(args.output.name + "_quick")
    torch.set_num_threads(args.threads)
    TRAININGS["sognet_direction"] = list(args.direction_options)

    report = {
        "command": "python " + " ".join(sys.argv),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "conditions": {},
    }
    for condition in args.conditions:
        data = make_condition(args.data, condition, args.train_images, args.val_images)
        dataset = CocoPanopticDataset.from_split_folder(data / "val")
        table = as_categories(dataset.categories)
        things = [k for k in range(len(table)) if table.isthing[k]]
        per_arm: dict[str, list[dict[str, np.ndarray]]] = {}
        training_info: dict[str, list[dict]] = {}
        for seed in args.seeds:
            for training in args.trainings:
                if training in args.one_seed_trainings and seed != args.seeds[0]:
                    continue
                config, weights, info = train_one(args, data, training, seed, args.output / condition / f"{training}_seed{seed}")
                training_info.setdefault(training, []).append(info)
                model = load_model(config, weights)
                for arm, (source, relation_kind, merge) in ARMS.items():
                    if source != training:
                        continue
                    start = time.perf_counter()
                    per_arm.setdefault(arm, []).append(test_arm(model, dataset, relation_kind, merge, seed))
                    print(f"{condition} seed {seed} {arm}: {figures(per_arm[arm][-1], things)} ({time.perf_counter() - start:.0f} s)")
        pooled = {arm: _pooled(runs) for arm, runs in per_arm.items()}
        arms = {
            arm: {
                **figures(pooled[arm], things),
                "per_seed": [figures(run, things) for run in runs],
                "interval95": intervals(pooled[arm], things, args.resamples),
            }
            for arm, runs in per_arm.items()
        }
        comparison = {}
        for first, second in COMPARISONS:
            if len(per_arm.get(first, [])) == len(per_arm.get(second, [])) > 0:
                comparison[f"{first} - {second}"] = paired_difference(pooled[first], pooled[second], things, args.resamples)
        report["conditions"][condition] = {
            "shapes": CONDITIONS[condition], "trainings": training_info, "arms": arms, "occluded_PQ_th_differences": comparison,
        }  # fmt: skip
        write_json(args.output / "experiment.json", report)
    print_table(report)
    print(f"wrote {args.output / 'experiment.json'}")


def print_table(report: dict) -> None:
    columns = ("PQ_th", "PQ_th_occluded", "front_pixels", "direction", "score_front")
    for condition, result in report["conditions"].items():
        print(f"\n### {condition}\n")
        print("| arm | seeds | " + " | ".join(columns) + " | direction per seed |")
        print("|---|---|" + "---|" * len(columns) + "---|")
        for arm, row in result["arms"].items():
            cells = []
            for c in columns:
                value = "-" if row[c] != row[c] else f"{row[c]:.1f}"  # NaN: not applicable
                if c in row["interval95"]:
                    low, high = row["interval95"][c]
                    value += f" [{low:.1f}, {high:.1f}]"
                cells.append(value)
            per_seed = ", ".join("-" if s["direction"] != s["direction"] else f"{s['direction']:.0f}" for s in row["per_seed"])
            print(f"| {arm} | {len(row['per_seed'])} | " + " | ".join(cells) + f" | {per_seed} |")
        for name, diff in result["occluded_PQ_th_differences"].items():
            print(f"\n{name}, occluded-thing PQ_th: {diff['difference']:.1f} [{diff['low']:.1f}, {diff['high']:.1f}]")


if __name__ == "__main__":
    main()
