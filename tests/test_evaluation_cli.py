"""``panopticlab evaluate``: through the functions the main CLI calls, and as a command."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from panopticlab.errors import InputError
from panopticlab.evaluation.cli import add_evaluate_arguments, run_evaluate
from panopticlab.fileio import write_json


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_evaluate_arguments(parser)
    return parser.parse_args(list(argv))


def test_evaluate_coco_sample_writes_json(coco_sample, tmp_path, capsys):
    gt_json = coco_sample / "panoptic_examples.json"
    out = tmp_path / "results.json"
    args = parse("--gt-json", str(gt_json), "--pred-json", str(gt_json), "--output", str(out), "--per-class", "--ap")
    with pytest.raises(InputError, match="AP needs a 'score'"):  # GT segments carry no scores
        run_evaluate(args)
    args.ap = False
    assert run_evaluate(args) == 0
    printed = capsys.readouterr().out
    assert "Panoptic quality" in printed and "Per category" in printed and "100.0" in printed
    results = json.loads(out.read_text())
    assert results["panoptic"]["All"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 8}
    assert results["semantic"]["miou"] == 1.0
    assert {im["image_id"] for im in results["images"]} == {142238, 439180}
    assert results["panoptic"]["Things"]["n"] == 4
    assert (
        results["categories"][1]["pq"] == 0.0 and results["semantic"]["per_class"]["2"] is None
    )  # unseen: NaN -> null


def test_evaluate_with_ap_from_scored_predictions(coco_sample, tmp_path):
    gt_json = coco_sample / "panoptic_examples.json"
    pred = json.loads(gt_json.read_text())
    for ann in pred["annotations"]:
        for seg in ann["segments_info"]:
            seg["score"] = 0.5
    write_json(tmp_path / "pred.json", pred)
    out = tmp_path / "results.json"
    args = parse(
        "--gt-json", str(gt_json), "--pred-json", str(tmp_path / "pred.json"),
        "--pred-folder", str(coco_sample / "panoptic_examples"), "--ap", "--output", str(out),
    )  # fmt: skip
    assert run_evaluate(args) == 0
    assert json.loads(out.read_text())["instance"]["AP"] == 1.0


def test_command_exits_2_on_bad_input(tmp_path):
    write_json(tmp_path / "gt.json", {"annotations": [], "categories": []})
    write_json(tmp_path / "pred.json", {"annotations": []})
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "panopticlab",
            "evaluate",
            "--gt-json",
            str(tmp_path / "gt.json"),
            "--pred-json",
            str(tmp_path / "pred.json"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2, result.stderr
    assert "gt.json: categories: no categories" in result.stderr
