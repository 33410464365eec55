"""Panoptic-DeepLab network: size, multiply-adds, forward latency, share of peak FLOP/s.

What is measured (network only: normalisation, backbone, decoders, heads, final x4 upsampling;
no post-processing):

* parameters per part, against detectron2's dump (R52 DSConv, 19 classes: 30,271,350);
* multiply-adds per image from ``torch.utils.flop_counter.FlopCounterMode`` on meta tensors
  (convolutions and matmuls; 1 MAC = 2 FLOPs), against detectron2's fvcore figure (419 G at
  1024x2048, which also counts BatchNorm, resizes and pooling);
* forward latency (median of ``--repeats`` after ``--warmup``) and images per second, per input
  size, dtype (fp32, bf16 autocast) and batch size; achieved FLOP/s as a share of the machine's
  measured peak (a large matmul in the same dtype).

The peer, run side by side: torchvision's DeepLabV3-ResNet50 (output stride 8, the usual
single-branch segmentation baseline) under the same settings; the ratio is its latency / ours.

    python benchmarks/bench_model.py                                  # CPU, fp32 + bf16, batch 1
    python benchmarks/bench_model.py --device cuda --batch-sizes 1 8 --channels-last --compile
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from panopticlab.fileio import write_json
from panopticlab.models.panoptic_deeplab.network import build_panoptic_deeplab

D2_PARAMS = {"total": 30_271_350, "backbone": 23_631_808, "semantic": 3_311_603, "instance": 3_327_939}
D2_MACS_1024x2048 = 419e9
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class TorchvisionDeepLabV3(nn.Module):
    """The peer: torchvision DeepLabV3-ResNet50 (19 classes), same 0..255 input and normalisation."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models.segmentation import deeplabv3_resnet50

        self.net = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=19, aux_loss=False)
        self.register_buffer("mean", torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1), False)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.net((images - self.mean) / self.std)


def count_macs(build: Callable[[], nn.Module], height: int, width: int) -> float:
    """Multiply-adds for one image, counted on meta tensors (no compute)."""
    with torch.device("meta"):
        model = build().eval()
        images = torch.empty(1, 3, height, width)
    with FlopCounterMode(display=False) as counter:
        model(images)
    return counter.get_total_flops() / 2


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_flops(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 5) -> float:
    """Measured FLOP/s of an n x n matmul: the practical peak of this machine for ``dtype``."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / min(times)


def time_forward(
    model: nn.Module, images: torch.Tensor, dtype: torch.dtype, warmup: int, repeats: int
) -> float:
    """Median seconds per forward pass."""
    device = images.device
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    times = []
    with torch.inference_mode(), autocast:
        for i in range(warmup + repeats):
            synchronize(device)
            start = time.perf_counter()
            model(images)
            synchronize(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def prepare(model: nn.Module, device: torch.device, channels_last: bool, compile_model: bool) -> nn.Module:
    model = model.eval().to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return torch.compile(model) if compile_model else model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", nargs="+", default=["512x1024", "1024x2048"])
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["fp32", "bf16"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, help="default: 1 on CPU, 1 and 8 on GPU")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile both networks")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-peer", action="store_true", help="skip torchvision DeepLabV3-ResNet50")
    parser.add_argument("--output", type=Path, default=None, help="JSON file; default outputs/bench_model_<device>.json")
    args = parser.parse_args()

    device = torch.device(args.device)
    batch_sizes = args.batch_sizes or ([1] if device.type == "cpu" else [1, 8])
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes]
    torch.manual_seed(0)

    def ours() -> nn.Module:
        return build_panoptic_deeplab(19)

    builders = {"panoptic_deeplab_r52_dsconv": ours}
    if not args.no_peer:
        builders["torchvision_deeplabv3_r50"] = TorchvisionDeepLabV3

    with torch.device("meta"):
        counts = ours().parameter_counts()
    macs = {name: {f"{h}x{w}": count_macs(build, h, w) for h, w in sizes} for name, build in builders.items()}
    print(f"parameters: {counts}  (detectron2: {D2_PARAMS}, equal: {counts == D2_PARAMS})")
    for name, per_size in macs.items():
        print(f"{name}: multiply-adds per image " + ", ".join(f"{s}: {m / 1e9:.1f} G" for s, m in per_size.items()))
    if "1024x2048" in macs["panoptic_deeplab_r52_dsconv"]:
        ratio = macs["panoptic_deeplab_r52_dsconv"]["1024x2048"] / D2_MACS_1024x2048
        print(f"  ours / detectron2 fvcore 419 G at 1024x2048: {ratio:.3f}")

    peaks = {d: peak_flops(device, DTYPES[d], 2048 if device.type == "cpu" else 8192) for d in args.dtypes}
    print("measured matmul peak: " + ", ".join(f"{d} {p / 1e9:.1f} GFLOP/s" for d, p in peaks.items()))

    models = {name: prepare(build(), device, args.channels_last, args.compile) for name, build in builders.items()}
    rows = []
    for (height, width), dtype_name, batch in [(s, d, b) for s in sizes for d in args.dtypes for b in batch_sizes]:
        images = torch.rand(batch, 3, height, width, device=device) * 255
        if args.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        row = {"size": f"{height}x{width}", "dtype": dtype_name, "batch": batch}
        for name, model in models.items():
            seconds = time_forward(model, images, DTYPES[dtype_name], args.warmup, args.repeats)
            flops = 2 * macs[name][row["size"]] * batch / seconds
            row[name] = {
                "latency_ms": 1000 * seconds,
                "images_per_s": batch / seconds,
                "tflops": flops / 1e12,
                "share_of_peak": flops / peaks[dtype_name],
            }
        line = f"{row['size']} {dtype_name} batch {batch}: " + " | ".join(
            f"{n} {r['latency_ms']:.0f} ms, {r['images_per_s']:.2f} img/s, {100 * r['share_of_peak']:.0f}% of peak"
            for n, r in row.items()
            if isinstance(r, dict)
        )
        if "torchvision_deeplabv3_r50" in row:
            row["peer_latency_over_ours"] = (
                row["torchvision_deeplabv3_r50"]["latency_ms"] / row["panoptic_deeplab_r52_dsconv"]["latency_ms"]
            )
            line += f" | peer/ours latency {row['peer_latency_over_ours']:.2f}"
        print(line, flush=True)
        rows.append(row)

    result = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "channels_last": args.channels_last,
        "compile": args.compile,
        "parameters": counts,
        "parameters_detectron2": D2_PARAMS,
        "macs": macs,
        "macs_detectron2_1024x2048": D2_MACS_1024x2048,
        "peak_flops": peaks,
        "rows": rows,
    }
    out = args.output or Path("outputs") / f"bench_model_{device.type}.json"
    write_json(out, result, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
