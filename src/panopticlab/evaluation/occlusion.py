"""Figures of how well a merge resolves occlusions, per image, and bootstrap intervals over images.

Data with amodal masks (the shapes dataset) says exactly who is hidden and who is in front, so
a merge (SOGNet's relation, UPSNet's panoptic head, the heuristic) can be scored where it
matters:

* **occluded-thing PQ**: panopticapi's PQ over the thing classes, counting only the ground-truth
  things with at least ``hidden_fraction`` (10 %) of their amodal mask hidden
  (:func:`occluded_instances`), and the predictions that belong to them. A match (IoU > 0.5, the
  matching of :func:`~panopticlab.evaluation.pq.match_image`) counts when its ground truth is
  occluded; a false negative when it is occluded; a false positive when the prediction is
  *attributed* to an occluded ground-truth thing (the caller knows: a merge of given instances
  knows which instance each prediction came from). :func:`class_counts` gathers the
  per-class counts of one image, :func:`panoptic_quality` averages them as panopticapi does.
* **front-pixel share**: of the pixels that lie in two or more amodal masks and are visible on
  one of those instances (the true front one), the share the merge gives to that instance
  (:func:`front_pixels`).
* **pair orderings**: of the overlapping pairs with a known front, how many a score ranks
  right (the heuristic's "higher score is in front"), :func:`pairs_ranked_front`.

Each per-image figure is a small integer or float array, so a whole test set is an array
[images, ...] and :func:`bootstrap_interval` resamples images to give a 95 % interval of any
statistic of it (paired: pass two arms' arrays stacked, and a statistic of their difference).
"""

from __future__ import annotations

from collections.abc import Callable, Container

import numpy as np
import torch
from torch import Tensor

from panopticlab.evaluation.pq import ImageMatch

#: a thing is occluded when at least this fraction of its amodal mask is not visible
HIDDEN_FRACTION = 0.1

#: the columns of :func:`class_counts`
COUNT_COLUMNS = ("tp", "fp", "fn", "iou")


def occluded_instances(amodal_masks: Tensor, visible_masks: Tensor, hidden_fraction: float = HIDDEN_FRACTION) -> Tensor:
    """Which instances have at least ``hidden_fraction`` of their amodal mask hidden.

    Args:
        amodal_masks: bool [N, H, W], the whole instances (within the image).
        visible_masks: bool [N, H, W], their visible segments (empty when fully hidden).

    Returns:
        bool [N]; an instance with an empty amodal mask is not occluded.
    """
    if amodal_masks.shape != visible_masks.shape or amodal_masks.dim() != 3:
        raise ValueError(f"amodal and visible masks must both be [N, H, W], got {tuple(amodal_masks.shape)}, {tuple(visible_masks.shape)}")
    area = amodal_masks.flatten(1).sum(1).double()
    shown = (amodal_masks & visible_masks).flatten(1).sum(1).double()
    return (area > 0) & (area - shown >= hidden_fraction * area)


def class_counts(
    match: ImageMatch,
    num_categories: int,
    *,
    gt_ids: Container[int] | None = None,
    fp_ids: Container[int] | None = None,
) -> np.ndarray:
    """Per-category ``(tp, fp, fn, iou)`` of one image, optionally restricted to a subset.

    Args:
        match: :func:`~panopticlab.evaluation.pq.match_image`'s outcome (with its ids).
        num_categories: rows of the result (category indices of the match's table).
        gt_ids: count only matches and false negatives of these ground-truth segment ids; None: all.
        fp_ids: count only these false-positive predicted ids; None: all.

    Returns:
        float64 [num_categories, 4], the columns :data:`COUNT_COLUMNS`.
    """
    if match.tp_ids is None:
        raise ValueError("the match carries no segment ids (made by an older match_image?)")
    counts = np.zeros((num_categories, 4))
    for (gt_id, _), category, iou in zip(match.tp_ids, match.tp_category, match.tp_iou):
        if gt_ids is None or int(gt_id) in gt_ids:
            counts[category, 0] += 1
            counts[category, 3] += iou
    for pred_id, category in zip(match.fp_ids, match.fp_category):
        if fp_ids is None or int(pred_id) in fp_ids:
            counts[category, 1] += 1
    for gt_id, category in zip(match.fn_ids, match.fn_category):
        if gt_ids is None or int(gt_id) in gt_ids:
            counts[category, 2] += 1
    return counts


def panoptic_quality(counts: np.ndarray, categories: np.ndarray | list[int]) -> float:
    """PQ (in [0, 1]) of summed counts [C, 4] over ``categories``: the unweighted mean of
    ``iou / (tp + fp / 2 + fn / 2)`` over those with ``tp + fp + fn > 0`` (panopticapi); NaN if none."""
    rows = counts[list(categories)]
    denominator = rows[:, 0] + rows[:, 1] / 2 + rows[:, 2] / 2
    present = rows[:, :3].sum(1) > 0
    if not present.any():
        return float("nan")
    return float(np.mean(rows[present, 3] / denominator[present]))


def front_pixels(amodal_masks: Tensor, visible_masks: Tensor, owner: Tensor) -> tuple[int, int]:
    """How many overlap pixels a merge gives to the instance truly in front.

    Args:
        amodal_masks: bool [N, H, W]; visible_masks: bool [N, H, W] (disjoint).
        owner: int64 [H, W], the instance 0..N-1 the merge gave each pixel (-1: none).

    Returns:
        ``(correct, total)``: ``total`` the pixels inside two or more amodal masks and visible on
        one of them; ``correct`` those whose owner is that visible instance.
    """
    if amodal_masks.shape != visible_masks.shape or owner.shape != amodal_masks.shape[1:]:
        raise ValueError(
            f"masks [N, H, W] and owner [H, W] must agree, got {tuple(amodal_masks.shape)}, "
            f"{tuple(visible_masks.shape)}, {tuple(owner.shape)}"
        )
    shown_on = amodal_masks & visible_masks
    region = (amodal_masks.sum(0) >= 2) & shown_on.any(0)
    truth = shown_on.to(torch.int64).argmax(0)
    total = int(region.sum())
    return int((region & (owner.to(truth.device) == truth)).sum()), total


def pairs_ranked_front(scores: Tensor, overlap: Tensor, front: Tensor) -> tuple[int, int]:
    """How many overlapping pairs a score ranks with the front instance higher.

    Args:
        scores: float [N]; overlap: [N, N], nonzero where the pair overlaps;
        front: bool [N, N], ``[i, j]`` True when j is in front of i.

    Returns:
        ``(correct, total)`` over the unordered overlapping pairs with exactly one front
        instance; a tie counts as wrong.
    """
    i, j = torch.triu_indices(len(scores), len(scores), offset=1)
    known = (overlap[i, j] > 0) & (front[i, j] ^ front[j, i])
    right = (front[i, j] & (scores[j] > scores[i])) | (front[j, i] & (scores[i] > scores[j]))
    return int((known & right).sum()), int(known.sum())


def bootstrap_interval(
    per_image: np.ndarray,
    statistic: Callable[[np.ndarray], float],
    *,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over images.

    Args:
        per_image: array [images, ...]; a resample draws images with replacement.
        statistic: ``array [images, ...] -> float`` (e.g. summed counts -> PQ).
        resamples: how many resamples; seed: their generator's seed; level: the interval's coverage.

    Returns:
        ``(low, high)``; NaN values of the statistic are left out.
    """
    rng = np.random.default_rng(seed)
    n = len(per_image)
    values = np.array([statistic(per_image[rng.integers(0, n, n)]) for _ in range(resamples)])
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)
