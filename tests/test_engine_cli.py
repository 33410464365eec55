"""``panopticlab train / test / predict`` end to end on a tiny model, and their one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from panopticlab.cli import main
from panopticlab.data.coco_panoptic import read_panoptic_png
from panopticlab.data.synthetic import ShapesConfig, generate_split

from test_pd_model import TINY


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A config file and the run `panopticlab train` made from it (2 iterations)."""
    root = tmp_path_factory.mktemp("cli")
    generate_split(root / "data", 4, ShapesConfig(height=64, width=64), seed=0, split="train", workers=1)
    generate_split(root / "data", 2, ShapesConfig(height=64, width=64), seed=1, split="val", workers=1)
    config = {
        "model": TINY,
        "data": {"root": str(root / "data"), "train": {"folder": "train"}, "test": {"folder": "val"}, "num_workers": 0},
        "input": {"crop_size": [48, 48]},
        "solver": {"batch_size": 2, "warmup_iters": 1, "tensorboard": False},
        "test": {"batch_size": 2},
        "device": "cpu",
    }
    config_file = root / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(config))
    run = root / "run"
    assert main(["train", "--config", str(config_file), "solver.max_iter=2", f"output_dir={run}"]) == 0
    return {"root": root, "config": config_file, "run": run, "weights": run / "model_final.safetensors"}


def test_train_saves_its_config_metrics_checkpoint_and_weights(trained):
    run = trained["run"]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["solver"]["max_iter"] == 2 and saved["output_dir"] == str(run)  # overrides included
    assert [json.loads(line)["iteration"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [2]
    assert (run / "last_checkpoint").read_text().strip() == "checkpoint_0000002"
    assert {p.name for p in run.glob("checkpoint_0000002*")} == {
        "checkpoint_0000002.safetensors",
        "checkpoint_0000002.optimizer.safetensors",
        "checkpoint_0000002.json",
    }
    assert trained["weights"].is_file()


def test_test_writes_coco_panoptic_predictions_and_scores(trained, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["test", "--config", str(trained["config"]), "--weights", str(trained["weights"]), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Panoptic quality" in printed and "mIoU" in printed and "AP" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 2
    assert set(metrics["summary"]) == {
        "PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st", "mIoU", "AP",
        "PQ_th_agnostic", "SQ_th_agnostic", "RQ_th_agnostic",
    }
    predictions = json.loads((out / "predictions" / "panoptic.json").read_text())
    assert len(predictions["annotations"]) == 2 and len(predictions["images"]) == 2
    for ann in predictions["annotations"]:
        id_map = read_panoptic_png(out / "predictions" / "panoptic" / ann["file_name"])
        assert id_map.shape == (64, 64)
        assert set(np.unique(id_map)) - {0} == {s["id"] for s in ann["segments_info"]}
    # the files evaluate to the same numbers with `panopticlab evaluate`
    val = trained["root"] / "data" / "val"
    args = ["evaluate", "--gt-json", str(val / "panoptic.json"), "--gt-folder", str(val / "panoptic")]
    args += ["--pred-json", str(out / "predictions" / "panoptic.json"), "--pred-folder", str(out / "predictions" / "panoptic")]
    args += ["--output", str(tmp_path / "evaluate.json")]
    assert main(args) == 0
    again = json.loads((tmp_path / "evaluate.json").read_text())
    assert again["panoptic"]["All"]["pq"] == pytest.approx(metrics["panoptic"]["All"]["pq"])
    assert main(["test", "--config", str(trained["config"]), "--weights", str(trained["weights"]), "--output", str(out)]) == 2


def test_predict_writes_png_json_and_overlay_per_image_for_files_and_folders(trained, tmp_path):
    images = trained["root"] / "data" / "val" / "images"
    extra = tmp_path / "photo.jpg"
    Image.fromarray(np.full((40, 56, 3), 90, np.uint8)).save(extra)
    out = tmp_path / "pred"
    args = ["predict", "--config", str(trained["config"]), "--weights", str(trained["weights"])]
    # overrides are KEY=VALUE words among the images, as on every command that reads a config
    override = "model.panoptic_deeplab.tta_flip=true"
    assert main(args + [str(images), override, "--output", str(out), "--batch-size", "2", str(extra)]) == 0
    stems = sorted(p.stem for p in images.iterdir()) + ["photo"]
    assert sorted(p.stem for p in (out / "panoptic").glob("*.png")) == sorted(stems)
    assert sorted(p.stem for p in (out / "overlays").glob("*.png")) == sorted(stems)
    entry = json.loads((out / "panoptic" / "photo.json").read_text())
    assert entry["file_name"] == "photo.png" and entry["image"] == str(extra)
    assert read_panoptic_png(out / "panoptic" / "photo.png").shape == (40, 56)
    assert len(json.loads((out / "panoptic.json").read_text())["annotations"]) == len(stems)


def test_train_logs_where_its_config_is_instead_of_printing_it(trained, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", str(trained["config"]), "solver.max_iter=1", f"output_dir={run}"]) == 0
    captured = capsys.readouterr()
    assert f"its full config is in {run / 'config.yaml'}" in captured.err
    assert "panoptic_deeplab:" not in captured.err + captured.out  # no YAML dump
    assert captured.out.strip() == f"iteration 1: final weights {run / 'model_final.safetensors'}"
    # overrides may also come after the options
    assert main(["-q", "train", "--config", str(trained["config"]), "--overwrite", "solver.max_iter=1", f"output_dir={run}"]) == 0
    assert capsys.readouterr().err == ""  # -q: warnings only
    assert main(["train", "--config", str(trained["config"]), "--overwrite", "solver.max_iter=1", "stray"]) == 2
    assert "override 'stray' is not of the form key=value" in capsys.readouterr().err


def _one_line_error(capsys, *words: str) -> None:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    for word in words:
        assert word in err, err


def test_bad_command_lines_are_one_line_errors_with_status_2(trained, tmp_path, capsys):
    config, weights = str(trained["config"]), str(trained["weights"])
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    _one_line_error(capsys, "missing.yaml", "not found")
    assert main(["train", "--config", config, "solver.max_iters=5"]) == 2
    _one_line_error(capsys, "unknown key 'solver.max_iters'")
    assert main(["train", "--config", config, f"output_dir={trained['run']}"]) == 2
    _one_line_error(capsys, "--resume")
    assert main(["test", "--config", config, "--weights", str(tmp_path / "nope.safetensors")]) == 2
    _one_line_error(capsys, "nope.safetensors", "not found")
    assert main(["predict", "--config", config, "--weights", weights, str(tmp_path / "none.png"), "--output", str(tmp_path)]) == 2
    _one_line_error(capsys, "none.png")
