"""How fast can the shapes' classes be learnt from scratch? A small classifier on each thing's crop.

What limits the demo (docs/training.md) is telling a thing's shape class. This script isolates
that task from everything else Panoptic-DeepLab does: each visible, non-crowd thing of the demo's
data is cut out by its ground-truth box (a square around it, 2 px margin), resized to 32x32, and
one small CNN (6 conv-BN-ReLU layers, 32-128 channels) is trained from random initialisation for a
fixed wall-clock time on the training split's crops and scored on the held-out split's. Two inputs,
the same network, optimiser and seconds:

* ``rgb``: the image crop, as a model sees it (colours, textures, neighbours);
* ``silhouette``: the thing's visible mask alone (what the class is defined by).

The gap between the two curves is the cost of finding the outline among the textures' and the
stuff's own edges. Run alone on the machine (the budget is wall-clock time):

    python benchmarks/shape_learnability.py --seconds 180 --output benchmarks/results/demo/shape_learnability.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from panopticlab.data.synthetic import generate_sample
from panopticlab.demo.pipeline import DEMO_DATA
from panopticlab.fileio import write_json

CROP = 32


def thing_crops(seed: int, num_images: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rgb float [N,3,32,32] in 0..1, silhouette float [N,1,32,32], class int64 [N] in 0..5) of the
    visible non-crowd things of the demo's images ``0..num_images-1`` drawn with ``seed``."""
    rgb, silhouettes, labels = [], [], []
    for index in range(num_images):
        sample = generate_sample(DEMO_DATA, seed=seed, index=index)
        image = torch.from_numpy(sample.image).permute(2, 0, 1).float() / 255
        for segment in sample.panoptic.segments:
            if not segment.isthing or segment.iscrowd:
                continue
            mask = torch.from_numpy(sample.panoptic.id_map == segment.id)
            ys, xs = torch.nonzero(mask, as_tuple=True)
            half = (max(int(ys.max() - ys.min()), int(xs.max() - xs.min())) + 1) // 2 + 2
            cy, cx = (int(ys.min()) + int(ys.max())) // 2, (int(xs.min()) + int(xs.max())) // 2
            pad = half + 1
            window = (slice(cy - half + pad, cy + half + pad), slice(cx - half + pad, cx + half + pad))
            rgb.append(_resize(F.pad(image, (pad,) * 4)[(slice(None), *window)]))
            silhouettes.append(_resize(F.pad(mask.float()[None], (pad,) * 4)[(slice(None), *window)]))
            labels.append(segment.category_id - 1)  # thing ids are 1..6
    return torch.stack(rgb), torch.stack(silhouettes), torch.tensor(labels)


def _resize(crop: torch.Tensor) -> torch.Tensor:
    return F.interpolate(crop[None], size=(CROP, CROP), mode="bilinear", align_corners=False)[0]


def classifier(in_channels: int, classes: int = 6) -> nn.Sequential:
    def block(i: int, o: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

    return nn.Sequential(
        block(in_channels, 32), block(32, 32), nn.MaxPool2d(2),
        block(32, 64), block(64, 64), nn.MaxPool2d(2),
        block(64, 128), block(128, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, classes),
    )  # fmt: skip


def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    with torch.no_grad():
        correct = sum(int((net(x[i : i + 512]).argmax(1) == y[i : i + 512]).sum()) for i in range(0, len(y), 512))
    net.train()
    return correct / len(y)


def train_for(x_train, y_train, x_val, y_val, seconds: float, eval_every: float, seed: int) -> list[dict]:
    """Adam 3e-3, batch 64, mirrored every other step; the held-out accuracy every ``eval_every``
    seconds of training (evaluation time not counted)."""
    torch.manual_seed(seed)
    net = classifier(x_train.shape[1])
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    curve, trained, step, next_eval = [], 0.0, 0, eval_every
    while trained < seconds:
        start = time.perf_counter()
        index = torch.randint(0, len(y_train), (64,))
        batch = x_train[index].flip(3) if step % 2 else x_train[index]
        loss = F.cross_entropy(net(batch), y_train[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        trained += time.perf_counter() - start
        step += 1
        if trained >= next_eval or trained >= seconds:
            curve.append({"seconds": round(trained, 1), "steps": step, "val_accuracy": round(accuracy(net, x_val, y_val), 4)})
            print(curve[-1], flush=True)
            next_eval += eval_every
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="training seconds per input kind")
    parser.add_argument("--eval-every", type=float, default=30.0)
    parser.add_argument("--kinds", nargs="+", choices=("rgb", "silhouette"), default=["rgb", "silhouette"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rgb_train, sil_train, y_train = thing_crops(0, 400)  # the demo's splits: train seed 0, val seed 1
    rgb_val, sil_val, y_val = thing_crops(1, 100)
    results = {}
    inputs = {"rgb": (rgb_train, rgb_val), "silhouette": (sil_train, sil_val)}
    for kind in args.kinds:
        x_train, x_val = inputs[kind]
        print(kind, flush=True)
        results[kind] = train_for(x_train, y_train, x_val, y_val, args.seconds, args.eval_every, seed=0)
    report = {
        "task": "shape class of each visible thing of the demo's data, from its ground-truth crop (32x32)",
        "train_crops": len(y_train),
        "val_crops": len(y_val),
        "chance": round(float(np.bincount(y_val.numpy()).max() / len(y_val)), 4),
        "threads": args.threads,
        "torch": torch.__version__,
        "curves": results,
    }
    if args.output:
        write_json(args.output, report)
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
