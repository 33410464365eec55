"""The overlap-relation metric on hand-built cases: front relations, detection and direction counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from panopticlab.evaluation import OverlapRelationEvaluator, front_from_depth, front_from_visible
from panopticlab.masks import masks_to_boxes
from panopticlab.structures import PanopticResult

pytestmark = pytest.mark.usefixtures("one_thread")


def strips(ranges: list[tuple[int, int]], length: int = 12) -> torch.Tensor:
    """Masks [N, 1, length], mask k set on columns ranges[k][0] .. ranges[k][1] - 1."""
    masks = torch.zeros(len(ranges), 1, length, dtype=torch.bool)
    for k, (a, b) in enumerate(ranges):
        masks[k, 0, a:b] = True
    return masks


def relation(n: int, entries: dict[tuple[int, int], float]) -> torch.Tensor:
    o = torch.zeros(n, n)
    for (i, j), v in entries.items():
        o[i, j] = v
    return o


# Three instances: 0 and 1 overlap with 1 in front; 2 overlaps nothing.
GT_OVERLAP = relation(3, {(0, 1): 1, (1, 0): 1})
GT_FRONT = relation(3, {(0, 1): 1}).bool()  # [i, j]: j in front of i


def scores(o: torch.Tensor, overlap: torch.Tensor = GT_OVERLAP, front: torch.Tensor = GT_FRONT) -> dict:
    evaluator = OverlapRelationEvaluator()
    evaluator.add(o, overlap, front)
    return evaluator.evaluate()["overlap"]


def test_front_from_depth():
    front = front_from_depth(torch.tensor([2, 0, 1]))
    # [i, j] True when depth_j < depth_i.
    assert front.tolist() == [[False, True, True], [False, False, False], [False, True, False]]
    with pytest.raises(ValueError, match="non-negative"):
        front_from_depth(torch.tensor([0, -1]))


def test_front_from_visible():
    amodal = strips([(0, 6), (4, 10), (10, 12), (0, 3)])
    visible = strips([(0, 4), (4, 10), (10, 12), (0, 0)])
    # 0 and 1 share columns 4, 5, which 1 shows: 1 in front of 0. Instance 3 shares columns
    # 0..2 with 0 and shows nothing there (fully hidden): 0 in front of 3. 2 touches nobody.
    front = front_from_visible(amodal, visible)
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[0, 1] = expected[3, 0] = True
    assert torch.equal(front, expected)
    # A shared region that neither visible segment owns (VOID, crowd) has no front.
    void = strips([(0, 4), (6, 10), (10, 12), (0, 0)])
    assert not front_from_visible(amodal, void)[:2, :2].any()


def test_perfect_prediction():
    result = scores(relation(3, {(0, 1): 0.9}))
    assert result["pairs"] == 1 and result["predicted_pairs"] == 1
    assert result["precision"] == result["recall"] == result["f1"] == result["direction_accuracy"] == 1.0


def test_reversed_direction():
    result = scores(relation(3, {(1, 0): 0.9}))  # detects the overlap, picks the wrong front
    assert result["precision"] == result["recall"] == 1.0
    assert result["direction_pairs"] == 1 and result["direction_accuracy"] == 0.0


def test_missed_pair():
    result = scores(torch.zeros(3, 3))
    assert result["pairs"] == 1 and result["predicted_pairs"] == 0
    assert math.isnan(result["precision"])
    assert result["recall"] == 0.0 and result["f1"] == 0.0
    assert result["direction_accuracy"] == 0.0  # a tie names no front: wrong


def test_false_pair():
    # Right about (0, 1) but claims 2 overlaps 0 too.
    result = scores(relation(3, {(0, 1): 0.9, (2, 0): 0.7}))
    assert result["predicted_pairs"] == 2
    assert result["precision"] == 0.5 and result["recall"] == 1.0
    assert result["f1"] == pytest.approx(2 / 3)
    assert result["direction_pairs"] == 1 and result["direction_accuracy"] == 1.0  # only GT pairs count


def test_detection_threshold_is_strict():
    assert scores(relation(3, {(0, 1): 0.5}))["predicted_pairs"] == 0  # O + O^T must exceed 0.5
    assert scores(relation(3, {(0, 1): 0.51}))["predicted_pairs"] == 1
    # A below-threshold score still gives a direction.
    assert scores(relation(3, {(0, 1): 0.2}))["direction_accuracy"] == 1.0


def test_pairs_without_a_known_front_are_left_out_of_the_direction():
    result = scores(relation(3, {(0, 1): 0.9}), front=torch.zeros(3, 3, dtype=torch.bool))
    assert result["recall"] == 1.0
    assert result["direction_pairs"] == 0 and math.isnan(result["direction_accuracy"])


def test_empty_evaluator_and_tiny_images():
    evaluator = OverlapRelationEvaluator()
    assert evaluator.evaluate() == {}  # no image: nothing to report
    evaluator.add(torch.zeros(0, 0), torch.zeros(0, 0), torch.zeros(0, 0, dtype=torch.bool))
    evaluator.add(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1, dtype=torch.bool))
    assert evaluator.counts()["images"] == 2 and evaluator.counts()["gt_pairs"] == 0
    with pytest.raises(ValueError, match="gt_front"):
        evaluator.add(torch.zeros(2, 2), torch.zeros(2, 2), torch.zeros(3, 3, dtype=torch.bool))


def test_counts_add_up_over_images():
    images = [
        (relation(3, {(0, 1): 0.9}), GT_OVERLAP, GT_FRONT),
        (relation(3, {(1, 0): 0.9, (2, 1): 0.8}), GT_OVERLAP, GT_FRONT),
    ]
    together = OverlapRelationEvaluator()
    for image in images:
        together.add(*image)
    parts = []
    for image in images:
        part = OverlapRelationEvaluator()
        part.add(*image)
        parts.append(part.counts())
    assert together.counts() == {key: parts[0][key] + parts[1][key] for key in parts[0]}
    result = together.evaluate()["overlap"]
    assert (result["pairs"], result["predicted_pairs"], result["images"]) == (2, 3, 2)
    assert result["precision"] == pytest.approx(2 / 3) and result["recall"] == 1.0
    assert result["direction_accuracy"] == 0.5
    together.reset()
    assert together.counts()["images"] == 0


def test_process_scores_a_relation_model_on_the_items_instances():
    """The evaluator-protocol path: items with instances (exact depth, or visible segments only)."""
    amodal = strips([(0, 6), (4, 10), (10, 12)])
    o = relation(3, {(0, 1): 0.9})
    seen = []

    def relation_of(image, boxes, labels):
        seen.append((tuple(image.shape), boxes.tolist(), labels.tolist()))
        return o

    def item(depth):
        visible_ids = torch.zeros(1, 12, dtype=torch.int64)
        visible_ids[:, 0:4], visible_ids[:, 4:10], visible_ids[:, 10:12] = 1, 2, 3
        return {
            "image": torch.zeros(3, 1, 12, dtype=torch.uint8),
            "panoptic": PanopticResult(visible_ids.numpy().astype(np.int32), []),
            "instances": {
                "masks": amodal,
                "boxes": masks_to_boxes(amodal),
                "labels": torch.tensor([0, 1, 0]),
                "iscrowd": torch.tensor([False, False, False]),
                "depth": torch.tensor(depth),
                "panoptic_segment_ids": torch.tensor([1, 2, 3]),
            },
        }

    evaluator = OverlapRelationEvaluator(relation_of)
    evaluator.process([item([1, 0, 2]), {"image": torch.zeros(3, 2, 12)}, item([-1, -1, -1])], [None] * 3)
    by_hand = OverlapRelationEvaluator()
    by_hand.add(o, GT_OVERLAP, GT_FRONT)
    assert evaluator.counts() == {key: 2 * value for key, value in by_hand.counts().items()}
    assert len(seen) == 2 and seen[0][1][1] == [4.0, 0.0, 10.0, 1.0] and seen[0][2] == [0, 1, 0]
    with pytest.raises(ValueError, match="relation_of"):
        OverlapRelationEvaluator().process([item([1, 0, 2])], [None])


def test_add_masks_with_depth_and_with_visible_segments():
    # Instance 0 at the back, 1 in front of it (they share columns 4, 5), 2 apart.
    amodal = strips([(0, 6), (4, 10), (10, 12)])
    visible = strips([(0, 4), (4, 10), (10, 12)])
    o = relation(3, {(0, 1): 0.9})
    by_depth, by_visible, by_hand = OverlapRelationEvaluator(), OverlapRelationEvaluator(), OverlapRelationEvaluator()
    by_depth.add_masks(o, amodal, depth=torch.tensor([1, 0, 2]))
    by_visible.add_masks(o, amodal, visible_masks=visible)
    by_hand.add(o, GT_OVERLAP, GT_FRONT)
    assert by_depth.counts() == by_visible.counts() == by_hand.counts()
    with pytest.raises(ValueError, match="depth or visible"):
        by_hand.add_masks(o, amodal)
