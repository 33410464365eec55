"""``panopticlab train / test`` on SOGNet and its baselines with a shapes config, and the overlap metric."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from test_sognet_model import TINY

from panopticlab.cli import main
from panopticlab.data.synthetic import ShapesConfig, generate_split

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """Shapes splits with many overlaps (and their instances.json) and a tiny SOGNet config file."""
    root = tmp_path_factory.mktemp("sognet_cli")
    shapes = ShapesConfig(height=64, width=64, overlap=0.8)
    generate_split(root / "data", 4, shapes, seed=0, split="train", workers=1)
    generate_split(root / "data", 2, shapes, seed=1, split="val", workers=1)
    config = {
        "model": TINY,
        "data": {"root": str(root / "data"), "train": {"folder": "train"}, "test": {"folder": "val"}, "num_workers": 0},
        "input": {"crop_size": [64, 64], "min_scale": 0.75, "max_scale": 1.25},
        "solver": {"batch_size": 2, "warmup_iters": 1, "tensorboard": False, "log_period": 1},
        "test": {"batch_size": 2},
        "device": "cpu",
    }
    config_file = root / "sognet.yaml"
    config_file.write_text(yaml.safe_dump(config))
    return {"root": root, "config": config_file}


def _train_and_test(setup, tmp_path, *overrides: str) -> dict:
    run = tmp_path / "run"
    config = str(setup["config"])
    assert main(["train", "--config", config, "solver.max_iter=2", f"output_dir={run}", *overrides]) == 0
    weights = run / "model_final.safetensors"
    assert main(["test", "--config", config, "--weights", str(weights), "--output", str(tmp_path / "test"), *overrides]) == 0
    return json.loads((tmp_path / "test" / "metrics.json").read_text())


def test_sognet_trains_and_tests_with_the_overlap_metric(setup, tmp_path, capsys):
    metrics = _train_and_test(setup, tmp_path)
    losses = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])["losses"]
    assert {"loss_mask", "loss_sem_seg", "loss_sem_roi", "loss_panoptic", "loss_relation"} <= set(losses)
    assert metrics["num_images"] == 2
    overlap = metrics["overlap"]
    assert overlap["images"] == 2 and overlap["pairs"] > 0  # the val images overlap
    assert set(overlap) >= {"pairs", "predicted_pairs", "precision", "recall", "f1", "direction_accuracy"}
    assert 0 <= overlap["direction_accuracy"] <= 1 and overlap["direction_pairs"] == overlap["pairs"]  # exact depths
    assert math.isclose(metrics["summary"]["overlap_direction"], 100 * overlap["direction_accuracy"])
    assert "Overlap relation" in capsys.readouterr().out


@pytest.mark.parametrize("method", ["upsnet", "heuristic"])
def test_baselines_train_and_test_from_the_same_config(setup, tmp_path, method):
    metrics = _train_and_test(setup, tmp_path, f"model.sognet.panoptic={method}")
    losses = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])["losses"]
    assert "loss_relation" not in losses and ("loss_panoptic" in losses) == (method == "upsnet")
    assert metrics["num_images"] == 2 and "overlap" not in metrics  # no relation module, no relation metric
    assert "PQ" in metrics["summary"]


def test_bad_sognet_values_are_one_line_errors(setup, tmp_path, capsys):
    config = str(setup["config"])
    assert main(["train", "--config", config, "model.sognet.backbone=vgg16", f"output_dir={tmp_path / 'a'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.sognet.backbone" in err
    assert main(["train", "--config", config, "model.sognet.relation_inference=fast", f"output_dir={tmp_path / 'b'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "relation_inference" in err
