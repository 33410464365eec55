"""Panoptic-DeepLab network latency on a CPU: eager as detectron2 runs it, against the faster paths.

The reference is the plain eager R52-DSConv network (our module, whose outputs equal detectron2's to
1e-7 on its converted weights; detectron2 itself is not installed here), fp32, contiguous (NCHW).
Side by side in one process, the same random weights and input, warm runs on both sides:

* ``folded``: BatchNorm folded into the convolutions (``panopticlab.models.norm.fold_batchnorm``);
* ``folded_channels_last``: the same with channels_last weights and input (oneDNN's preferred layout);
* ``frozen_onednn``: the network traced, frozen and optimised for inference by TorchScript
  (``predict --frozen``, ``models/panoptic_deeplab/frozen.py``: BatchNorm folded, oneDNN convolutions
  with pre-packed weights); its one-off trace happens in the warm-up;
* ``bf16_autocast`` (with ``--bf16``): the eager network under bfloat16 autocast, heads handed on
  as float32 (``predict --bf16``, ``models/panoptic_deeplab/bf16.py``). Only where bf16 is native
  (AVX512-BF16, AMX) do oneDNN's bf16 convolutions run; elsewhere PyTorch falls back to its slow
  reference convolution (66x the fp32 time at 128x256 on this project's AVX2 machine), so it is
  off by default;
* ``onnxruntime``: the network exported by ``panopticlab export`` (BatchNorm folded by onnxruntime's
  graph optimiser), with the file's size.

End to end (image -> panoptic map and segments), eager ``predict`` against the TorchScript file of
``panopticlab export --format torchscript`` (network + post-processing), whose id map must equal
``predict``'s.

Each path's outputs are checked against the reference (largest difference relative to the output's
largest magnitude, and the share of pixels whose semantic argmax agrees). Reported: median seconds
of ``--repeats`` rounds after ``--warmup`` (each round times every network path once, in turn, so
that a drifting machine speed reaches all alike), and the ratio to the reference (< 1: faster).

    python benchmarks/bench_inference.py --size 512 1024 --threads 2 --output benchmarks/results/bench_inference.json
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch

from panopticlab.distributed import native_bf16
from panopticlab.fileio import write_json
from panopticlab.models.norm import fold_batchnorm
from panopticlab.models.panoptic_deeplab.bf16 import Bf16Network
from panopticlab.models.panoptic_deeplab.frozen import FrozenNetwork
from panopticlab.models.panoptic_deeplab.network import build_panoptic_deeplab


def interleaved_median_seconds(paths: dict, warmup: int, repeats: int) -> dict[str, float]:
    """Median seconds of each path, timed in rounds (every path once per round, in turn), so that a
    drift of the machine's speed during the run reaches every path alike."""
    for fn in paths.values():
        for _ in range(warmup):
            fn()
    seconds = {name: [] for name in paths}
    for _ in range(repeats):
        for name, fn in paths.items():
            start = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in seconds.items()}


def largest_difference(expected: dict, got: dict) -> float:
    return max(float((got[k] - v).abs().max()) / max(1.0, float(v.abs().max())) for k, v in expected.items())


