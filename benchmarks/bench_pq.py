"""Panoptic quality speed: panopticlab against panopticapi's algorithm and hotcoco, in one run.

Data: seeded synthetic COCO-panoptic pairs (``tests/oracles/synthetic_pairs.py``; default 200
images of 512x1024, ~20 segments each, VOID and crowd included), generated once under
``--data``. Every evaluator runs in this process on one core (hotcoco with one thread). The
table gives ms per image from the median CPU time of ``--repeats`` runs (robust to other load
on the machine; wall times beside it) and the ratios. The script fails if any PQ/SQ/RQ
(All/Things/Stuff and per category) differs from panopticapi's by more than 1e-12.

    pip install -e ".[bench]"      # cityscapesscripts, hotcoco, pyspng
    python benchmarks/bench_pq.py --output bench_pq.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # hotcoco on one thread; read when its pool starts

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from panopticlab.data.coco_panoptic import decode_rgba_pil, decode_rgba_pyspng, read_panoptic_png  # noqa: E402
from panopticlab.evaluation import PanopticEvaluator, pq_compute  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test oracles
from oracles.synthetic_pairs import write_dataset  # noqa: E402
from panopticlab.fileio import write_json  # noqa: E402

TOLERANCE = 1e-12


def timed(fn: Callable[[], Any], repeats: int) -> tuple[Any, list[float], list[float]]:
    """Run ``fn`` ``repeats`` times; return its last result, wall seconds and CPU seconds."""
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return result, walls, cpus


def max_difference(ours: dict[str, Any], ref: dict[str, Any]) -> float:
    """Largest |difference| of pq/sq/rq over All/Things/Stuff and every category (inf if n differs)."""
    worst = 0.0
    for split in ("All", "Things", "Stuff"):
        if ours[split]["n"] != ref[split]["n"]:
            return float("inf")
        worst = max(worst, *(abs(float(ours[split][k]) - float(ref[split][k])) for k in ("pq", "sq", "rq")))
    for cat, scores in ref["per_class"].items():
        mine = ours["per_class"][int(cat)]
        worst = max(worst, *(abs(float(mine[k]) - float(scores[k])) for k in ("pq", "sq", "rq")))
    return worst


# -- the evaluators ------------------------------------------------------------------------------


def reference_single_process(gt_json: Path, pred_json: Path, gt_dir: Path, pred_dir: Path) -> Callable[[], Any]:
    """panopticapi's algorithm in one process: panopticapi-lite if installed, else cityscapesscripts
    (a bit-exact copy of it that installs next to numpy 2)."""
    try:
        from panopticapi import evaluation as module  # type: ignore[import-not-found]

        name = "panopticapi (single process)"
    except ImportError:
        from cityscapesscripts.evaluation import evalPanopticSemanticLabeling as module

        name = "cityscapesscripts = panopticapi (single process)"

    def run() -> dict[str, Any]:
        gt = json.loads(gt_json.read_text())
        pred = {a["image_id"]: a for a in json.loads(pred_json.read_text())["annotations"]}
        categories = {c["id"]: c for c in gt["categories"]}
        pairs = [(a, pred[a["image_id"]]) for a in gt["annotations"]]
        with contextlib.redirect_stdout(io.StringIO()):
            stat = module.pq_compute_single_core(0, pairs, str(gt_dir), str(pred_dir), categories)
        results = {}
        for split, isthing in (("All", None), ("Things", True), ("Stuff", False)):
            results[split], per_class = stat.pq_average(categories, isthing=isthing)
            if split == "All":
                results["per_class"] = per_class
        return results

    run.label = name  # type: ignore[attr-defined]
    return run


def hotcoco_one_thread(gt_json: Path, pred_json: Path, gt_dir: Path, pred_dir: Path) -> Callable[[], Any] | None:
    try:
        from hotcoco import panoptic
    except ImportError:
        return None

    def run() -> dict[str, Any]:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints its own table
            return panoptic.pq_compute(str(gt_json), str(pred_json), str(gt_dir), str(pred_dir))

    return run


def in_memory_inputs(gt_json: Path, pred_json: Path, gt_dir: Path, pred_dir: Path) -> tuple[list[Any], list[dict]]:
    """Every image as int32 id maps + segment lists, as a model and a dataset would hand them over."""
    gt = json.loads(gt_json.read_text())
    pred = {a["image_id"]: a for a in json.loads(pred_json.read_text())["annotations"]}
    items = []
    for ann in gt["annotations"]:
        p = pred[ann["image_id"]]
        gt_map = read_panoptic_png(gt_dir / ann["file_name"])
        pred_map = read_panoptic_png(pred_dir / p["file_name"])
        items.append((ann["image_id"], (gt_map, ann["segments_info"]), (pred_map, p["segments_info"])))
    return items, gt["categories"]


def decode_all(files: list[Path], decoder: Callable[[bytes], Any]) -> Callable[[], None]:
    def run() -> None:
        for f in files:
            decoder(f.read_bytes())

    return run


def _decode_rgba_cv2(data: bytes) -> np.ndarray:
    """OpenCV's decoder, a peer here only (panopticlab reads with pyspng or Pillow)."""
    import cv2

    cv2.setNumThreads(1)
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    return cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA if image.shape[2] == 4 else cv2.COLOR_BGR2RGBA)


def available_decoders() -> dict[str, Callable[[bytes], Any]]:
    """The decoders installed: pyspng and Pillow (panopticlab's two), OpenCV when present."""
    decoders: dict[str, Callable[[bytes], Any]] = {}
    for label, fn in (
        ("pyspng", decode_rgba_pyspng),
        ("OpenCV imdecode", _decode_rgba_cv2),
        ("PIL", decode_rgba_pil),
    ):
        try:
            fn(_TINY_PNG)
        except ImportError:
            continue
        decoders[label] = fn
    return decoders


