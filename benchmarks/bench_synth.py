"""Benchmark: writing the overlapping-shapes dataset.

Times ``generate_split`` for N images of SIZE x SIZE with 1 and 2 worker processes, against
the budget of issue #2 (1,000 images of 256x256 in under 60 s on 2 cores), and describes the
split it wrote: overlapping pairs, segments, hidden things, crowd and VOID per image.

    .venv/bin/python benchmarks/bench_synth.py [--num-images 1000] [--size 256] [--json outputs/bench_synth.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

from panopticlab.data.synthetic import ShapesConfig, count_occlusion_pairs, generate_split, iter_split_instances
from panopticlab.fileio import read_json, write_json

BUDGET_S_PER_1000 = 60.0


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the pool's workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def time_split(out_dir: Path, num_images: int, config: ShapesConfig, workers: int) -> dict:
    start, start_cpu = time.perf_counter(), cpu_seconds()
    generate_split(out_dir, num_images, config, seed=0, split=f"workers{workers}", workers=workers)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - start_cpu
    budget = BUDGET_S_PER_1000 * num_images / 1000
    return {
        "workers": workers,
        "seconds": round(seconds, 3),
        "images_per_s": round(num_images / seconds, 1),
        "ms_per_image": round(1000 * seconds / num_images, 2),
        # CPU time is what the work costs; wall time also shows other load on the machine.
        "cpu_ms_per_image": round(1000 * cpu / num_images, 2),
        "budget_s": budget,
        "within_budget": seconds < budget,
    }


def describe_split(split_dir: Path) -> dict:
    """Per-image averages of what a split holds."""
    panoptic = read_json(split_dir / "panoptic.json")
    n = len(panoptic["images"])
    segments = [s for ann in panoptic["annotations"] for s in ann["segments_info"]]
    things = {c["id"] for c in panoptic["categories"] if c["isthing"]}
    instances = [inst for _, image_instances in iter_split_instances(split_dir) for inst in image_instances]
    pixels = {img["id"]: img["height"] * img["width"] for img in panoptic["images"]}
    labeled = {ann["image_id"]: sum(s["area"] for s in ann["segments_info"]) for ann in panoptic["annotations"]}
    void_images = sum(labeled[image_id] < n_pixels for image_id, n_pixels in pixels.items())
    disk = sum(p.stat().st_size for p in split_dir.rglob("*") if p.is_file())
    return {
        "overlapping_pairs_per_image": round(count_occlusion_pairs(split_dir) / n, 3),
        "segments_per_image": round(len(segments) / n, 3),
        "thing_segments_per_image": round(sum(s["category_id"] in things for s in segments) / n, 3),
        "things_per_image": round(sum(not i.iscrowd for i in instances) / n, 3),
        "fully_hidden_per_image": round(sum(i.panoptic_segment_id is None for i in instances) / n, 3),
        "crowd_segments_per_image": round(sum(s["iscrowd"] for s in segments) / n, 3),
        "images_with_void": round(void_images / n, 3),
        "kib_on_disk_per_image": round(disk / n / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--json", type=Path, default=Path("outputs/bench_synth.json"))
    args = parser.parse_args()

    config = ShapesConfig(height=args.size, width=args.size)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench_synth.") as tmp:
        runs = [time_split(Path(tmp), args.num_images, config, workers) for workers in (1, 2)]
        dataset = describe_split(Path(tmp) / "workers1")
    report = {
        "benchmark": "synth",
        "num_images": args.num_images,
        "size": [args.size, args.size],
        "cpu_count": os.cpu_count(),
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "python": platform.python_version(),
        "runs": runs,
        "dataset": dataset,
    }
    print(f"generate_split: {args.num_images} images of {args.size}x{args.size} (budget {runs[0]['budget_s']:.0f} s)")
    for r in runs:
        verdict = "ok" if r["within_budget"] else "OVER BUDGET"
        print(f"  workers={r['workers']}: {r['seconds']:7.2f} s  {r['images_per_s']:7.1f} images/s  "
              f"{r['ms_per_image']:6.2f} ms/image  (CPU {r['cpu_ms_per_image']:.2f} ms/image)  {verdict}")
    print(f"  load average before/after: {report['load_average']}")
    print("per image: " + ", ".join(f"{k} {v}" for k, v in dataset.items()))
    write_json(args.json, report, indent=2)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