def end_to_end(model, images: torch.Tensor, path: Path, args: argparse.Namespace) -> dict:
    """Eager predict against the TorchScript file (network + post-processing) on one image."""
    from panopticlab.export import export_torchscript

    image = images[0].round().to(torch.uint8)
    start = time.perf_counter()
    report = export_torchscript(model, path, sample_size=tuple(args.size))
    export_seconds = time.perf_counter() - start
    script = torch.jit.load(str(path))

    def scripted():
        with torch.no_grad():
            return script(image)

    # TorchScript's profiling executor specialises the graph over its first two runs: warm it up longer
    timed = interleaved_median_seconds({"eager": lambda: model.predict(image), "script": scripted}, max(3, args.warmup), args.repeats)
    eager_seconds, script_seconds = timed["eager"], timed["script"]
    same = bool((scripted()[0].numpy() == model.predict(image)[0].id_map).all())
    print(f"{'predict (eager)':>22}: {eager_seconds:.3f} s\n{'torchscript file':>22}: {script_seconds:.3f} s", flush=True)
    return {
        "reference": "eager model.predict (network + post-processing), one image",
        "eager_predict_seconds": eager_seconds,
        "torchscript_seconds": script_seconds,
        "ratio_to_reference": script_seconds / eager_seconds,
        "torchscript_file_mib": report.size_bytes / 2**20,
        "torchscript_export_seconds": export_seconds,
        "id_map_equal": same,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=(512, 1024))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bf16", action="store_true", help="also time the network under bf16 autocast")
    parser.add_argument("--no-onnx", action="store_true")
    parser.add_argument("--no-torchscript", action="store_true")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    reference = build_panoptic_deeplab(19).eval()
    with torch.no_grad():  # trained-looking statistics, so that folding changes numbers
        for m in reference.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3), m.running_var.uniform_(0.5, 2.0)
    images = torch.rand(1, 3, *args.size) * 255
    folded = copy.deepcopy(reference)
    fold_batchnorm(folded)
    channels_last = copy.deepcopy(folded).to(memory_format=torch.channels_last)
    images_cl = images.contiguous(memory_format=torch.channels_last)
    frozen = FrozenNetwork(copy.deepcopy(reference))

    def run(network, x):
        with torch.no_grad():
            return network(x)

    expected = run(reference, images)
    paths = {
        "reference_eager": lambda: run(reference, images),
        "folded": lambda: run(folded, images),
        "folded_channels_last": lambda: run(channels_last, images_cl),
        "frozen_onednn": lambda: frozen.forward_heads(images),
    }
    if args.bf16:
        bf16 = Bf16Network(copy.deepcopy(reference))
        paths["bf16_autocast"] = lambda: bf16.forward_heads(images)
    rows, extra = {}, {}
    from panopticlab.config import Config, from_dict
    from panopticlab.models import build_model

    model = build_model(from_dict(Config, {"model": {"arch": "panoptic_deeplab", "categories": "cityscapes"}}))
    model.network.load_state_dict(reference.state_dict())
    scratch = tempfile.TemporaryDirectory()
    if not args.no_onnx:
        from panopticlab.export import OnnxNetwork, export_onnx

        onnx_path = Path(scratch.name) / "r52_dsconv.onnx"
        start = time.perf_counter()
        report = export_onnx(model.eval(), onnx_path, sample_size=tuple(args.size))
        extra["onnx_export_seconds"] = time.perf_counter() - start
        extra["onnx_file_mib"] = report.size_bytes / 2**20
        onnx_network = OnnxNetwork(onnx_path, threads=args.threads)
        paths["onnxruntime"] = lambda: onnx_network.forward_heads(images)
    for name, seconds in interleaved_median_seconds(paths, args.warmup, args.repeats).items():
        got = paths[name]()
        rows[name] = {
            "seconds": seconds,
            "max_relative_difference": largest_difference(expected, got),
            "sem_seg_argmax_agreement": float((got["sem_seg"].argmax(1) == expected["sem_seg"].argmax(1)).float().mean()),
        }
        print(f"{name:>22}: {seconds:.3f} s", flush=True)
    for row in rows.values():
        row["ratio_to_reference"] = row["seconds"] / rows["reference_eager"]["seconds"]
    if not args.no_torchscript:
        extra["end_to_end"] = end_to_end(model.eval(), images, Path(scratch.name) / "r52_dsconv.pt", args)
    report = {
        "network": "Panoptic-DeepLab R52-DSConv, 19 classes (detectron2's Cityscapes model), random weights",
        "reference": "the plain eager network, fp32 NCHW (equal to detectron2's outputs to 1e-7 on its weights)",
        "size": list(args.size),
        "threads": args.threads,
        "torch": torch.__version__,
        "cpu_bf16_native": native_bf16(torch.device("cpu")),
        "results": rows,
        **extra,
    }
    if args.output:
        write_json(args.output, report)
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
