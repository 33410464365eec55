"""The occlusion figures of the relation experiment, on hand-worked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from panopticlab.evaluation.categories import CategoryTable
from panopticlab.evaluation.evaluator import evaluate_image
from panopticlab.evaluation.occlusion import (
    bootstrap_interval,
    class_counts,
    front_pixels,
    occluded_instances,
    pairs_ranked_front,
    panoptic_quality,
)

# two thing categories (ids 1, 2) and one stuff (id 3)
TABLE = CategoryTable((1, 2, 3), ("a", "b", "sky"), np.array([True, True, False]))


def square(top: int, left: int, size: int, canvas: int = 10) -> torch.Tensor:
    mask = torch.zeros(canvas, canvas, dtype=torch.bool)
    mask[top : top + size, left : left + size] = True
    return mask


def test_occluded_means_at_least_a_tenth_hidden():
    amodal = torch.stack([square(0, 0, 5)[:, :] & (torch.arange(10) < 2)[None], square(0, 0, 5), square(0, 0, 0)])
    # instance 0: 10 pixels (5 rows x 2 columns), 9 shown -> 10 % hidden: occluded
    shown_0 = amodal[0].clone()
    shown_0[0, 0] = False
    # instance 1: 25 pixels, 23 shown -> 8 % hidden: not occluded; instance 2: empty
    shown_1 = amodal[1].clone()
    shown_1[0, :2] = False
    visible = torch.stack([shown_0, shown_1, amodal[2]])
    assert occluded_instances(amodal, visible).tolist() == [True, False, False]
    assert occluded_instances(amodal, visible, hidden_fraction=0.05).tolist() == [True, True, False]
    with pytest.raises(ValueError, match="amodal and visible"):
        occluded_instances(amodal, visible[:2])


def test_front_pixels_counts_the_visible_owner_of_each_shared_pixel():
    amodal = torch.stack([square(0, 0, 4), square(2, 2, 4)])  # share a 2 x 2 corner
    visible = torch.stack([amodal[0] & ~amodal[1], amodal[1]])  # 1 in front
    owner = torch.where(amodal[1], 1, torch.where(amodal[0], 0, -1))
    assert front_pixels(amodal, visible, owner) == (4, 4)
    owner[2, 2] = 0  # one shared pixel to the hidden instance
    owner[3, 3] = -1  # one to nobody
    assert front_pixels(amodal, visible, owner) == (2, 4)
    # a shared pixel nobody shows (VOID over it) is left out
    visible[1, 2, 3] = False
    assert front_pixels(amodal, visible, owner)[1] == 3


def test_pairs_ranked_front_by_hand():
    overlap = torch.tensor([[0, 1, 1], [1, 0, 0], [1, 0, 0]])
    depth = torch.tensor([2, 0, 1])  # 1 in front of everything, 2 in front of 0
    front = depth[None, :] < depth[:, None]
    # pairs (0, 1): front 1; (0, 2): front 2; (1, 2) do not overlap
    assert pairs_ranked_front(torch.tensor([0.1, 0.9, 0.5]), overlap, front) == (2, 2)
    assert pairs_ranked_front(torch.tensor([0.6, 0.9, 0.5]), overlap, front) == (1, 2)
    assert pairs_ranked_front(torch.tensor([0.5, 0.5, 0.5]), overlap, front) == (0, 2)  # ties are wrong


def test_class_counts_restricted_to_a_subset_and_pq_by_hand():
    # ground truth: two things of category 1 (ids 1, 2) and sky (id 3)
    gt = np.full((10, 10), 3, dtype=np.int32)
    gt[0:4, 0:4] = 1
    gt[5:10, 5:10] = 2
    gt_segments = [
        {"id": 1, "category_id": 1, "area": 16, "iscrowd": 0},
        {"id": 2, "category_id": 1, "area": 25, "iscrowd": 0},
        {"id": 3, "category_id": 3, "area": 59, "iscrowd": 0},
    ]
    # prediction: segment 1 exactly; segment 2 misses; segment 5 a stray category-2 blob on the sky
    pred = np.full((10, 10), 3, dtype=np.int32)
    pred[0:4, 0:4] = 1
    pred[5:7, 5:7] = 2
    pred[0:2, 7:9] = 5
    pred_segments = [
        {"id": 1, "category_id": 1},
        {"id": 2, "category_id": 1},
        {"id": 3, "category_id": 3},
        {"id": 5, "category_id": 2},
    ]
    match = evaluate_image(gt, gt_segments, pred, pred_segments, TABLE)
    counts = class_counts(match, 3)
    assert counts[0].tolist() == [1, 1, 1, 1.0]  # tp 1 (IoU 1), fp 1 (pred 2), fn 1 (gt 2)
    assert counts[1].tolist() == [0, 1, 0, 0.0]
    assert panoptic_quality(counts, [0, 1]) == pytest.approx((1 / 2 + 0) / 2)
    # only ground-truth segment 2 (and the predictions attributed to it: 2)
    subset = class_counts(match, 3, gt_ids={2}, fp_ids={2})
    assert subset[0].tolist() == [0, 1, 1, 0.0] and subset[1].tolist() == [0, 0, 0, 0.0]
    assert panoptic_quality(subset, [0, 1]) == 0.0  # category 1 only: the other has no counts
    assert math.isnan(panoptic_quality(np.zeros((3, 4)), [0, 1]))


def test_bootstrap_interval_of_a_constant_is_the_constant_and_covers_the_mean():
    assert bootstrap_interval(np.ones(20), np.mean, resamples=50) == (1.0, 1.0)
    values = np.random.default_rng(0).normal(5.0, 1.0, size=200)
    low, high = bootstrap_interval(values, np.mean, resamples=400)
    assert low < values.mean() < high and high - low < 0.5  # about 4 standard errors (0.07 each)
    # a paired statistic: the same resample for both columns
    pairs = np.stack([values, values + 1.0], axis=1)
    assert bootstrap_interval(pairs, lambda a: float(np.mean(a[:, 1] - a[:, 0])), resamples=50) == pytest.approx((1.0, 1.0))
