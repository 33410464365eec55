"""Overlap-relation accuracy: does a model know which instances overlap, and which one is in front?

A relation model (SOGNet's) gives, for the N instances of an image, a matrix O [N, N] with
``O_ij > 0`` meaning "j is in front of i". To keep detection errors out of the measure, O is
computed on the ground-truth boxes and classes. Each unordered pair {i, j} (i < j) of
ground-truth instances of an image is scored:

**Overlap detection.** The pair is *predicted* to overlap when ``O_ij + O_ji > 0.5`` (the
quantity SOGNet's relation loss fits to the overlap ground truth). It *does* overlap when the
amodal (full) masks of i and j share at least 10 % of the smaller one
(:func:`panopticlab.masks.overlap_graph`). Over all images::

    precision = TP / predicted pairs        recall = TP / ground-truth pairs
    F1 = 2 TP / (predicted pairs + ground-truth pairs)

**Direction.** Over the ground-truth overlapping pairs whose front instance is known, the
prediction is "j in front" when ``O_ij > O_ji`` and "i in front" when ``O_ji > O_ij``;
``direction_accuracy`` is the fraction of those pairs where it names the true front instance.
A tie (``O_ij == O_ji``, e.g. both 0) names nobody and counts as wrong. Pairs are counted
whether or not the model detected their overlap.

**Which instance is in front** (``front[i, j]`` True when j is in front of i):

* exact, from a depth order (the shapes dataset): :func:`front_from_depth`;
* approximate, for COCO-style data with amodal instance masks and visible panoptic segments
  (SOGNet's weak ground truth): :func:`front_from_visible` — in the region the two amodal masks
  share, the instance whose visible segment owns more pixels is in front. When neither owns
  more (e.g. the region is VOID or crowd), the pair has no known front and is left out of the
  direction accuracy.

Every figure is a fraction in [0, 1], NaN where its denominator is 0. The evaluator keeps
integer counts only, which :meth:`OverlapRelationEvaluator.evaluate` sums over processes.

As an evaluator of the engine's list (:mod:`.protocol`) it is handed a relation model, a
function ``(image, boxes, labels) -> O`` (SOGNet's ``predict_relations``, which contributes it
through its ``evaluators()``), and scores the items that carry ``instances``: the front from
their depth order when every instance has one (the shapes dataset), else from which visible
panoptic segment owns the shared amodal region (COCO-style).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from panopticlab import distributed
from panopticlab.masks import overlap_graph
from panopticlab.structures import PanopticResult

#: ``(image [3, H, W], boxes float [N, 4] (x0, y0, x1, y1), labels int64 [N] contiguous) -> O float [N, N]``
RelationModel = Callable[[Tensor, Tensor, Tensor], Tensor]

#: ``O_ij + O_ji`` above this means "predicted to overlap".
OVERLAP_THRESHOLD = 0.5

COUNT_KEYS = ("images", "gt_pairs", "predicted_pairs", "true_positive_pairs", "direction_pairs", "direction_correct")


def front_from_depth(depth: Tensor) -> Tensor:
    """Exact front relation from a depth order (0 = front, larger = further back).

    Args:
        depth: int [N], non-negative.

    Returns:
        bool [N, N], ``[i, j]`` True when ``depth_j < depth_i`` (j is in front of i).
    """
    depth = torch.as_tensor(depth)
    if depth.numel() and int(depth.min()) < 0:
        raise ValueError(f"depths must be non-negative (negative means unknown), got {depth.tolist()}")
    return depth[None, :] < depth[:, None]


def front_from_visible(amodal_masks: Tensor, visible_masks: Tensor) -> Tensor:
    """Approximate front relation: who owns the shared amodal region in the visible segmentation.

    Args:
        amodal_masks: bool [N, H, W], full instance masks.
        visible_masks: bool [N, H, W], each instance's visible (panoptic) segment; empty when the
            instance has none.

    Returns:
        bool [N, N], ``[i, j]`` True when, inside ``amodal_i & amodal_j``, j's visible segment has
        more pixels than i's. Neither direction is True for a tie.
    """
    if amodal_masks.shape != visible_masks.shape or amodal_masks.dim() != 3:
        raise ValueError(
            f"amodal and visible masks must both be [N, H, W], got {tuple(amodal_masks.shape)}, "
            f"{tuple(visible_masks.shape)}"
        )
    # Pixel counts are exact in float32 up to 2**24 pixels; beyond that count in float64.
    dtype = torch.float32 if amodal_masks[0].numel() <= 2**24 else torch.float64
    amodal = amodal_masks.flatten(1).to(dtype)
    owned = (amodal_masks & visible_masks).flatten(1).to(dtype)
    # owns[i, j] = |amodal_i & amodal_j & visible_j|: the pixels of the shared region that j shows.
    owns = amodal @ owned.T
    return owns > owns.T


class OverlapRelationEvaluator:
    """Accumulate overlap detection and direction counts over images; see the module docstring.

    Args:
        relation_of: the relation model :meth:`process` scores (not needed by :meth:`add` /
            :meth:`add_masks`, which take relations computed elsewhere).
    """

    def __init__(self, relation_of: RelationModel | None = None) -> None:
        self.relation_of = relation_of
        self.reset()

    def reset(self) -> None:
        self._counts = dict.fromkeys(COUNT_KEYS, 0)

    def process(self, inputs: Sequence[Mapping[str, Any]], outputs: Sequence[PanopticResult]) -> None:
        """Score the relation model on the non-crowd ground-truth instances of each item that has
        ``instances`` (the outputs are not used: the relation is measured on the GT boxes)."""
        if self.relation_of is None:
            raise ValueError("OverlapRelationEvaluator.process needs the relation model (relation_of=)")
        for item in inputs:
            if "instances" not in item:
                continue
            instances = item["instances"]
            keep = ~instances["iscrowd"] & instances["masks"].flatten(1).any(dim=1)
            relation = self.relation_of(item["image"], instances["boxes"][keep], instances["labels"][keep])
            masks, depth = instances["masks"][keep], instances["depth"][keep]
            if bool((depth >= 0).all()):
                self.add_masks(relation, masks, depth=depth)
            else:
                segment_ids = instances["panoptic_segment_ids"][keep][:, None, None]
                id_map = torch.from_numpy(item["panoptic"].id_map).to(torch.int64)
                self.add_masks(relation, masks, visible_masks=(id_map[None] == segment_ids) & (segment_ids != 0))

    def add(self, relation: Tensor, gt_overlap: Tensor, gt_front: Tensor) -> None:
        """Score one image.

        Args:
            relation: float [N, N], the predicted O on the ground-truth instances.
            gt_overlap: [N, N], nonzero where the pair overlaps (e.g. :func:`~panopticlab.masks.overlap_graph`).
            gt_front: bool [N, N], ``[i, j]`` True when j is in front of i.
        """
        n = relation.shape[0]
        for name, matrix in (("relation", relation), ("gt_overlap", gt_overlap), ("gt_front", gt_front)):
            if tuple(matrix.shape) != (n, n):
                raise ValueError(f"{name} must be [{n}, {n}], got {tuple(matrix.shape)}")
        relation = relation.detach().cpu().float()
        gt_overlap, gt_front = gt_overlap.detach().cpu() > 0, gt_front.detach().cpu().bool()
        i, j = torch.triu_indices(n, n, offset=1)  # each unordered pair once

        predicted = (relation + relation.T)[i, j] > OVERLAP_THRESHOLD
        actual = gt_overlap[i, j]
        j_front, i_front = gt_front[i, j], gt_front[j, i]
        known = actual & (j_front ^ i_front)  # overlapping pairs with exactly one front instance
        says_j, says_i = relation[i, j] > relation[j, i], relation[j, i] > relation[i, j]
        correct = known & ((j_front & says_j) | (i_front & says_i))

        c = self._counts
        c["images"] += 1
        c["gt_pairs"] += int(actual.sum())
        c["predicted_pairs"] += int(predicted.sum())
        c["true_positive_pairs"] += int((predicted & actual).sum())
        c["direction_pairs"] += int(known.sum())
        c["direction_correct"] += int(correct.sum())

    def add_masks(
        self,
        relation: Tensor,
        amodal_masks: Tensor,
        *,
        depth: Tensor | None = None,
        visible_masks: Tensor | None = None,
        threshold: float = 0.1,
    ) -> None:
        """Score one image from its masks: the overlap from the amodal masks, the front from
        ``depth`` (exact) when given, else from ``visible_masks`` (approximate).

        Args:
            relation: float [N, N].
            amodal_masks: bool [N, H, W].
            depth: int [N], 0 = front.
            visible_masks: bool [N, H, W].
            threshold: overlap fraction of the smaller mask.
        """
        if depth is not None:
            front = front_from_depth(depth)
        elif visible_masks is not None:
            front = front_from_visible(amodal_masks, visible_masks)
        else:
            raise ValueError("add_masks needs depth or visible_masks to know which instance is in front")
        self.add(relation, overlap_graph(amodal_masks, threshold), front)

    def counts(self) -> dict[str, int]:
        """The integer counts of this process so far."""
        return dict(self._counts)

    def evaluate(self) -> dict[str, Any]:
        """``{"overlap": figures}`` over every process's images, or ``{}`` when none had instances.

        The figures: ``pairs`` (ground-truth overlapping pairs), ``predicted_pairs``, ``precision``,
        ``recall``, ``f1``, ``direction_pairs`` (pairs with a known front), ``direction_accuracy``,
        ``images``; fractions in [0, 1], NaN where undefined.
        """
        parts = distributed.all_gather(self._counts)
        c = {key: sum(part[key] for part in parts) for key in COUNT_KEYS}
        if c["images"] == 0:
            return {}
        tp, predicted, actual = c["true_positive_pairs"], c["predicted_pairs"], c["gt_pairs"]
        return {
            "overlap": {
                "images": c["images"],
                "pairs": actual,
                "predicted_pairs": predicted,
                "precision": _ratio(tp, predicted),
                "recall": _ratio(tp, actual),
                "f1": _ratio(2 * tp, predicted + actual),
                "direction_pairs": c["direction_pairs"],
                "direction_accuracy": _ratio(c["direction_correct"], c["direction_pairs"]),
            }
        }


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else math.nan
