"""Panoptic-DeepLab post-processing: panopticlab's version against a plain version of detectron2's.

Both implementations of ``get_panoptic_segmentation`` (``postprocess.py`` and the oracle
``tests/oracles/postprocess_reference.py``, which follows detectron2's algorithm and memory behaviour) run on
the same synthetic but realistic inputs at 512x1024 and 1024x2048 with about 30 and 200 centres,
on 2 CPU threads. The script asserts identical outputs and reports time, peak extra memory and
the speed-up.

Inputs: K Gaussian centre peaks (sigma 8, values 0.3..1, at least the NMS window apart);
rectangular thing objects around them (8 thing classes, ~25 % of the image, 5 % of their
pixels relabelled to another class so the vote has work to do) over bands of stuff classes;
offsets pointing to each object's centre plus Gaussian noise (sigma 2 px).

Each measurement runs in a fresh subprocess. Time (default allocator): the reference runs once
(it needs GBs and minutes at the largest setting), ours ``1 + --repeats`` times, the median of
the repeats reported. Memory: a separate subprocess with glibc told to return freed memory to
the OS at once (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, which slows small
allocations, hence not used for timing), so the resident set follows live tensors; the peak
resident set is reset (``/proc/self/clear_refs``) just before one call, and peak extra memory =
``VmHWM`` after it - ``VmRSS`` before it: every allocation torch makes, inputs excluded.

Usage::

    python benchmarks/bench_postprocess.py --output bench_postprocess.json
    python benchmarks/bench_postprocess.py --quick          # small sizes, a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test oracles

THING_IDS = list(range(11, 19))  # Cityscapes contiguous ids of the 8 thing classes
NUM_CLASSES = 19
SETTINGS = [(512, 1024, 30), (512, 1024, 200), (1024, 2048, 30), (1024, 2048, 200)]
QUICK_SETTINGS = [(128, 256, 10), (128, 256, 40)]
PARAMS = dict(label_divisor=1000, stuff_area=2048, void_label=-1, threshold=0.1, nms_kernel=7, top_k=200)


def make_inputs(height: int, width: int, num_centers: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Realistic network outputs: sem_seg int64 [1,H,W], center_heatmap [1,H,W], offsets [2,H,W]."""
    g = torch.Generator().manual_seed(seed)
    ys = torch.arange(height, dtype=torch.float32).view(-1, 1)
    xs = torch.arange(width, dtype=torch.float32).view(1, -1)

    # Stuff: horizontal bands of stuff classes 0..10, a few classes per image.
    band = (ys / height * 6).long().clamp(max=5).expand(height, width)
    sem = torch.tensor([10, 2, 8, 1, 0, 0])[band].clone()

    # Centres at least 8 px apart (so NMS 7 keeps them), objects around them.
    centers = []
    while len(centers) < num_centers:
        cy = int(torch.randint(8, height - 8, (1,), generator=g))
        cx = int(torch.randint(8, width - 8, (1,), generator=g))
        if all(abs(cy - y) > 8 or abs(cx - x) > 8 for y, x in centers):
            centers.append((cy, cx))
    mean_area = 0.25 * height * width / num_centers
    heatmap = torch.zeros(height, width)
    offsets = torch.randn(2, height, width, generator=g) * 20  # stuff pixels: anything
    for cy, cx in centers:
        aspect = float(torch.empty(1).uniform_(0.5, 2.0, generator=g))
        area = mean_area * float(torch.empty(1).uniform_(0.3, 1.7, generator=g))
        half_h = max(2, int((area * aspect) ** 0.5 / 2))
        half_w = max(2, int((area / aspect) ** 0.5 / 2))
        y0, y1 = max(0, cy - half_h), min(height, cy + half_h + 1)
        x0, x1 = max(0, cx - half_w), min(width, cx + half_w + 1)
        sem[y0:y1, x0:x1] = THING_IDS[int(torch.randint(len(THING_IDS), (1,), generator=g))]
        offsets[0, y0:y1, x0:x1] = cy - ys[y0:y1] + torch.randn(y1 - y0, x1 - x0, generator=g) * 2
        offsets[1, y0:y1, x0:x1] = cx - xs[:, x0:x1] + torch.randn(y1 - y0, x1 - x0, generator=g) * 2
        peak = float(torch.empty(1).uniform_(0.3, 1.0, generator=g))
        r0, r1 = max(0, cy - 24), min(height, cy + 25)
        c0, c1 = max(0, cx - 24), min(width, cx + 25)
        bump = peak * torch.exp(-((ys[r0:r1] - cy) ** 2 + (xs[:, c0:c1] - cx) ** 2) / (2 * 8.0**2))
        heatmap[r0:r1, c0:c1] = torch.maximum(heatmap[r0:r1, c0:c1], bump)
    flip = torch.rand(height, width, generator=g) < 0.05
    sem[flip] = torch.randint(NUM_CLASSES, (int(flip.sum()),), generator=g)
    return {"sem_seg": sem[None], "center_heatmap": heatmap[None], "offsets": offsets}


