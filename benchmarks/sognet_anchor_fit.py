"""Which anchor sizes fit the shapes data: the share of training boxes that some anchor matches
at the RPN's foreground IoU, for candidate anchor sets of the SOGNet shapes config.

The boxes are those the detector trains on: amodal boxes of the non-crowd things of the default
128 px split (generator defaults), each scaled by a random factor of the config's
``input.min_scale``..``max_scale`` and moved by a random crop, as the training augmentation does.
The anchors are torchvision's (the model's own generator) on a 128x128 input, levels P2..P6,
the config's aspect ratios. An RPN only learns a box well where an anchor reaches
``rpn_fg_iou_threshold`` (0.7); torchvision also lets each box's best anchor be positive, whatever its IoU.

    python benchmarks/sognet_anchor_fit.py --output benchmarks/results/sognet_anchor_fit.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou

from panopticlab.data.synthetic import GENERATOR_VERSION, ShapesConfig, generate_sample
from panopticlab.models.sognet.detector import Float32AnchorGenerator

CANDIDATES = {
    "one size (8, 16, 32, 64, 128)": [[8], [16], [32], [64], [128]],
    "one size (16, 32, 64, 128, 256)": [[16], [32], [64], [128], [256]],
    "two sizes (16, 24) (32, 48) ...": [[16, 24], [32, 48], [64, 96], [128, 192], [256, 384]],
    "two sizes (12, 20) (24, 40) ...": [[12, 20], [24, 40], [48, 80], [96, 160], [192, 320]],
    "two sizes (20, 28) (40, 56) ...": [[20, 28], [40, 56], [80, 112], [160, 224], [320, 448]],
    "three sizes (16, 20, 26) (32, 40, 52) ...": [[16, 20, 26], [32, 40, 52], [64, 80, 104], [128, 160, 208], [256, 320, 416]],
}


def training_boxes(n_images: int, size: int, min_scale: float, max_scale: float, seed: int) -> torch.Tensor:
    """float [N, 4]: augmented amodal boxes (x0, y0, x1, y1) on the size x size crop."""
    rng = np.random.default_rng(seed)
    boxes = []
    for k in range(n_images):
        sample = generate_sample(ShapesConfig(height=size, width=size), seed, k)
        scale = rng.uniform(min_scale, max_scale)
        scaled = size * scale
        # a crop of the scaled image (or the whole image, padded, when it is smaller)
        dy, dx = (rng.uniform(0, scaled - size) if scaled > size else 0.0 for _ in range(2))
        for inst in sample.instances:
            if inst.iscrowd or inst.panoptic_segment_id is None:
                continue
            ys, xs = np.nonzero(inst.mask)
            box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64) * scale
            box -= [dx, dy, dx, dy]
            box = np.clip(box, 0, size)
            if (box[2] - box[0]) >= 2 and (box[3] - box[1]) >= 2:
                boxes.append(box)
    return torch.tensor(np.array(boxes), dtype=torch.float32)


def anchors_for(sizes: list[list[int]], ratios: tuple[float, ...], size: int) -> torch.Tensor:
    generator = Float32AnchorGenerator(tuple(tuple(s) for s in sizes), (ratios,) * len(sizes))
    images = ImageList(torch.zeros(1, 3, size, size), [(size, size)])
    features = [torch.zeros(1, 1, size // stride, size // stride) for stride in (4, 8, 16, 32, 64)]
    return generator(images, features)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--min-scale", type=float, default=0.75)
    parser.add_argument("--max-scale", type=float, default=1.5)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()

    boxes = training_boxes(args.images, args.size, args.min_scale, args.max_scale, args.seed)
    sides = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    rows = []
    for name, sizes in CANDIDATES.items():
        anchors = anchors_for(sizes, tuple(args.ratios), args.size)
        best = box_iou(boxes, anchors).amax(dim=1)
        rows.append(
            {
                "anchors": name,
                "anchor_sizes": sizes,
                "anchors_per_location": len(sizes[0]) * len(args.ratios),
                "share_iou_0.7": float((best >= 0.7).float().mean()),
                "share_iou_0.5": float((best >= 0.5).float().mean()),
                "median_best_iou": float(best.median()),
            }
        )
        print(f"{name:42s} IoU>=0.7 {100 * rows[-1]['share_iou_0.7']:5.1f} %   IoU>=0.5 {100 * rows[-1]['share_iou_0.5']:5.1f} %")
    result = {
        "generator_version": GENERATOR_VERSION,
        "boxes": len(boxes),
        "box_side_px": {q: float(sides.quantile(p)) for q, p in (("p5", 0.05), ("median", 0.5), ("p95", 0.95))},
        "command": " ".join(sys.argv),
        "rows": rows,
    }
    print(f"{len(boxes)} boxes, side (sqrt of area) p5 / median / p95: {result['box_side_px']}")
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
