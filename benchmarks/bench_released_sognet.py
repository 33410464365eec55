"""The released SOGNet / UPSNet checkpoints' models: parameters and CPU latency at the published test size.

For each released config, a checkpoint of the released key list's names and shapes
(``tests/data/released_keys/``, random values) is converted (``convert_released``) and loaded;
the row gives the model's parameters and buffers (``parameters``; it includes the 6 values of the
input normalisation, which the released code keeps in its data loader) against the released file's
tensor count (``released_parameters``), and the latency of
``predict`` on one random image at the published test size (COCO 800 x 1333, Cityscapes
1024 x 2048) with the released conventions (``box_convention: detectron``, ``test_pipeline:
released``), side by side in the same process with the peer: the same weights under panopticlab's
own conventions (torchvision's boxes, the merge at the image's resolution). The released code
itself needs CUDA operators that no longer build, so it cannot be the peer.

Random weights give no confident detection; so that the whole pipeline runs as on a crowded image,
the box classifier's first thing class is biased (+8: every proposal scores ~1 for it, NMS keeps
up to 100 instances) and the mask logits are biased +3 (non-empty, overlapping masks). Median of
``--repeats`` after ``--warmup``, fp32, ``--threads`` threads.

    python benchmarks/bench_released_sognet.py --threads 2 --output benchmarks/results/bench_released_sognet.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from panopticlab.fileio import write_json
from panopticlab.models import load_model
from panopticlab.models.sognet.released import convert_released

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tests' random checkpoints of the released key lists
from test_sognet_released import released_checkpoint  # noqa: E402

RELEASED = {
    "sognet_r50_coco": ("configs/sognet/sognet_r50_coco_released.yaml", (800, 1333)),
    "upsnet_r50_coco": ("configs/sognet/upsnet_r50_coco_released.yaml", (800, 1333)),
    "upsnet_r50_cityscapes": ("configs/sognet/upsnet_r50_cityscapes_released.yaml", (1024, 2048)),
}
PANOPTICLAB_CONVENTIONS = ["model.sognet.box_convention=torchvision", "model.sognet.test_pipeline=panopticlab", "model.sognet.rpn_min_size=0.001"]


def time_predict(model, image: torch.Tensor, warmup: int, repeats: int) -> tuple[list[float], int]:
    with torch.no_grad():
        model.detector.roi_heads.box_predictor.cls_score.bias[1] += 8.0
        model.detector.roi_heads.mask_predictor.mask_fcn_logits.bias.fill_(3.0)
    for _ in range(warmup):
        model.predict(image)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = model.predict(image)[0]
        seconds.append(time.perf_counter() - start)
    return seconds, sum(s.isthing for s in result.segments)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(RELEASED), choices=list(RELEASED))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a 96 x 128 image resized to 96 x 128 (smoke test)")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.models:
            config, size = RELEASED[name]
            quick = ["model.sognet.min_size=96", "model.sognet.max_size=128"] if args.quick else []
            size = (96, 128) if args.quick else size
            checkpoint, weights = Path(scratch) / f"{name}.pth", Path(scratch) / f"{name}.safetensors"
            state = released_checkpoint(name, checkpoint)
            released_parameters = sum(v.numel() for v in state.values() if v.is_floating_point())
            convert_released(checkpoint, ROOT / config, weights)
            image = torch.randint(0, 256, (3, *size), generator=torch.Generator().manual_seed(0)).float()
            row = {"size": list(size), "released_parameters": released_parameters}
            for variant, overrides in (("released_conventions", []), ("panopticlab_conventions", PANOPTICLAB_CONVENTIONS)):
                model = load_model(ROOT / config, weights, overrides + quick)
                row["parameters"] = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
                seconds, instances = time_predict(model, image, args.warmup, args.repeats)
                row[variant] = {"seconds": statistics.median(seconds), "all_seconds": seconds, "instances": instances}
                print(f"{name} {variant}: {row[variant]['seconds']:.2f} s, {instances} instances", flush=True)
                del model
            row["ratio_released_to_panopticlab"] = row["released_conventions"]["seconds"] / row["panopticlab_conventions"]["seconds"]
            rows[name] = row
    report = {"quick": args.quick, "threads": args.threads, "torch": torch.__version__, "fp32": True, "results": rows}
    if args.output:
        write_json(args.output, report)
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
