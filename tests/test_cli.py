"""The command line: exit codes, one-line errors, and the files each command writes."""

import json
import math
import subprocess
import sys

from PIL import Image

from panopticlab.cli import main


def test_synth_writes_a_split_and_refuses_to_overwrite_it(tmp_path, capsys):
    args = ["synth", "--out", str(tmp_path), "--num-images", "3", "--height", "64", "--width", "64", "--workers", "1"]
    assert main(args + ["--pictures", "2"]) == 0
    split = tmp_path / "train"
    panoptic = json.loads((split / "panoptic.json").read_text())
    assert len(panoptic["images"]) == 3 and panoptic["info"]["config"]["height"] == 64
    assert len(list((split / "panoptic").glob("*.png"))) == 3
    assert len(list((tmp_path / "train_pictures").glob("*.png"))) == 2
    before = (split / "panoptic.json").read_bytes()

    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists" in err and str(split) in err
    assert (split / "panoptic.json").read_bytes() == before


def test_synth_rejects_a_bad_knob(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path), "--num-images", "2", "--overlap", "1.5"]) == 2
    assert "overlap" in capsys.readouterr().err
    assert not (tmp_path / "train").exists()


def test_visualize_the_real_coco_sample(coco_sample, tmp_path):
    code = main(
        [
            "visualize",
            "--panoptic-json", str(coco_sample / "panoptic_examples.json"),
            "--panoptic-folder", str(coco_sample / "panoptic_examples"),
            "--image-folder", str(coco_sample / "input_images"),
            "--out", str(tmp_path),
        ]
    )
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000000142238.png", "000000439180.png"]


def test_visualize_missing_input_is_a_one_line_error(tmp_path, capsys):
    assert main(["visualize", str(tmp_path / "nowhere"), "--out", str(tmp_path / "pics")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nowhere" in err
    assert main(["visualize", "--out", str(tmp_path / "pics")]) == 2


def test_demo_trains_evaluates_and_reports_and_reuses_its_data(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--output", str(out), "--num-images", "8", "--minutes", "0.02"]) == 0
    printed = capsys.readouterr()
    header, *rest = printed.out.splitlines()
    assert header.startswith("panopticlab demo: 8 + 2 overlapping-shapes images (128x128)")
    assert "for 0.02 min on cpu" in printed.out and "Panoptic quality" in printed.out and "Per category" in printed.out
    assert f"report: {out / 'report.html'}" in printed.out
    assert printed.err == ""  # not a terminal: no bars; the log is for -v
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["train"]["images"] == 8 and metrics["data"]["val"]["images"] == 2
    assert metrics["iterations"] >= 1 and {"PQ", "PQ_th", "PQ_st", "SQ", "RQ", "mIoU"} <= set(metrics)
    assert metrics["train_minutes"] >= 0.02 and metrics["device"] == "cpu"
    report = (out / "report.md").read_text()
    assert "| All |" in report and "| Things, any class |" in report and "pictures/000001.png" in report and "| circle | thing |" in report
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and 'src="thing_confusion.png"' in page and "<td>circle</td>" in page
    pictures = sorted((out / "pictures").glob("*.png"))
    assert len(pictures) == 2 and Image.open(pictures[0]).width > 4 * 2 * 128  # four panels at twice the size
    assert Image.open(out / "thing_confusion.png").size[0] > 300
    assert (out / "test" / "predictions" / "panoptic.json").is_file() and (out / "train" / "config.yaml").is_file()
    stamp = (out / "data" / "train" / "panoptic.json").stat().st_mtime_ns
    assert main(["-v", "demo", "--output", str(out), "--num-images", "8", "--minutes", "0.02"]) == 0
    assert (out / "data" / "train" / "panoptic.json").stat().st_mtime_ns == stamp
    assert "its full config is in" in capsys.readouterr().err  # -v: the training log


def test_thing_confusion_rows_are_the_shares_of_each_shapes_pixels():
    from panopticlab.demo import thing_confusion

    # categories 1, 2 (things) and 11 (stuff); columns: 1, 2, 11, VOID
    results = {
        "categories": [{"id": 1, "name": "circle", "isthing": True}, {"id": 2, "name": "square", "isthing": True}, {"id": 11, "name": "sky", "isthing": False}],
        "semantic": {"confusion": {"ids": [1, 2, 11], "matrix": [[6, 2, 1, 1], [0, 0, 0, 0], [5, 5, 90, 0]]}},
    }
    rows, columns, table = thing_confusion(results)
    assert rows == ["circle", "square"] and columns == ["circle", "square", "stuff", "void"]
    assert table[0].tolist() == [0.6, 0.2, 0.1, 0.1]
    assert all(math.isnan(v) for v in table[1])  # no square pixels in the ground truth


def test_loss_curve_is_an_svg_polyline_per_loss():
    from panopticlab.demo import loss_curve_svg

    records = [{"iteration": i, "loss": 4.0 / i, "losses": {"loss_a": 3.0 / i, "loss_b": 1.0 / i}} for i in (1, 2, 4)]
    svg = loss_curve_svg(records)
    assert svg.startswith("<svg") and svg.count("<polyline") == 3 and "loss_b" in svg
    assert loss_curve_svg(records[:1]) == ""


def test_python_dash_m_and_usage_errors():
    help_run = subprocess.run([sys.executable, "-m", "panopticlab", "--help"], capture_output=True, text=True)
    assert help_run.returncode == 0 and "synth" in help_run.stdout and "evaluate" in help_run.stdout
    bad = subprocess.run([sys.executable, "-m", "panopticlab", "nonsense"], capture_output=True, text=True)
    assert bad.returncode == 2
