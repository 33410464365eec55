"""``panopticlab evaluate``: score COCO-panoptic prediction files against ground truth.

``panopticlab.cli`` calls :func:`add_evaluate_arguments` and :func:`run_evaluate`;
``python -m panopticlab.evaluation.cli`` runs the same command on its own.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from panopticlab.errors import InputError
from panopticlab.evaluation.panoptic_files import evaluate_files
from panopticlab.evaluation.report import print_results, to_jsonable
from panopticlab.fileio import write_json


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``evaluate`` options to ``parser``."""
    parser.add_argument("--gt-json", required=True, help="ground-truth COCO-panoptic JSON")
    parser.add_argument("--pred-json", required=True, help="prediction COCO-panoptic JSON")
    parser.add_argument("--gt-folder", help="ground-truth PNG folder (default: the JSON path without .json)")
    parser.add_argument("--pred-folder", help="prediction PNG folder (default: the JSON path without .json)")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes (default: one per ~100 images, at most one per core; 1 = none)",
    )
    parser.add_argument("--output", help="write every result (per class, per image, mIoU, AP) to this JSON file")
    parser.add_argument("--per-class", action="store_true", help="print the per-category table")
    parser.add_argument(
        "--worst", type=int, default=10, metavar="N", help="list the N images of lowest PQ (default 10)"
    )
    parser.add_argument(
        "--ap", action="store_true", help="also compute instance AP (needs a 'score' on every predicted thing segment)"
    )
    parser.add_argument(
        "--class-agnostic",
        action="store_true",
        help="also score the things matched whatever their class (the 'Things, any class' row)",
    )
    parser.add_argument(
        "--no-check-gt",
        dest="check_gt",
        action="store_false",
        help="trust ground-truth JSON areas and lists as panopticapi does, instead of checking them against the PNGs",
    )


def run_evaluate(args: argparse.Namespace) -> int:
    """Run the evaluation; return the exit status. Bad input raises :class:`InputError`."""
    evaluator = evaluate_files(
        args.gt_json,
        args.pred_json,
        args.gt_folder,
        args.pred_folder,
        workers=args.workers,
        check_gt=args.check_gt,
        compute_ap=args.ap,
        class_agnostic=args.class_agnostic,
    )
    results = evaluator.evaluate(worst=max(args.worst, 0))
    print_results(results, per_class=args.per_class, worst=args.worst > 0)
    if args.output:
        write_json(args.output, to_jsonable(results), indent=2)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="panopticlab evaluate", description=__doc__.splitlines()[0])
    add_evaluate_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_evaluate(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