_TINY_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415408d763f8cfc000000301010018dd8db00000000049454e44ae426082"
)


# -- main ----------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="outputs/bench_pq/data", help="dataset folder (generated when absent)")
    parser.add_argument("--num-images", type=int, default=200)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default="bench_pq.json", help="JSON file for the measurements")
    args = parser.parse_args()

    console = Console(width=170)
    data = Path(args.data) / f"{args.num_images}x{args.height}x{args.width}"
    gt_json, pred_json = data / "gt.json", data / "pred.json"
    if not (gt_json.is_file() and pred_json.is_file()):
        console.print(f"generating {args.num_images} image pairs in {data} ...")
        write_dataset(data, args.num_images, seed=0, height=args.height, width=args.width)
    gt_dir, pred_dir = data / "gt", data / "pred"
    n = args.num_images
    rows: list[dict[str, Any]] = []

    def record(name: str, walls: list[float], cpus: list[float], diff: float | None = None) -> dict[str, Any]:
        row = {
            "name": name,
            "ms_per_image": 1000 * statistics.median(cpus) / n,  # CPU time: robust to other load
            "best_wall_ms_per_image": 1000 * min(walls) / n,
            "median_wall_ms_per_image": 1000 * statistics.median(walls) / n,
            "max_abs_diff_vs_reference": diff,
        }
        rows.append(row)
        console.print(f"  {name}: {row['ms_per_image']:.2f} ms/img")
        return row

    console.print("PNG decoders (2 PNGs per image):")
    pngs = sorted(gt_dir.glob("*.png")) + sorted(pred_dir.glob("*.png"))
    for label, decoder in available_decoders().items():
        _, walls, cpus = timed(decode_all(pngs, decoder), args.repeats)
        record(f"PNG decode only, {label}", walls, cpus)

    console.print("evaluators:")
    reference = reference_single_process(gt_json, pred_json, gt_dir, pred_dir)
    ref_result, walls, cpus = timed(reference, args.repeats)
    ref_row = record(reference.label, walls, cpus, 0.0)  # type: ignore[attr-defined]

    ours, walls, cpus = timed(lambda: pq_compute(gt_json, pred_json, workers=1), args.repeats)
    file_row = record("panopticlab pq_compute, files (1 process)", walls, cpus, max_difference(ours, ref_result))

    items, categories = in_memory_inputs(gt_json, pred_json, gt_dir, pred_dir)

    def in_memory() -> dict[str, Any]:
        evaluator = PanopticEvaluator(categories)
        for image_id, gt, pred in items:
            evaluator.add(gt, pred, image_id=image_id)
        return evaluator.evaluate()["panoptic"]

    ours_mem, walls, cpus = timed(in_memory, args.repeats)
    mem_row = record("panopticlab PanopticEvaluator, in memory", walls, cpus, max_difference(ours_mem, ref_result))

    hotcoco = hotcoco_one_thread(gt_json, pred_json, gt_dir, pred_dir)
    hot_row = None
    if hotcoco is not None:
        hot_result, walls, cpus = timed(hotcoco, args.repeats)
        hot_row = record("hotcoco pq_compute, files (1 thread)", walls, cpus, max_difference(hot_result, ref_result))

    # Ratios: how many times faster than each peer, per image per core.
    for row in rows:
        row["reference_ms_per_image_over_this"] = ref_row["ms_per_image"] / row["ms_per_image"]
    ratios = {
        "file_vs_panopticapi": ref_row["ms_per_image"] / file_row["ms_per_image"],
        "in_memory_vs_panopticapi": ref_row["ms_per_image"] / mem_row["ms_per_image"],
    }
    if hot_row is not None:
        ratios["file_vs_hotcoco"] = hot_row["ms_per_image"] / file_row["ms_per_image"]
        ratios["in_memory_vs_hotcoco"] = hot_row["ms_per_image"] / mem_row["ms_per_image"]

    table = Table(
        title=f"PQ on {n} synthetic {args.width}x{args.height} pairs: ms per image on one core "
        f"(median CPU time of {args.repeats} runs; wall times beside it)"
    )
    for col in ("evaluator", "CPU ms/img", "best wall", "median wall", "panopticapi / this", "max |Δ| vs panopticapi"):
        table.add_column(col, justify="left" if col == "evaluator" else "right")
    for row in rows:
        diff = row["max_abs_diff_vs_reference"]
        table.add_row(
            row["name"],
            f"{row['ms_per_image']:.2f}",
            f"{row['best_wall_ms_per_image']:.2f}",
            f"{row['median_wall_ms_per_image']:.2f}",
            f"{row['reference_ms_per_image_over_this']:.1f}x",
            "" if diff is None else f"{diff:.1e}",
        )
    console.print(table)
    console.print("ratios: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))

    write_json(
        args.output,
        {
            "num_images": n,
            "height": args.height,
            "width": args.width,
            "repeats": args.repeats,
            "python": sys.version.split()[0],
            "numpy": np.__version__,
            "machine": f"{platform.machine()} {platform.processor() or ''} cores={os.cpu_count()}".strip(),
            "pq_all": ours["All"],
            "rows": rows,
            "ratios": ratios,
        },
        indent=2,
    )
    console.print(f"wrote {args.output}")

    failures = [r["name"] for r in (file_row, mem_row) if not r["max_abs_diff_vs_reference"] <= TOLERANCE]
    if failures:
        console.print(f"[red]PQ differs from the reference by more than {TOLERANCE}: {failures}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
