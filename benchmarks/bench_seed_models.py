"""The Panoptic-DeepLab seed's model-zoo networks: parameters and CPU forward latency at the test size.

Builds each config's network (random weights) and measures, side by side in one process with
detectron2's R52-DSConv as the peer: parameters (backbone and total) and the forward latency of the
network (no post-processing) at the published test size (1024x2048 for Cityscapes), median of
``--repeats`` after ``--warmup``, fp32, ``--threads`` threads. The backbones' parameter counts against
the seed's own definitions are in ``seed_backbones_reference.json`` (tools/seed_reference_check.py).

    python benchmarks/bench_seed_models.py --threads 2 --output benchmarks/results/bench_seed_models.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from panopticlab.config import Config, load_config
from panopticlab.fileio import write_json
from panopticlab.models import build_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "panoptic_deeplab"
DEFAULT = ["r52_dsconv_cityscapes.yaml", "x65_dsconv_cityscapes.yaml", "h48_dsconv_cityscapes.yaml"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=DEFAULT)
    parser.add_argument("--size", type=int, nargs=2, default=(1024, 2048))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = {}
    for name in args.configs:
        torch.manual_seed(0)
        network = build_model(load_config(Config, CONFIGS / name)).network.eval()
        images = torch.rand(1, 3, *args.size) * 255
        with torch.no_grad():
            for _ in range(args.warmup):
                network(images)
            seconds = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                network(images)
                seconds.append(time.perf_counter() - start)
        rows[name] = {
            "backbone_parameters": sum(p.numel() for p in network.backbone.parameters()),
            "parameters": sum(p.numel() for p in network.parameters()),
            "seconds": statistics.median(seconds),
            "all_seconds": seconds,
        }
        print(f"{name:>30}: {rows[name]['parameters'] / 1e6:6.2f} M parameters, {rows[name]['seconds']:.2f} s", flush=True)
    peer = rows.get("r52_dsconv_cityscapes.yaml")
    if peer:
        for row in rows.values():
            row["ratio_to_r52"] = row["seconds"] / peer["seconds"]
    report = {"size": list(args.size), "threads": args.threads, "torch": torch.__version__, "fp32": True, "results": rows}
    if args.output:
        write_json(args.output, report)
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
