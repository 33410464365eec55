"""How well can a thing's class be read from its predicted mask? The silhouette classifier on matched things.

The demo classifies things from their masks (the ``silhouette`` add-on, docs/panoptic_deeplab.md).
This script asks how much of what it misses is the predicted masks' outline: a
:class:`~panopticlab.models.addons.silhouette.SilhouetteClassifier` is trained for a fixed wall-clock
time on the roughened ground-truth masks of a training split on disk (as the demo trains it:
batches of 64 crops, Adam 3e-3, every other batch mirrored), then every predicted thing of a
prediction folder that matches a ground-truth thing (IoU > 0.5, any class) is classified twice,
from its predicted mask and from the ground-truth mask it matched. The predictions' own classes
on the same things are reported beside them. Run it alone on the machine (the budget is wall-clock):

    python benchmarks/silhouette_on_predictions.py --train outputs/demo/data/train \\
        --gt outputs/demo/data/val --pred outputs/demo/test/predictions --seconds 120 \\
        --output benchmarks/results/demo/silhouette_on_predictions.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from panopticlab.data.coco_panoptic import read_panoptic_png
from panopticlab.fileio import write_json
from panopticlab.models.addons.silhouette import SilhouetteClassifier, instance_index_map, roughen_silhouettes, silhouette_crops


def load(folder: Path) -> tuple[dict[str, dict], set[int]]:
    """A COCO panoptic folder's annotations by file name, and its thing category ids."""
    if not (folder / "panoptic.json").is_file():
        raise SystemExit(f"{folder}: not a folder with panoptic.json")
    data = json.loads((folder / "panoptic.json").read_text())
    things = {c["id"] for c in data["categories"] if c["isthing"]}
    return {a["file_name"]: a for a in data["annotations"]}, things


def crops_of(id_map: np.ndarray, segment_ids: list[int], size: int) -> torch.Tensor:
    """float [N, 1, size, size]: the silhouette crops of these segments of an id map."""
    return silhouette_crops(instance_index_map(torch.from_numpy(id_map), segment_ids), len(segment_ids), size)


def training_crops(folder: Path, size: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Crops and class indices of the non-crowd things of a split, and the thing category ids."""
    annotations, things = load(folder)
    order = sorted(things)
    x, y = [], []
    for name, a in annotations.items():
        segments = [s for s in a["segments_info"] if s["category_id"] in things and not s.get("iscrowd", 0)]
        x.append(crops_of(read_panoptic_png(folder / "panoptic" / name), [s["id"] for s in segments], size))
        y += [order.index(s["category_id"]) for s in segments]
    x, y = torch.cat(x), torch.tensor(y)
    present = x.flatten(1).sum(dim=1) > 0
    return x[present], y[present], order


def train(x: torch.Tensor, y: torch.Tensor, classes: int, seconds: float, width: int, seed: int) -> tuple[SilhouetteClassifier, int]:
    torch.manual_seed(seed)
    net = SilhouetteClassifier(classes, width=width)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    trained, step = 0.0, 0
    while trained < seconds:
        start = time.perf_counter()
        index = torch.randint(0, len(y), (64,))
        batch = roughen_silhouettes(x[index])
        batch = batch.flip(3) if step % 2 else batch
        loss = F.cross_entropy(net(batch), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        trained += time.perf_counter() - start
        step += 1
    return net.eval(), step


def matched_things(gt: Path, pred: Path, things: set[int]) -> list[tuple[np.ndarray, int, np.ndarray, int]]:
    """(ground-truth mask, its category, predicted mask, predicted category) of every predicted thing
    whose IoU with a non-crowd ground-truth thing is > 0.5 (any classes)."""
    gt_annotations, _ = load(gt)
    pred_annotations, _ = load(pred)
    pairs = []
    for name, g in gt_annotations.items():
        gt_ids = read_panoptic_png(gt / "panoptic" / name)
        pred_ids = read_panoptic_png(pred / "panoptic" / name)
        predicted = [s for s in pred_annotations[name]["segments_info"] if s["category_id"] in things]
        for gs in g["segments_info"]:
            if gs["category_id"] not in things or gs.get("iscrowd", 0):
                continue
            gt_mask = gt_ids == gs["id"]
            for ps in predicted:
                pred_mask = pred_ids == ps["id"]
                union = (gt_mask | pred_mask).sum()
                if union and (gt_mask & pred_mask).sum() / union > 0.5:
                    pairs.append((gt_mask, gs["category_id"], pred_mask, ps["category_id"]))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, required=True, help="training split (panoptic.json + panoptic/)")
    parser.add_argument("--gt", type=Path, required=True, help="held-out split the predictions are of")
    parser.add_argument("--pred", type=Path, required=True, help="prediction folder (panoptic.json + panoptic/)")
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    x, y, order = training_crops(args.train, args.size)
    net, steps = train(x, y, len(order), args.seconds, args.width, args.seed)
    pairs = matched_things(args.gt, args.pred, set(order))
    if not pairs:
        raise SystemExit(f"{args.pred}: no predicted thing matches a ground-truth thing")
    with torch.no_grad():
        from_gt = net(torch.cat([crops_of(g.astype(np.int64), [1], args.size) for g, _, _, _ in pairs])).argmax(1)
        from_pred = net(torch.cat([crops_of(p.astype(np.int64), [1], args.size) for _, _, p, _ in pairs])).argmax(1)
    truth = torch.tensor([order.index(c) for _, c, _, _ in pairs])
    own = torch.tensor([order.index(c) for _, _, _, c in pairs])
    report = {
        "task": "the class of each predicted thing matched to a ground-truth thing (IoU > 0.5, any class)",
        "train_crops": len(y),
        "train_seconds": args.seconds,
        "train_steps": steps,
        "classifier_width": args.width,
        "crop_size": args.size,
        "matched_things": len(pairs),
        "accuracy": {
            "classifier_on_ground_truth_masks": round(float((from_gt == truth).float().mean()), 4),
            "classifier_on_predicted_masks": round(float((from_pred == truth).float().mean()), 4),
            "the_predictions_own_classes": round(float((own == truth).float().mean()), 4),
        },
        "chance": round(float(np.bincount(truth.numpy()).max() / len(truth)), 4),
        "prediction_folder": str(args.pred),
        "threads": args.threads,
        "torch": torch.__version__,
    }
    print(json.dumps(report["accuracy"]))
    if args.output:
        write_json(args.output, report)
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
