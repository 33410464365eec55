"""SOGNet: overlap removal (factorised vs the original [N, N, H, W] broadcast) and end-to-end latency.

Part ``removal``: ``remove_overlaps`` (``X - X sigmoid(X) (O @ sigmoid(X))``, O(N H W) memory)
against ``remove_overlaps_naive`` (the released code's broadcast over an [N, N, H, W] tensor),
for N = 10, 50, 100 instances on the 200 x 336 canvas (stride 4 of an 800 x 1333 input, where
SOGNet trains its panoptic head). Two modes: ``forward`` (no autograd, as at inference) and
``train`` (forward + backward to X and O). Inputs: X ~ 4 N(0, 1) logits, O = ReLU(R - R^T)
with R uniform. The script asserts that both give the same output (and gradients) within
float32 round-off (see :func:`compare`), and reports time (median and minimum of
``--repeats`` calls after one warm-up call; the machine may be shared, the load average is
recorded), peak extra memory, and the ratios naive / factorised.

* CPU (``--threads`` threads): time in this process with the default allocator; memory in a
  fresh subprocess per measurement with glibc told to return freed memory at once
  (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, which slows small allocations,
  hence not used for timing), peak extra memory = ``VmHWM`` after one call - ``VmRSS``
  before it (``/proc/self/clear_refs`` resets the peak): every allocation, inputs excluded.
  The naive form is skipped, and the skip recorded, where its estimated need exceeds 60 % of
  the machine's available memory.
* CUDA (``--device cuda``): in process, synchronised timing; memory = peak allocated during
  the call - allocated before it (caching allocator statistics). A naive run that does not fit
  is recorded as out of memory.

Part ``latency``: end-to-end inference latency of one image, SOGNet (the COCO R50 config, random
weights, masks biased to overlap) against torchvision's ``maskrcnn_resnet50_fpn`` at the same
input size (``--latency-sizes``, default 480 x 640, COCO's usual image), see :func:`inference_latency`.

Writes ``outputs/bench_sognet.json`` (CPU) or ``outputs/bench_sognet_<device>.json``.

    python benchmarks/bench_sognet.py                                   # CPU, both parts
    python benchmarks/bench_sognet.py --parts removal --quick           # smoke test
    python benchmarks/bench_sognet.py --device cuda --sizes 200x336 800x1333 --latency-sizes 800x1333
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the test oracles

from oracles.overlap_removal_naive import remove_overlaps_naive  # noqa: E402

from panopticlab.fileio import write_json  # noqa: E402
from panopticlab.models.sognet import remove_overlaps  # noqa: E402
IMPLEMENTATIONS = {"factorised": remove_overlaps, "naive": remove_overlaps_naive}
#: measured peak extra memory of the naive form, in units of one [N, N, H, W] float32 tensor
NAIVE_MEMORY_FACTOR = {"forward": 2.2, "train": 3.4}


# --------------------------------------------------------------------------------------
# Part "removal"
# --------------------------------------------------------------------------------------


def make_inputs(n: int, height: int, width: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """Logits X [N, H, W], relation O [N, N] and an upstream gradient [N, H, W] (for ``train``)."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(n, n, generator=g)
    return {
        "logits": (torch.randn(n, height, width, generator=g) * 4).to(device),
        "relation": torch.relu(scores - scores.T).to(device),
        "grad": torch.randn(n, height, width, generator=g).to(device),
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_removal(impl: str, mode: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One call: the output and, in ``train`` mode, the gradients of X and O."""
    fn = IMPLEMENTATIONS[impl]
    if mode == "forward":
        with torch.no_grad():
            return {"output": fn(inputs["logits"], inputs["relation"])}
    logits = inputs["logits"].clone().requires_grad_(True)
    relation = inputs["relation"].clone().requires_grad_(True)
    output = fn(logits, relation)
    output.backward(inputs["grad"])
    return {"output": output.detach(), "grad_logits": logits.grad, "grad_relation": relation.grad}


def time_removal(impl: str, mode: str, inputs: dict[str, torch.Tensor], repeats: int) -> tuple[list[float], dict]:
    """Seconds of ``repeats`` calls after one warm-up, and the last call's results."""
    device = inputs["logits"].device
    times = []
    for _ in range(1 + repeats):
        synchronize(device)
        start = time.perf_counter()
        result = run_removal(impl, mode, inputs)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times[1:], result


def _memory_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(impl: str, mode: str, n: int, height: int, width: int, threads: int) -> None:
    """CPU subprocess: peak extra memory of one call, printed as one JSON line."""
    torch.set_num_threads(threads)
    inputs = make_inputs(n, height, width, torch.device("cpu"))
    Path("/proc/self/clear_refs").write_text("5")
    rss_before = _memory_kb("VmRSS")
    run_removal(impl, mode, inputs)
    print(json.dumps({"peak_extra_mb": (_memory_kb("VmHWM") - rss_before) / 1024}))


def cpu_peak_memory(impl: str, mode: str, n: int, height: int, width: int, threads: int) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    cmd = [sys.executable, __file__, "--child", impl, mode, str(n), str(height), str(width), str(threads)]
    done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_extra_mb"]


def cuda_peak_memory(impl: str, mode: str, inputs: dict[str, torch.Tensor]) -> float:
    device = inputs["logits"].device
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    run_removal(impl, mode, inputs)
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def compare(expected: dict, got: dict) -> float:
    """Largest |difference| over outputs and gradients; raises unless equal within float32 round-off.

    Round-off: relative 1e-3, absolute 1e-4 of the tensor's largest magnitude (the gradient of
    O sums H x W terms in a different order in each form).
    """
    worst = 0.0
    for key, value in expected.items():
        scale = float(value.abs().max()) if value.numel() else 0.0
        torch.testing.assert_close(got[key], value, rtol=1e-3, atol=1e-4 * scale, msg=lambda m, k=key: f"{k}: {m}")
        worst = max(worst, float((got[key] - value).abs().max()) if value.numel() else 0.0)
    return worst


def removal_benchmark(args, device: torch.device) -> list[dict]:
    """Both implementations on every (mode, canvas, N); one row each."""
    rows = []
    print(f"{'mode':>8} {'size':>9} {'N':>4} {'factorised ms':>14} {'naive ms':>10} {'time x':>7} "
          f"{'fact. MB':>9} {'naive MB':>9} {'memory x':>9}")  # fmt: skip
    settings = [(m, n, h, w) for m in args.modes for h, w in args.sizes for n in args.instances]
    for mode, n, height, width in settings:
        row: dict = {"mode": mode, "height": height, "width": width, "instances": n}
        results: dict[str, dict | None] = {}
        inputs = make_inputs(n, height, width, device)
        naive_need = NAIVE_MEMORY_FACTOR[mode] * n * n * height * width * 4
        for impl in IMPLEMENTATIONS:
            results[impl] = None
            if device.type == "cpu" and impl == "naive" and naive_need > 0.6 * available_bytes():
                row[impl] = {"skipped": f"needs about {naive_need / 2**30:.1f} GiB"}
                continue
            try:
                if device.type == "cuda":
                    peak = cuda_peak_memory(impl, mode, inputs)
                else:
                    peak = cpu_peak_memory(impl, mode, n, height, width, args.threads)
                times, result = time_removal(impl, mode, inputs, args.repeats)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                row[impl] = {"out_of_memory": True}
                continue
            row[impl] = {"seconds": statistics.median(times), "min_seconds": min(times), "peak_extra_mb": peak}
            results[impl] = {k: v.cpu() for k, v in result.items()}
            del result
        del inputs

        fact, naive = row["factorised"], row["naive"]
        if results["naive"] is not None and results["factorised"] is not None:
            row["max_abs_difference"] = compare(results["naive"], results["factorised"])
            row["time_ratio_naive_over_factorised"] = naive["seconds"] / fact["seconds"]
            row["memory_ratio_naive_over_factorised"] = naive["peak_extra_mb"] / max(fact["peak_extra_mb"], 1e-3)
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


def format_row(row: dict) -> str:
    def cell(r: dict, key: str, scale: float = 1.0) -> str:
        if key in r:
            return f"{r[key] * scale:.1f}"
        return "OOM" if r.get("out_of_memory") else "skip"

    fact, naive = row["factorised"], row["naive"]
    ratio_t = row.get("time_ratio_naive_over_factorised")
    ratio_m = row.get("memory_ratio_naive_over_factorised")
    return (
        f"{row['mode']:>8} {row['height']:>4}x{row['width']:<4} {row['instances']:>4} "
        f"{cell(fact, 'seconds', 1000):>14} {cell(naive, 'seconds', 1000):>10} "
        f"{f'{ratio_t:.1f}' if ratio_t else '-':>7} {cell(fact, 'peak_extra_mb'):>9} "
        f"{cell(naive, 'peak_extra_mb'):>9} {f'{ratio_m:.0f}' if ratio_m else '-':>9}"
    )


# --------------------------------------------------------------------------------------
# Part "latency"
# --------------------------------------------------------------------------------------


def latency_models(height: int, width: int, device: torch.device) -> dict[str, Callable[[torch.Tensor], int]]:
    """SOGNet (``configs/sognet/r50_coco.yaml``: ResNet-50 FPN, COCO heads) and torchvision's
    ``maskrcnn_resnet50_fpn``, both random-weighted, resizing inputs to ``height`` x ``width``.

    Both keep their own test settings (SOGNet: candidates above 0.6, at most 100; torchvision:
    above 0.05, at most 100). Their mask logits are biased to +3 so that every mask is non-empty
    and masks overlap: the whole post-processing runs, as with a trained model on a crowded image.
    (Telling SOGNet to keep every candidate instead, score threshold 0, makes its class-agnostic
    NMS run over every (proposal, class) pair, about 80,000 boxes: a case no trained model meets.)
    Each returned function predicts one image and returns the number of instances in its output
    (thing segments for SOGNet, detections for torchvision).
    """
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    from panopticlab.config import Config, load_config
    from panopticlab.models import build_model

    size = [f"model.sognet.min_size={height}", f"model.sognet.max_size={max(height, width)}"]
    config = load_config(Config, REPO / "configs/sognet/r50_coco.yaml", size)
    torch.manual_seed(0)  # the random weights decide how many instances survive, hence the work
    sognet = build_model(config).to(device).eval()
    torchvision_model = maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=height, max_size=max(height, width)
    ).to(device).eval()
    with torch.no_grad():
        for model in (sognet.detector, torchvision_model):
            model.roi_heads.mask_predictor.mask_fcn_logits.bias.fill_(3.0)
    return {
        "sognet": lambda image: sum(s.isthing for s in sognet.predict(image)[0].segments),
        "torchvision_maskrcnn": lambda image: len(torchvision_model([image / 255.0])[0]["boxes"]),
    }


def inference_latency(device: torch.device, sizes: list[tuple[int, int]], warmup: int, repeats: int) -> list[dict]:
    """End-to-end latency of one image, SOGNet's ``predict`` vs torchvision's Mask R-CNN.

    SOGNet: resize, backbone + FPN, RPN, box head, class-agnostic candidates, mask head, pasting,
    semantic head, relation + overlap removal, panoptic argmax, relabelling, a ``PanopticResult``.
    torchvision: resize, backbone + FPN, RPN, box head, per-class NMS, mask head, pasting: the
    detector alone, the floor SOGNet's extra heads and panoptic post-processing add to.
    One random uint8 image of each size, resized by both to that size; median and minimum of
    ``repeats`` calls after ``warmup``. Rows: size, model, seconds, and SOGNet / torchvision.
    """
    rows = []
    for height, width in sizes:
        image = torch.randint(0, 256, (3, height, width), generator=torch.Generator().manual_seed(0)).float().to(device)
        models = latency_models(height, width, device)
        timings = {}
        for name, run in models.items():
            with torch.no_grad():
                for _ in range(warmup):
                    run(image)
                times = []
                for _ in range(repeats):
                    synchronize(device)
                    start = time.perf_counter()
                    instances = run(image)
                    synchronize(device)
                    times.append(time.perf_counter() - start)
            timings[name] = statistics.median(times)
            row = {"size": f"{height}x{width}", "model": name, "median_s": timings[name], "min_s": min(times)}
            rows.append({**row, "instances": instances})
            print(f"latency {height}x{width} {name}: median {timings[name] * 1e3:.0f} ms, min {min(times) * 1e3:.0f} ms, "
                  f"{instances} instances out")  # fmt: skip
        ratio = timings["sognet"] / timings["torchvision_maskrcnn"]
        rows.append({"size": f"{height}x{width}", "model": "ratio sognet / torchvision_maskrcnn", "median_s": ratio})
        print(f"latency {height}x{width}: SOGNet / torchvision Mask R-CNN = {ratio:.2f}")
        del models
    return rows


# --------------------------------------------------------------------------------------


def parse_size(text: str) -> tuple[int, int]:
    height, width = text.lower().split("x")
    return int(height), int(width)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=["removal", "latency"], default=["removal", "latency"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=[(200, 336)], help="HxW canvases")
    parser.add_argument("--instances", nargs="+", type=int, default=[10, 50, 100], help="values of N")
    parser.add_argument("--modes", nargs="+", choices=sorted(NAIVE_MEMORY_FACTOR), default=["forward", "train"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--latency-sizes", nargs="+", type=parse_size, default=[(480, 640)], help="HxW inputs")
    parser.add_argument("--warmup", type=int, default=2, help="latency part: untimed calls first")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--quick", action="store_true", help="N = 4, 16 at 64x96, latency at 96x128 (smoke test)")
    parser.add_argument("--output", type=Path, default=None, help="default outputs/bench_sognet[_<device>].json")
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        impl, mode, n, h, w, threads = args.child
        memory_child(impl, mode, int(n), int(h), int(w), int(threads))
        return
    if args.quick:
        args.sizes, args.instances, args.latency_sizes = [(64, 96)], [4, 16], [(96, 128)]

    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    result = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
        "threads": args.threads,
        "torch": torch.__version__,
        "load_average_at_start": os.getloadavg()[0],
    }
    print(f"torch {torch.__version__}, {result['device_name']}, {args.threads} CPU threads, "
          f"load average {result['load_average_at_start']:.1f}")  # fmt: skip
    if "latency" in args.parts:
        result["latency"] = inference_latency(device, args.latency_sizes, args.warmup, args.repeats)
    if "removal" in args.parts:
        result["removal"] = removal_benchmark(args, device)
    result["load_average_at_end"] = os.getloadavg()[0]
    suffix = "" if device.type == "cpu" else f"_{device.type}"
    out = args.output or Path("outputs") / f"bench_sognet{suffix}.json"
    write_json(out, result, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
