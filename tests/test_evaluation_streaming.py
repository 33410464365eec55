"""The streaming evaluator (inputs, merging across processes), mIoU and instance AP."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from test_evaluation import CATEGORIES, STUFF_A, THING_A, THING_B

from panopticlab.errors import InputError
from panopticlab.evaluation import PanopticEvaluator, encode_id_map
from oracles.synthetic_pairs import coco_categories, make_pair
from panopticlab.structures import PanopticResult

PAIRS = [make_pair(5, k, 64, 128) for k in range(8)]


def assert_close(a: dict, b: dict, tol: float = 1e-12) -> None:
    for split in ("All", "Things", "Stuff"):
        assert a[split]["n"] == b[split]["n"]
        for key in ("pq", "sq", "rq"):
            assert abs(a[split][key] - b[split][key]) <= tol


def test_accepts_panoptic_results_and_torch_tensors():
    pair = PAIRS[0]
    things = [c["id"] for c in coco_categories() if c["isthing"]]
    gt_category = {s["id"]: s["category_id"] for s in pair.gt_segments}
    crowd = [s["id"] for s in pair.gt_segments if s["iscrowd"]]
    gt = PanopticResult.from_id_map(pair.gt_map, gt_category, things, crowd_ids=crowd)
    pred_category = {s["id"]: s["category_id"] for s in pair.pred_segments}
    pred = PanopticResult.from_id_map(pair.pred_map, pred_category, things)

    from_results = PanopticEvaluator(coco_categories())
    from_results.process([{"panoptic": gt}], [pred])
    from_tensors = PanopticEvaluator(coco_categories())
    from_tensors.add(
        (torch.from_numpy(pair.gt_map).long(), pair.gt_segments), (torch.from_numpy(pair.pred_map), pair.pred_segments)
    )
    np.testing.assert_equal(from_results.evaluate(), from_tensors.evaluate())


def test_state_dicts_merge_to_the_same_counts():
    whole = PanopticEvaluator(coco_categories(), class_agnostic=True)
    halves = [PanopticEvaluator(coco_categories(), class_agnostic=True) for _ in range(2)]
    for k, pair in enumerate(PAIRS):
        item = ((pair.gt_map, pair.gt_segments), (pair.pred_map, pair.pred_segments))
        whole.add(*item, image_id=k)
        halves[k % 2].add(*item, image_id=k)
    merged = PanopticEvaluator(coco_categories(), class_agnostic=True)
    for half in halves:
        merged.merge(pickle.loads(pickle.dumps(half.state_dict())))  # as sent between processes
    a, b = merged.evaluate(), whole.evaluate()
    assert_close(a["panoptic"], b["panoptic"])
    assert [c["tp"] for c in a["categories"]] == [c["tp"] for c in b["categories"]]
    np.testing.assert_equal(a["semantic"], b["semantic"])
    assert a["things_class_agnostic"] == pytest.approx(b["things_class_agnostic"], abs=1e-12)
    assert a["things_class_agnostic"]["tp"] > 0
    assert sorted(im["image_id"] for im in a["images"]) == list(range(len(PAIRS)))
    whole.reset()
    assert whole.evaluate()["num_images"] == 0


def _ddp_worker(rank: int, init_file: str, out_file: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    evaluator = PanopticEvaluator(coco_categories())
    for k, pair in enumerate(PAIRS):
        if k % 2 == rank:
            evaluator.add((pair.gt_map, pair.gt_segments), (pair.pred_map, pair.pred_segments), image_id=k)
    results = evaluator.evaluate()
    if rank == 0:
        with open(out_file, "wb") as f:
            pickle.dump(results, f)
    dist.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without distributed")
def test_distributed_evaluate_sums_every_rank(tmp_path):
    out = tmp_path / "results.pkl"
    torch.multiprocessing.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(out)), nprocs=2)
    with open(out, "rb") as f:
        distributed = pickle.load(f)
    single = PanopticEvaluator(coco_categories())
    for k, pair in enumerate(PAIRS):
        single.add((pair.gt_map, pair.gt_segments), (pair.pred_map, pair.pred_segments), image_id=k)
    assert_close(distributed["panoptic"], single.evaluate()["panoptic"])
    assert distributed["num_images"] == len(PAIRS)


def test_per_image_breakdown_and_worst_images():
    evaluator = PanopticEvaluator(coco_categories())
    for k, pair in enumerate(PAIRS):
        evaluator.add((pair.gt_map, pair.gt_segments), (pair.pred_map, pair.pred_segments), image_id=f"img{k}")
    res = evaluator.evaluate(worst=3)
    assert [im["image_id"] for im in res["images"]] == [f"img{k}" for k in range(len(PAIRS))]
    assert sum(im["tp"] for im in res["images"]) == sum(c["tp"] for c in res["categories"])
    assert sum(im["fp"] for im in res["images"]) == sum(c["fp"] for c in res["categories"])
    assert [im["pq"] for im in res["worst_images"]] == sorted(im["pq"] for im in res["images"])[:3]


def test_bad_in_memory_input():
    evaluator = PanopticEvaluator(CATEGORIES)
    gt = np.full((4, 4), STUFF_A, dtype=np.int32)
    gt_segs = [{"id": STUFF_A, "category_id": STUFF_A, "area": 16, "iscrowd": 0}]
    with pytest.raises(InputError, match="image 'x': shapes differ"):
        evaluator.add(
            (gt, gt_segs), (np.ones((4, 5), dtype=np.int32), [{"id": 1, "category_id": STUFF_A}]), image_id="x"
        )
    with pytest.raises(InputError, match="expected an integer id map"):
        evaluator.add((gt, gt_segs), (np.ones((4, 4), dtype=np.float32), []), image_id="x")
    with pytest.raises(InputError, match="ids must be >= 0"):
        evaluator.add((gt, gt_segs), (-np.ones((4, 4), dtype=np.int32), []), image_id="x")


# -- instance AP ---------------------------------------------------------------------------------


def _ap_case() -> tuple[PanopticResult, PanopticResult]:
    # Two GT thingA instances (25 px each). Detections: an exact copy of the first (score 0.9) and
    # a thingA elsewhere (score 0.8). Precision 1 up to recall 0.5, then nothing: at every IoU
    # threshold the 101-point interpolated AP is 51/101.
    gt_map = np.full((20, 20), STUFF_A, dtype=np.int32)
    gt_map[0:5, 0:5] = 1001
    gt_map[10:15, 10:15] = 1002
    gt = PanopticResult.from_id_map(gt_map, {STUFF_A: STUFF_A, 1001: THING_A, 1002: THING_A}, [THING_A, THING_B])
    pred_map = np.full((20, 20), 5, dtype=np.int32)
    pred_map[0:5, 0:5] = 7
    pred_map[0:5, 12:17] = 8
    pred = PanopticResult.from_id_map(
        pred_map, {5: STUFF_A, 7: THING_A, 8: THING_A}, [THING_A, THING_B], scores={5: 1.0, 7: 0.9, 8: 0.8}
    )
    return gt, pred


def test_instance_ap_from_panoptic_thing_segments():
    evaluator = PanopticEvaluator(CATEGORIES, compute_ap=True)
    gt, pred = _ap_case()
    evaluator.process([{"panoptic": gt, "image_id": 1}], [pred])
    ap = evaluator.evaluate()["instance"]
    assert ap["AP"] == pytest.approx(51 / 101) and ap["AP50"] == pytest.approx(51 / 101)
    assert ap["APs"] == pytest.approx(51 / 101) and math.isnan(ap["APm"])
    assert ap["per_class"][THING_A] == pytest.approx(51 / 101) and math.isnan(ap["per_class"][THING_B])


def test_instance_ap_from_separate_masks():
    gt, pred = _ap_case()
    masks = [
        {"mask": pred.id_map == 7, "category_id": THING_A, "score": 0.9},
        {"mask": torch.from_numpy(pred.id_map == 8), "category_id": THING_A, "score": 0.8},
    ]
    evaluator = PanopticEvaluator(CATEGORIES, compute_ap=True)
    evaluator.add(gt, pred, instances=masks)
    assert evaluator.evaluate()["instance"]["AP"] == pytest.approx(51 / 101)


def test_instance_ap_needs_scores():
    gt, pred = _ap_case()
    for s in pred.segments:
        s.score = None
    with pytest.raises(InputError, match="needs a 'score'"):
        PanopticEvaluator(CATEGORIES, compute_ap=True).add(gt, pred)


def test_encode_id_map_matches_pycocotools():
    id_map = PAIRS[1].gt_map
    ids = [s["id"] for s in PAIRS[1].gt_segments] + [123456]  # the last one is absent
    for seg_id, rle in zip(ids, encode_id_map(id_map, ids)):
        expected = mask_utils.encode(np.asfortranarray((id_map == seg_id).astype(np.uint8)))
        np.testing.assert_array_equal(mask_utils.decode(rle), mask_utils.decode(expected))
        assert mask_utils.area(rle) == mask_utils.area(expected)