def _memory_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def run_one(mode: str, impl: str, height: int, width: int, num_centers: int, repeats: int, out_path: str) -> None:
    """Child process: one implementation on one setting; prints one JSON line.

    ``mode="memory"``: one call, peak extra memory. ``mode="time"``: one call, then ``repeats``
    more (median), and the outputs saved to ``out_path`` for the equality check.
    """
    torch.set_num_threads(2)
    if impl == "reference":
        from oracles.postprocess_reference import get_panoptic_segmentation_reference as fn
    else:
        from panopticlab.models.panoptic_deeplab.postprocess import (
            get_panoptic_segmentation as fn,
        )
    inputs = make_inputs(height, width, num_centers)
    if mode == "memory":
        Path("/proc/self/clear_refs").write_text("5")
        rss_before = _memory_kb("VmRSS")
        fn(**inputs, thing_ids=THING_IDS, **PARAMS)
        print(json.dumps({"peak_extra_mb": (_memory_kb("VmHWM") - rss_before) / 1024}))
        return
    times = []
    for _ in range(1 + repeats):
        start = time.perf_counter()
        panoptic, centers = fn(**inputs, thing_ids=THING_IDS, **PARAMS)
        times.append(time.perf_counter() - start)
    torch.save({"panoptic": panoptic, "centers": centers}, out_path)
    print(json.dumps({"seconds": statistics.median(times[1:] or times), "first_call_seconds": times[0]}))


def measure(mode: str, impl: str, setting: tuple[int, int, int], repeats: int, out_path: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="2")
    if mode == "memory":
        # Freed memory goes back to the OS at once, so the resident set follows live tensors.
        env.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    cmd = [sys.executable, __file__, "--child", mode, impl, *map(str, setting), str(repeats), out_path]
    done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, help="write the results as JSON here")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of panopticlab's version")
    parser.add_argument("--quick", action="store_true", help="small sizes only (smoke test)")
    parser.add_argument("--sizes", nargs="+", metavar="HxW", help="only these sizes, e.g. 512x1024 (the reference needs minutes and GBs at 1024x2048)")
    parser.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, impl, h, w, k, repeats, out_path = args.child
        run_one(mode, impl, int(h), int(w), int(k), int(repeats), out_path)
        return

    rows = []
    load_at_start = os.getloadavg()[0]  # the machine may be shared: timings depend on it
    header = f"{'size':>10} {'K':>4} {'reference s':>12} {'ours s':>9} {'speed-up':>9} {'ref peak MB':>12} {'our peak MB':>12}"
    print(f"torch {torch.__version__}, 2 CPU threads, load average {os.getloadavg()[0]:.1f} at start\n{header}")
    with tempfile.TemporaryDirectory() as tmp:
        settings = QUICK_SETTINGS if args.quick else SETTINGS
        if args.sizes:
            settings = [s for s in settings if f"{s[0]}x{s[1]}" in args.sizes]
        for height, width, num_centers in settings:
            ref_out, our_out = f"{tmp}/ref.pt", f"{tmp}/ours.pt"
            setting = (height, width, num_centers)
            ref = measure("time", "reference", setting, 0, ref_out)
            ours = measure("time", "ours", setting, args.repeats, our_out)
            ref.update(measure("memory", "reference", setting, 0, ref_out))
            ours.update(measure("memory", "ours", setting, 0, our_out))
            expected, got = torch.load(ref_out), torch.load(our_out)
            assert torch.equal(expected["centers"], got["centers"]), "centres differ from the reference"
            assert torch.equal(expected["panoptic"], got["panoptic"]), "panoptic maps differ from the reference"
            row = {
                "height": height,
                "width": width,
                "centers_found": int(got["centers"].shape[1]),
                "reference_seconds": ref["seconds"],
                "ours_seconds": ours["seconds"],
                "ours_first_call_seconds": ours["first_call_seconds"],
                "speedup": ref["seconds"] / ours["seconds"],
                "reference_peak_extra_mb": ref["peak_extra_mb"],
                "ours_peak_extra_mb": ours["peak_extra_mb"],
                "identical_outputs": True,
            }
            rows.append(row)
            print(
                f"{height:>4}x{width:<5} {row['centers_found']:>4} {row['reference_seconds']:>12.3f} "
                f"{row['ours_seconds']:>9.4f} {row['speedup']:>8.1f}x {row['reference_peak_extra_mb']:>12.1f} "
                f"{row['ours_peak_extra_mb']:>12.1f}"
            )
    if args.output:
        report = {
            "torch": torch.__version__,
            "threads": 2,
            "load_average_at_start_and_end": [load_at_start, os.getloadavg()[0]],
            "params": PARAMS,
            "results": rows,
        }
        args.output.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
