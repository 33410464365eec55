"""Panoptic quality rule by rule on hand-built images, each scored in memory and through files.

Every expected number below is worked out on paper in the comment beside it. The helpers at
the top are shared with the other ``test_evaluation_*`` files.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from panopticlab.errors import InputError
from panopticlab.data.coco_panoptic import read_panoptic_png
from panopticlab.evaluation import PanopticEvaluator, evaluate_files, pq_compute
from panopticlab.evaluation.report import summarize, summary_table
from panopticlab.fileio import write_json
from panopticlab.structures import id2rgb

THING_A, THING_B, STUFF_A, STUFF_B = 1, 2, 10, 11
CATEGORIES = [
    {"id": THING_A, "name": "thingA", "isthing": 1},
    {"id": THING_B, "name": "thingB", "isthing": 1},
    {"id": STUFF_A, "name": "stuffA", "isthing": 0},
    {"id": STUFF_B, "name": "stuffB", "isthing": 0},
]


def gt_segments(id_map: np.ndarray, categories: dict[int, int], crowd: tuple[int, ...] = ()) -> list[dict[str, Any]]:
    """GT ``segments_info`` for the listed ids (in dict order), with areas counted from the map."""
    return [
        {"id": i, "category_id": c, "area": int((id_map == i).sum()), "iscrowd": int(i in crowd)}
        for i, c in categories.items()
    ]


def pred_segments(categories: dict[int, int]) -> list[dict[str, Any]]:
    return [{"id": i, "category_id": c} for i, c in categories.items()]


def write_files(
    folder: Path,
    images: list[tuple[Any, np.ndarray, list[dict[str, Any]], np.ndarray, list[dict[str, Any]]]],
    categories: list[dict[str, Any]] = CATEGORIES,
) -> tuple[Path, Path]:
    """Write ``(image_id, gt_map, gt_segments, pred_map, pred_segments)`` images as COCO-panoptic files."""
    (folder / "gt").mkdir(parents=True, exist_ok=True)
    (folder / "pred").mkdir(parents=True, exist_ok=True)
    gt_anns, pred_anns = [], []
    for k, (image_id, gt_map, gt_segs, pred_map, pred_segs) in enumerate(images):
        name = f"{k:04d}.png"
        Image.fromarray(id2rgb(gt_map)).save(folder / "gt" / name)
        Image.fromarray(id2rgb(pred_map)).save(folder / "pred" / name)
        gt_anns.append({"image_id": image_id, "file_name": name, "segments_info": gt_segs})
        pred_anns.append({"image_id": image_id, "file_name": name, "segments_info": pred_segs})
    write_json(folder / "gt.json", {"annotations": gt_anns, "categories": categories})
    write_json(folder / "pred.json", {"annotations": pred_anns})
    return folder / "gt.json", folder / "pred.json"


def score(
    folder: Path,
    gt_map: np.ndarray,
    gt_segs: list[dict[str, Any]],
    pred_map: np.ndarray,
    pred_segs: list[dict[str, Any]],
    *,
    check_gt: bool = True,
    image_id: Any = 0,
) -> dict[str, Any]:
    """Score one image in memory and through files; assert both agree exactly; return the results."""
    evaluator = PanopticEvaluator(CATEGORIES, check_gt=check_gt, class_agnostic=True)
    evaluator.add((gt_map, gt_segs), (pred_map, pred_segs), image_id=image_id)
    in_memory = evaluator.evaluate()
    gt_json, pred_json = write_files(folder, [(image_id, gt_map, gt_segs, pred_map, pred_segs)])
    from_files = evaluate_files(gt_json, pred_json, workers=1, check_gt=check_gt, class_agnostic=True).evaluate()
    np.testing.assert_equal(from_files["panoptic"], in_memory["panoptic"])
    np.testing.assert_equal(from_files["semantic"], in_memory["semantic"])
    np.testing.assert_equal(from_files["things_class_agnostic"], in_memory["things_class_agnostic"])
    return in_memory


def background(value: int, size: int = 10) -> np.ndarray:
    return np.full((size, size), value, dtype=np.int32)


def assert_scores(split: dict[str, Any], pq: float, sq: float, rq: float, n: int) -> None:
    assert split["n"] == n
    assert split["pq"] == pytest.approx(pq, abs=1e-15)
    assert split["sq"] == pytest.approx(sq, abs=1e-15)
    assert split["rq"] == pytest.approx(rq, abs=1e-15)


# -- the rules, one worked example each ----------------------------------------------------------


def test_perfect_prediction_with_two_segments_of_one_stuff_category(tmp_path):
    # stuffB background, stuffA as two separate segments: each stuff segment is matched on its own.
    gt = background(STUFF_B)
    gt[:, 0:3] = STUFF_A
    gt[:, 7:10] = 20010
    pred = background(5)
    pred[:, 0:3] = 6
    pred[:, 7:10] = 7
    res = score(
        tmp_path,
        gt,
        gt_segments(gt, {STUFF_B: STUFF_B, STUFF_A: STUFF_A, 20010: STUFF_A}),
        pred,
        pred_segments({5: STUFF_B, 6: STUFF_A, 7: STUFF_A}),
    )
    assert_scores(res["panoptic"]["All"], 1.0, 1.0, 1.0, 2)
    assert res["categories"][2]["tp"] == 2  # stuffA
    assert math.isnan(res["panoptic"]["Things"]["pq"]) and res["panoptic"]["Things"]["n"] == 0


def test_predicted_void_inside_a_gt_segment_stays_in_the_union(tmp_path):
    # GT thing 6x6 = 36 px; the prediction covers 24 px of it and leaves 12 px VOID.
    # IoU = 24 / (24 + 36 - 24 - 0) = 2/3 (the 12 VOID px still count); stuff IoU = 64/64 = 1.
    gt = background(STUFF_A)
    gt[2:8, 2:8] = 1001
    pred = background(5)
    pred[2:8, 2:8] = 7
    pred[2:8, 6:8] = 0
    res = score(
        tmp_path,
        gt,
        gt_segments(gt, {STUFF_A: STUFF_A, 1001: THING_A}),
        pred,
        pred_segments({5: STUFF_A, 7: THING_A}),
    )
    assert_scores(res["panoptic"]["Things"], 2 / 3, 2 / 3, 1.0, 1)
    assert_scores(res["panoptic"]["All"], (2 / 3 + 1) / 2, (2 / 3 + 1) / 2, 1.0, 2)
    # Semantic: thingA TP 24, FN 12 (predicted VOID) -> 2/3; stuffA 1; accuracy 88/100.
    assert res["semantic"]["per_class"][THING_A] == pytest.approx(2 / 3)
    assert res["semantic"]["miou"] == pytest.approx((2 / 3 + 1) / 2)
    assert res["semantic"]["pixel_accuracy"] == pytest.approx(0.88)
    assert math.isnan(res["semantic"]["per_class"][THING_B])


def test_gt_segment_under_predicted_void_is_a_false_negative(tmp_path):
    # thingA 4x4 predicted entirely VOID: 1 FN (PQ 0); stuff 84/84 -> 1. All = 0.5 each.
    gt = background(STUFF_A)
    gt[3:7, 3:7] = 1001
    pred = background(5)
    pred[3:7, 3:7] = 0
    res = score(tmp_path, gt, gt_segments(gt, {STUFF_A: STUFF_A, 1001: THING_A}), pred, pred_segments({5: STUFF_A}))
    assert_scores(res["panoptic"]["All"], 0.5, 0.5, 0.5, 2)
    assert res["categories"][0]["fn"] == 1


def test_prediction_overlap_with_gt_void_leaves_the_union(tmp_path):
    # GT thing 4x4 = 16 px beside a 4x4 VOID block; the prediction covers both (32 px).
    # IoU = 16 / (32 + 16 - 16 - 16) = 1.
    gt = background(STUFF_A)
    gt[0:4, 0:4] = 1001
    gt[0:4, 4:8] = 0
    pred = background(5)
    pred[0:4, 0:8] = 7
    res = score(
        tmp_path, gt, gt_segments(gt, {STUFF_A: STUFF_A, 1001: THING_A}), pred, pred_segments({5: STUFF_A, 7: THING_A})
    )
    assert_scores(res["panoptic"]["Things"], 1.0, 1.0, 1.0, 1)


def test_iou_of_exactly_one_half_is_not_a_match(tmp_path):
    # GT thing rows 0-1 x cols 0-2, prediction rows 0-1 x cols 1-3: 4 / (6 + 6 - 4) = 0.5 -> FP + FN.
    # Stuff: 92 / (94 + 94 - 92) = 23/24. All PQ = (0 + 23/24) / 2.
    gt = background(STUFF_A)
    gt[0:2, 0:3] = 1001
    pred = background(5)
    pred[0:2, 1:4] = 7
    res = score(
        tmp_path, gt, gt_segments(gt, {STUFF_A: STUFF_A, 1001: THING_A}), pred, pred_segments({5: STUFF_A, 7: THING_A})
    )
    assert res["panoptic"]["All"]["pq"] == pytest.approx(0.4791666666666667, abs=1e-15)
    thing = res["categories"][0]
    assert (thing["tp"], thing["fp"], thing["fn"]) == (0, 1, 1)


def test_categories_must_be_equal_to_match(tmp_path):
    # Same pixels, thingB predicted for a thingA: thingA FN, thingB FP, n = 3 (stuff too).
    gt = background(STUFF_A)
    gt[2:6, 2:6] = 1001
    pred = background(5)
    pred[2:6, 2:6] = 7
    res = score(
        tmp_path, gt, gt_segments(gt, {STUFF_A: STUFF_A, 1001: THING_A}), pred, pred_segments({5: STUFF_A, 7: THING_B})
    )
    assert_scores(res["panoptic"]["All"], 1 / 3, 1 / 3, 1 / 3, 3)


def test_class_agnostic_things_match_whatever_the_class(tmp_path):
    # thingA (16 px) predicted as thingB over 12 of its pixels; thingB (9 px) predicted right.
    # Per class: thingA FN; thingB TP (IoU 1) and FP. Any class: 2 TP, IoU 1 and 12/16.
    gt = background(STUFF_A)
    gt[0:4, 0:4] = 1001
    gt[6:9, 6:9] = 1002
    pred = background(5)
    pred[0:3, 0:4] = 7
    pred[6:9, 6:9] = 8
    res = score(
        tmp_path,
        gt,
        gt_segments(gt, {STUFF_A: STUFF_A, 1001: THING_A, 1002: THING_B}),
        pred,
        pred_segments({5: STUFF_A, 7: THING_B, 8: THING_B}),
    )
    thing_b = res["panoptic"]["per_class"][THING_B]
    assert thing_b["rq"] == pytest.approx(1 / (1 + 0.5), abs=1e-15) and res["panoptic"]["per_class"][THING_A]["pq"] == 0
    agnostic = res["things_class_agnostic"]
    assert (agnostic["tp"], agnostic["fp"], agnostic["fn"]) == (2, 0, 0)
    assert agnostic["pq"] == pytest.approx((1 + 12 / 16) / 2, abs=1e-15)
    assert agnostic["sq"] == pytest.approx((1 + 12 / 16) / 2, abs=1e-15) and agnostic["rq"] == 1.0
    # a wrong class costs nothing here, a missed or split thing still does
    assert res["panoptic"]["Things"]["pq"] < agnostic["pq"]
    assert summarize(res)["PQ_th_agnostic"] == pytest.approx(100 * agnostic["pq"])
    console = Console(record=True, width=100)
    console.print(summary_table(res))
    assert "│ Things, any class │ 87.5 │ 87.5 │ 100.0 │ 1 │" in console.export_text()


def test_class_agnostic_things_take_a_crowd_of_any_thing_class_and_nan_without_things(tmp_path):
    # thingB predicted on a thingA crowd: an FP per class, excused when any thing is any thing.
    gt = background(STUFF_A)
    gt[0:5, 0:6] = THING_A
    pred = background(5)
    pred[0:4, 0:4] = 7
    res = score(
        tmp_path,
        gt,
        gt_segments(gt, {STUFF_A: STUFF_A, THING_A: THING_A}, crowd=(THING_A,)),
        pred,
        pred_segments({5: STUFF_A, 7: THING_B}),
    )
    assert res["categories"][1]["fp"] == 1
    agnostic = res["things_class_agnostic"]
    assert (agnostic["tp"], agnostic["fp"], agnostic["fn"]) == (0, 0, 0) and math.isnan(agnostic["pq"])
    assert "things_class_agnostic" not in PanopticEvaluator(CATEGORIES).evaluate()  # opt-in
    stuff_only = PanopticEvaluator([c for c in CATEGORIES if not c["isthing"]], class_agnostic=True)
    stuff_only.add((background(STUFF_A), gt_segments(background(STUFF_A), {STUFF_A: STUFF_A})), (background(5), pred_segments({5: STUFF_A})))
    assert math.isnan(stuff_only.evaluate()["things_class_agnostic"]["pq"])


def test_crowd_is_never_a_false_negative_and_absorbs_same_category_predictions(tmp_path):
    # Crowd thingA on rows 0-4 x cols 0-5 (30 px). Predicted thingA 4x4 lying on the crowd:
    # ignored (16/16 on crowd). Predicted thingA 4x4 on stuff: FP. The crowd itself: not FN.
    # Stuff: GT 70 px, predicted 68 px, shared 54 -> 54 / (68 + 70 - 54) = 9/14.
    gt = background(STUFF_A)
    gt[0:5, 0:6] = THING_A
    pred = background(5)
    pred[0:4, 0:4] = 7
    pred[5:9, 5:9] = 8
    res = score(
        tmp_path,
        gt,
        gt_segments(gt, {STUFF_A: STUFF_A, THING_A: THING_A}, crowd=(THING_A,)),
        pred,
        pred_segments({5: STUFF_A, 7: THING_A, 8: THING_A}),
    )
    thing = res["categories"][0]
    assert (thing["tp"], thing["fp"], thing["fn"]) == (0, 1, 0)
    assert res["panoptic"]["All"]["pq"] == pytest.approx((0 + 9 / 14) / 2, abs=1e-15)
    # Semantic keeps the crowd's category: thingA 16 / (30 + 32 - 16), stuffA 54 / 84.
    assert res["semantic"]["miou"] == pytest.approx((16 / 46 + 54 / 84) / 2)


def test_crowd_of_another_category_does_not_excuse_a_prediction(tmp_path):
    gt = background(STUFF_A)
    gt[0:5, 0:6] = THING_A
    pred = background(5)
    pred[0:4, 0:4] = 7  # thingB on a thingA crowd: FP
    res = score(
        tmp_path,
        gt,
        gt_segments(gt, {STUFF_A: STUFF_A, THING_A: THING_A}, crowd=(THING_A,)),
        pred,
        pred_segments({5: STUFF_A, 7: THING_B}),
    )
    assert res["categories"][1]["fp"] == 1


@pytest.mark.parametrize("crowd_order, expected_fp", [((301, 302), 1), ((302, 301), 0)])
def test_only_the_last_listed_crowd_of_a_category_counts(tmp_path, crowd_order, expected_fp):
    # Two thingA crowd regions; the prediction lies on crowd 301. It is excused only when 301 is
    # the last crowd segment listed for thingA (panopticapi keeps one crowd per category).
    gt = background(STUFF_A)
    gt[0:4, 0:4] = 301
    gt[6:10, 6:10] = 302
    pred = background(5)
    pred[0:3, 0:3] = 7
    cats = {STUFF_A: STUFF_A, crowd_order[0]: THING_A, crowd_order[1]: THING_A}
    res = score(tmp_path, gt, gt_segments(gt, cats, crowd=(301, 302)), pred, pred_segments({5: STUFF_A, 7: THING_A}))
    assert res["categories"][0]["fp"] == expected_fp


@pytest.mark.parametrize("void_pixels, expected_fp", [(6, 0), (5, 1)])
def test_unmatched_prediction_is_ignored_only_when_more_than_half_lies_on_void(tmp_path, void_pixels, expected_fp):
    # A 10 px predicted thing (one row), void_pixels of it on GT VOID: 6/10 > 0.5 ignored, 5/10 is not.
    gt = background(STUFF_A)
    gt[0, 0:void_pixels] = 0
    pred = background(5)
    pred[0, 0:10] = 7
    res = score(tmp_path, gt, gt_segments(gt, {STUFF_A: STUFF_A}), pred, pred_segments({5: STUFF_A, 7: THING_A}))
    assert res["categories"][0]["fp"] == expected_fp
    assert res["panoptic"]["All"]["n"] == 1 + expected_fp


def test_gt_area_comes_from_the_json_when_not_checked(tmp_path):
    # thingA has 16 px but the JSON says 20: IoU = 16 / (16 + 20 - 16) = 0.8 (panopticapi trusts the JSON).
    gt = background(STUFF_A)
    gt[0:4, 0:4] = 1001
    pred = background(5)
    pred[0:4, 0:4] = 7
    segs = gt_segments(gt, {STUFF_A: STUFF_A, 1001: THING_A})
    segs[1]["area"] = 20
    res = score(tmp_path, gt, segs, pred, pred_segments({5: STUFF_A, 7: THING_A}), check_gt=False)
    assert res["panoptic"]["Things"]["sq"] == pytest.approx(0.8, abs=1e-15)
    with pytest.raises(InputError, match=r"ground-truth segment 1001 has area 20 in the JSON but 16 pixels"):
        score(tmp_path, gt, segs, pred, pred_segments({5: STUFF_A, 7: THING_A}))


def test_prediction_area_comes_from_the_png(tmp_path):
    gt = background(STUFF_A)
    gt[0:4, 0:4] = 1001
    pred = background(5)
    pred[0:4, 0:4] = 7
    segs = pred_segments({5: STUFF_A, 7: THING_A})
    segs[1]["area"] = 1  # wrong, and ignored
    res = score(tmp_path, gt, gt_segments(gt, {STUFF_A: STUFF_A, 1001: THING_A}), pred, segs)
    assert_scores(res["panoptic"]["All"], 1.0, 1.0, 1.0, 2)


def test_unlisted_gt_id_is_not_void_when_not_checked(tmp_path):
    # thingA 4x4 (id 1001) and an unlisted id 777 on the next 4x4; one 32 px thingA prediction.
    # IoU = 16 / (32 + 16 - 16 - 0) = 0.5 -> FP + FN (777 does not leave the union). PQ = (0 + 1) / 2.
    gt = background(STUFF_A)
    gt[0:4, 0:4] = 1001
    gt[0:4, 4:8] = 777
    pred = background(5)
    pred[0:4, 0:8] = 7
    segs = gt_segments(gt, {STUFF_A: STUFF_A, 1001: THING_A})
    res = score(tmp_path, gt, segs, pred, pred_segments({5: STUFF_A, 7: THING_A}), check_gt=False)
    assert_scores(res["panoptic"]["All"], 0.5, 0.5, 0.5, 2)
    with pytest.raises(InputError, match="ground-truth segment id 777 is in the PNG but not in segments_info"):
        score(tmp_path, gt, segs, pred, pred_segments({5: STUFF_A, 7: THING_A}))


def test_all_void_gives_nan_and_n_zero_instead_of_crashing(tmp_path):
    gt = np.zeros((6, 6), dtype=np.int32)
    res = score(tmp_path, gt, [], gt.copy(), [])
    for split in ("All", "Things", "Stuff"):
        assert res["panoptic"][split]["n"] == 0
        assert all(math.isnan(res["panoptic"][split][k]) for k in ("pq", "sq", "rq"))
    assert res["panoptic"]["per_class"][THING_A] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}
    assert math.isnan(res["semantic"]["miou"])


@pytest.mark.parametrize("image_id", [7, "frankfurt_000000_000294"])
def test_integer_and_string_image_ids(tmp_path, image_id):
    gt = background(STUFF_A, 4)
    res = score(
        tmp_path,
        gt,
        gt_segments(gt, {STUFF_A: STUFF_A}),
        background(9, 4),
        pred_segments({9: STUFF_A}),
        image_id=image_id,
    )
    assert res["panoptic"]["All"]["pq"] == 1.0
    assert res["images"][0]["image_id"] == image_id


def test_coco_sample_against_itself(coco_sample):
    gt_json = coco_sample / "panoptic_examples.json"
    res = pq_compute(gt_json, gt_json, workers=1)
    assert_scores(res["All"], 1.0, 1.0, 1.0, 8)
    assert res["Things"]["n"] == 4 and res["Stuff"]["n"] == 4
    assert len(res["per_class"]) == 133


# -- bad input: a clear error naming file, image and segment, never a number ---------------------


def _simple_case(tmp_path: Path, **changes: Any) -> tuple[Path, Path]:
    gt = background(STUFF_A)
    gt[0:4, 0:4] = 1001
    pred = background(5)
    pred[0:4, 0:4] = 7
    image = {
        "gt_map": gt,
        "gt_segs": gt_segments(gt, {STUFF_A: STUFF_A, 1001: THING_A}),
        "pred_map": pred,
        "pred_segs": pred_segments({5: STUFF_A, 7: THING_A}),
    }
    image.update(changes)
    return write_files(tmp_path, [(42, image["gt_map"], image["gt_segs"], image["pred_map"], image["pred_segs"])])


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"pred_segs": pred_segments({5: STUFF_A})},
            r"image 42 .*predicted segment id 7 is in the PNG but not in segments_info",
        ),
        (
            {"pred_segs": pred_segments({5: STUFF_A, 7: THING_A, 8: THING_A})},
            r"image 42 .*predicted segment 8 is in segments_info but not in the PNG",
        ),
        (
            {"pred_segs": pred_segments({5: STUFF_A, 7: 99})},
            r"image 42 .*predicted segment 7 has unknown category_id 99",
        ),
        ({"pred_segs": pred_segments({5: STUFF_A, 7: THING_A, 0: THING_A})}, r"image 42 .*segment id 0 is listed"),
        ({"pred_segs": pred_segments({5: STUFF_A, 7: THING_A}) * 2}, r"image 42 .*segment id 5 is listed twice"),
        ({"pred_map": np.full((10, 12), 5, dtype=np.int32)}, r"image 42: .* is 10x10 but .* is 12x10"),
        (
            {"gt_segs": [{"id": STUFF_A, "category_id": STUFF_A, "iscrowd": 0}]},
            r"image 42 .*segment 10 needs 'area' and 'iscrowd'",
        ),
    ],
)
def test_bad_input_raises_input_error(tmp_path, changes, message):
    gt_json, pred_json = _simple_case(tmp_path, **changes)
    with pytest.raises(InputError, match=message):
        pq_compute(gt_json, pred_json, workers=1)


def test_gt_image_without_prediction(tmp_path):
    gt_json, pred_json = _simple_case(tmp_path)
    write_json(pred_json, {"annotations": [{"image_id": "42", "file_name": "0000.png", "segments_info": []}]})
    with pytest.raises(InputError, match=r"no prediction for image_id 42 .*int vs string"):
        pq_compute(gt_json, pred_json)


def test_missing_png_and_non_rgb_png(tmp_path):
    gt_json, pred_json = _simple_case(tmp_path)
    (tmp_path / "pred" / "0000.png").unlink()
    with pytest.raises(InputError, match=r"image 42: .*0000.png: file not found"):
        pq_compute(gt_json, pred_json, workers=1)
    Image.fromarray(np.full((10, 10), 5, dtype=np.uint8)).save(tmp_path / "pred" / "0000.png")
    with pytest.raises(InputError, match="expected an 8-bit RGB or RGBA id PNG, got 8-bit grayscale"):
        pq_compute(gt_json, pred_json, workers=1)


def test_rgba_png_alpha_is_ignored(tmp_path):
    ids = np.array([[0, 1, 256], [65536, 16777215, 70000]], dtype=np.int64)
    rgba = np.concatenate([id2rgb(ids), np.full((2, 3, 1), 17, dtype=np.uint8)], axis=2)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_panoptic_png(tmp_path / "a.png"), ids)
