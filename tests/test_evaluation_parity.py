"""Agreement with cityscapesscripts' bit-exact copy of panopticapi on random data (tolerance 1e-12)."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

# The reference: cityscapesscripts' bit-exact copy of panopticapi (in the test extra; panopticapi-lite
# itself pins numpy<2).
from cityscapesscripts.evaluation import evalPanopticSemanticLabeling as reference

from panopticlab.evaluation import PanopticEvaluator, evaluate_files, pq_compute
from oracles.synthetic_pairs import make_pair, write_dataset


def reference_pq(gt_json, pred_json):
    """panopticapi's algorithm (cityscapesscripts' copy), in this process."""
    gt = json.loads(gt_json.read_text())
    pred = {a["image_id"]: a for a in json.loads(pred_json.read_text())["annotations"]}
    categories = {c["id"]: c for c in gt["categories"]}
    pairs = [(a, pred[a["image_id"]]) for a in gt["annotations"]]
    with contextlib.redirect_stdout(io.StringIO()):
        stat = reference.pq_compute_single_core(
            0, pairs, str(gt_json.with_suffix("")), str(pred_json.with_suffix("")), categories
        )
    return reference.average_pq(stat, categories)


def assert_same(ours, ref, tol=1e-12):
    for split in ("All", "Things", "Stuff"):
        assert ours[split]["n"] == ref[split]["n"]
        for key in ("pq", "sq", "rq"):
            assert abs(ours[split][key] - ref[split][key]) <= tol, (split, key)
    assert ours["per_class"].keys() == ref["per_class"].keys()
    for cat, scores in ref["per_class"].items():
        for key in ("pq", "sq", "rq"):
            assert abs(ours["per_class"][cat][key] - scores[key]) <= tol, (cat, key)


@pytest.fixture(scope="module", params=[True, False], ids=["void+crowd", "clean"])
def dataset(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic")
    gt_json, pred_json = write_dataset(
        folder, 12, seed=3, height=128, width=256, void_and_crowd=request.param, string_ids=not request.param
    )
    return gt_json, pred_json, request.param


def test_pq_compute_matches_reference(dataset):
    gt_json, pred_json, _ = dataset
    assert_same(pq_compute(gt_json, pred_json, workers=1), reference_pq(gt_json, pred_json))


def test_worker_processes_give_identical_numbers(dataset):
    gt_json, pred_json, _ = dataset
    single = evaluate_files(gt_json, pred_json, workers=1).evaluate()
    pooled = evaluate_files(gt_json, pred_json, workers=2).evaluate()
    np.testing.assert_equal(pooled, single)


def test_streaming_equals_file_based(dataset):
    gt_json, pred_json, void_and_crowd = dataset
    gt = json.loads(gt_json.read_text())
    evaluator = PanopticEvaluator(gt["categories"])
    for k, ann in enumerate(gt["annotations"]):
        pair = make_pair(3, k, 128, 256, void_and_crowd=void_and_crowd)
        item = {"panoptic": (pair.gt_map, pair.gt_segments), "image_id": ann["image_id"]}
        evaluator.process([item], [(pair.pred_map, pair.pred_segments)])
    np.testing.assert_equal(evaluator.evaluate(), evaluate_files(gt_json, pred_json, workers=1).evaluate())
