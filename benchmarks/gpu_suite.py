"""The GPU figures in one command: Panoptic-DeepLab latency and training speed, SOGNet latency.

On one GPU (under 8 minutes on an H100-class card), JSON out:

* Panoptic-DeepLab R52-DSConv (19 classes, random weights) at 1024x2048: fp32, bf16 autocast,
  channels_last, and torch.compile (default mode);
  batch 1 and 8; the network alone and end to end (network + post-processing on the GPU,
  ``panoptic_deeplab_inference``). Anchors: the TF original's 117 ms per 1024x2048 image on a V100,
  detectron2's 0.47 s end to end on a 2080Ti.
* training images/s of the same network at the Cityscapes crop (512x1024, batch 8) with bf16 AMP;
* SOGNet (R50-FPN, COCO sizes) latency at 800x1333, random weights, end to end;
* optionally the demo's PQ after ``--demo-minutes`` of training (0: skipped; 10 for issue 13's figure).

Without a GPU, ``--device cpu --quick`` runs every path at small sizes with a small network of the
same structure (the test suite does), so the script is known to work before a GPU is lent.

    python benchmarks/gpu_suite.py --output benchmarks/results/gpu_suite.json
    python benchmarks/gpu_suite.py --device cpu --quick --output /tmp/gpu_suite_quick.json
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from panopticlab.config import Config, from_dict
from panopticlab.fileio import write_json
from panopticlab.models import build_model
from panopticlab.models.panoptic_deeplab.network import build_panoptic_deeplab
from panopticlab.models.panoptic_deeplab.postprocess import panoptic_deeplab_inference

CITYSCAPES_THINGS = list(range(11, 19))
#: --quick: a small network of the same structure, so the smoke test takes seconds
QUICK_NETWORK = dict(
    backbone="timm:resnet10t", aspp_channels=32, semantic_decoder_channels=32, instance_decoder_channels=16,
    semantic_head_channels=32, instance_head_channels=16, semantic_projection_channels=(16, 8),
    instance_projection_channels=(16, 8),
)  # fmt: skip


def network_under_test(args: argparse.Namespace) -> torch.nn.Module:
    """R52-DSConv (19 classes, detectron2's Cityscapes model), or its small stand-in with --quick."""
    return build_panoptic_deeplab(19, **(QUICK_NETWORK if args.quick else {}))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, warmup: int, repeats: int) -> dict[str, float]:
    """Median and minimum seconds of ``fn()`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return {"median_s": statistics.median(seconds), "min_s": min(seconds)}


def panoptic_deeplab_latency(args: argparse.Namespace, device: torch.device) -> list[dict]:
    height, width = args.size
    rows = []
    base = network_under_test(args).to(device).eval()
    for variant in args.variants:
        network = base
        if variant == "channels_last":
            network = base.to(memory_format=torch.channels_last)
        if variant == "compile":
            network = torch.compile(base)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if variant == "bf16" else nullcontext()
        for batch in args.batch_sizes:
            images = torch.rand(batch, 3, height, width, device=device) * 255
            if variant == "channels_last":
                images = images.contiguous(memory_format=torch.channels_last)

            def network_only():
                with torch.no_grad(), autocast:
                    return network(images)

            def end_to_end():
                outputs = network_only()
                return panoptic_deeplab_inference(
                    outputs["sem_seg"].float(), outputs["center"].float(), outputs["offset"].float(),
                    thing_ids=CITYSCAPES_THINGS, stuff_area=2048, threshold=0.1, nms_kernel=7, top_k=200,
                )  # fmt: skip

            for what, fn in (("network", network_only), ("end_to_end", end_to_end)):
                t = timed(fn, device, args.warmup, args.repeats)
                row = {"variant": variant, "batch": batch, "what": what, "size": [height, width], **t}
                row["per_image_ms"] = 1000 * t["median_s"] / batch
                rows.append(row)
                print(f"panoptic-deeplab {variant:>13} batch {batch} {what:>10}: {row['per_image_ms']:8.1f} ms/image")
    return rows


def panoptic_deeplab_training(args: argparse.Namespace, device: torch.device) -> dict:
    height, width = args.crop
    network = network_under_test(args).to(device).train()
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4)
    images = torch.rand(args.train_batch, 3, height, width, device=device) * 255
    target = torch.randint(0, 19, (args.train_batch, height, width), device=device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16)

    def step():
        with amp:
            outputs = network(images)
            loss = torch.nn.functional.cross_entropy(outputs["sem_seg"].float(), target)
            loss = loss + outputs["center"].float().square().mean() + outputs["offset"].float().abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    t = timed(step, device, args.warmup, args.repeats)
    result = {"crop": [height, width], "batch": args.train_batch, "amp": "bf16", **t}
    result["images_per_s"] = args.train_batch / t["median_s"]
    print(f"panoptic-deeplab training at {height}x{width}: {result['images_per_s']:.1f} images/s")
    return result


def sognet_latency(args: argparse.Namespace, device: torch.device) -> dict:
    sognet = {"score_threshold": 0.0} if not args.quick else {
        "backbone": "timm:resnet10t", "fpn_channels": 32, "box_head_channels": 64, "mask_head_channels": 16,
        "semantic_num_layers": 1, "semantic_channels": 16, "relation_category_channels": 16,
        "relation_geometry_channels": 8, "min_size": 128, "max_size": 128, "score_threshold": 0.0,
    }  # fmt: skip
    model = build_model(from_dict(Config, {"model": {"arch": "sognet", "categories": "coco", "sognet": sognet}})).to(device).eval()
    height, width = args.sognet_size
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, device=device)
    t = timed(lambda: model.predict(image), device, args.warmup, args.repeats)
    print(f"sognet at {height}x{width}: {1000 * t['median_s']:.1f} ms")
    return {"size": [height, width], "weights": "random", **t}


def demo_pq(args: argparse.Namespace, device: torch.device) -> dict:
    from panopticlab.demo.pipeline import run_demo

    metrics, _ = run_demo(args.demo_output, minutes=args.demo_minutes)  # the demo's device: auto (CUDA when present)
    return {"minutes": args.demo_minutes, "metrics": metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats (a smoke test, e.g. on a CPU)")
    parser.add_argument("--variants", nargs="+", default=None, help="fp32 bf16 channels_last compile")
    parser.add_argument("--output", type=Path)
    parser.add_argument("--demo-minutes", type=float, default=0.0, help="also train the demo this long and report its PQ")
    parser.add_argument("--demo-output", type=Path, default=Path("outputs/gpu_suite_demo"))
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.quick:
        args.size, args.batch_sizes, args.crop, args.train_batch = (64, 128), [1, 2], (64, 128), 2
        args.sognet_size, args.warmup, args.repeats = (96, 128), 0, 1
        args.variants = args.variants or ["fp32", "bf16", "channels_last"]
    else:
        args.size, args.batch_sizes, args.crop, args.train_batch = (1024, 2048), [1, 8], (512, 1024), 8
        args.sognet_size, args.warmup, args.repeats = (800, 1333), 3, 10
        args.variants = args.variants or ["fp32", "bf16", "channels_last", "compile"]
    torch.backends.cudnn.benchmark = device.type == "cuda"
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "quick": args.quick,
        "anchors": {"tf_original_v100_ms_per_1024x2048": 117, "detectron2_2080ti_s_end_to_end": 0.47},
    }
    report["panoptic_deeplab_latency"] = panoptic_deeplab_latency(args, device)
    report["panoptic_deeplab_training"] = panoptic_deeplab_training(args, device)
    report["sognet_latency"] = sognet_latency(args, device)
    if args.demo_minutes > 0:
        report["demo"] = demo_pq(args, device)
    if args.output:
        write_json(args.output, report)
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
