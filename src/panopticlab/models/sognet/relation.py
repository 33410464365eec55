"""SOGNet's scene overlap graph: the relation module, its ground truth and its loss.

For N thing instances of one image the relation module scores every ordered pair (i, j)
from the two classes and the two boxes (and optionally appearance features) and returns

    R_ij = sigmoid(P . E_ij),      O = ReLU(R - R^T)                        [N, N]

``O`` is antisymmetric by construction: ``O_ij > 0`` implies ``O_ji = 0``, and ``O_ii = 0``.
``O_ij > 0`` reads "instance j is in front of instance i": i loses the pixels the two share
(see :mod:`panopticlab.models.sognet.overlap_removal`). Each R_ij depends on the pair only:
there is no message passing, so a sub-matrix of O equals O computed for that subset.

Supervision: ``G_ij = 1`` where the amodal (full, overlapping) masks of i and j overlap by at
least 10 % of the smaller one (:func:`panopticlab.masks.overlap_graph`), and the loss is
``MSE(O + O^T, G)``. G says *that* two
instances overlap, not which one is in front; in the released training the direction is learned
through the panoptic loss only, and a seed can settle on either sign.

panopticlab's option (``relation_direction_loss_weight > 0``, off in the released configs) also
supervises the direction: :func:`direction_target` reads which instance of an overlapping pair is
in front from the visible ground-truth segments (the one whose segment covers the pair's
overlap), and :func:`direction_loss` is a cross-entropy on the antisymmetric part of O.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RelationModule(nn.Module):
    """Pairwise overlap relation O [N, N] from classes, boxes and (optionally) appearance.

    The embedding of the ordered pair (i, j) concatenates

    * category: ``ReLU(U o_i) * ReLU(V o_j)`` with ``o`` the one-hot class (``category_channels``);
    * geometry: ``ReLU(W g_ij)`` (``geometry_channels``), ``g_ij`` the signed relative box encoding
      ``((cx_j - cx_i) / w_i, (cy_j - cy_i) / h_i, log(w_j / w_i), log(h_j / h_i))``;
    * appearance, when ``appearance_channels > 0``: ``ReLU(A f_i) * ReLU(B f_j)`` of per-instance
      feature vectors (e.g. mask-head features, average-pooled). The released SOGNet code has no
      appearance term (its default here, 0).
    * pair appearance, when ``pair_appearance_channels > 0``: ``ReLU(Q [r_ij ; r_i ; r_j])``, with
      ``r_ij`` the pooled features of the intersection of the two boxes and ``r_i``, ``r_j`` those
      of each box. The shared region shows the front instance, so comparing it with each
      instance's own look says which one that is; the ordered concatenation (then the ReLU) lets
      ``R_ij`` differ from ``R_ji``. Not in the paper (an option of panopticlab, off by default).
    * mask geometry, when ``mask_geometry_channels > 0``: ``ReLU(M [log(a_j / a_i) ; f_i ; f_j])``,
      with ``f`` each instance's mask fill (the mean probability of its 28 x 28 mask, the share of
      its box the mask covers) and ``a = f * box area`` the mask's area. A box's size says little
      of which object is smaller when the classes' shapes differ (a triangle fills half its box, a
      square all of it); the mask's area says it. Not in the paper (panopticlab's option, off by
      default).

    Box convention: ``(x0, y0, x1, y1)`` with the end exclusive, so ``w = x1 - x0`` and the
    centre is ``(x0 + x1) / 2`` (the released code uses ``w = x1 - x0 + 1`` for inclusive ends:
    the same box). Widths and heights below 1 pixel count as 1 pixel, so degenerate boxes give
    finite encodings. The encoding is scale-invariant, so any common unit works above that.

    All linear maps have no bias, as in the released code; the scoring map P is initialised
    with Kaiming normal, the others with PyTorch's default.

    Args:
        num_thing_classes: K, the number of thing classes (labels are 0..K-1).
        category_channels: width of the category embedding (256 in the released model).
        geometry_channels: width of the geometry embedding (128).
        appearance_channels: width of the appearance embedding; 0 switches it off.
        appearance_in_channels: length of each instance's appearance vector.
        pair_appearance_channels: width of the pair appearance embedding; 0 switches it off.
        region_in_channels: length of the pooled region features (box and intersection).
        mask_geometry_channels: width of the mask geometry embedding; 0 switches it off.
    """

    def __init__(
        self,
        num_thing_classes: int,
        category_channels: int = 256,
        geometry_channels: int = 128,
        appearance_channels: int = 0,
        appearance_in_channels: int = 256,
        pair_appearance_channels: int = 0,
        region_in_channels: int = 256,
        mask_geometry_channels: int = 0,
    ) -> None:
        super().__init__()
        if num_thing_classes < 1:
            raise ValueError(f"num_thing_classes must be at least 1, got {num_thing_classes}")
        self.num_thing_classes = num_thing_classes
        self.category_first = nn.Linear(num_thing_classes, category_channels, bias=False)  # U
        self.category_second = nn.Linear(num_thing_classes, category_channels, bias=False)  # V
        self.geometry = nn.Linear(4, geometry_channels, bias=False)  # W
        self.appearance_channels = appearance_channels
        if appearance_channels > 0:
            self.appearance_first = nn.Linear(appearance_in_channels, appearance_channels, bias=False)  # A
            self.appearance_second = nn.Linear(appearance_in_channels, appearance_channels, bias=False)  # B
        self.pair_appearance_channels = pair_appearance_channels
        if pair_appearance_channels > 0:
            self.pair_appearance = nn.Linear(3 * region_in_channels, pair_appearance_channels, bias=False)  # Q
        self.mask_geometry_channels = mask_geometry_channels
        if mask_geometry_channels > 0:
            self.mask_geometry = nn.Linear(3, mask_geometry_channels, bias=False)  # M
        embedding = category_channels + geometry_channels + appearance_channels + pair_appearance_channels + mask_geometry_channels
        self.score = nn.Linear(embedding, 1, bias=False)  # P
        nn.init.kaiming_normal_(self.score.weight)

    def forward(
        self,
        labels: Tensor,
        boxes: Tensor,
        appearance: Tensor | None = None,
        regions: tuple[Tensor, Tensor] | None = None,
        mask_fill: Tensor | None = None,
    ) -> Tensor:
        """The overlap relation of N instances.

        Args:
            labels: int64 [N], thing class indices 0..K-1.
            boxes: float [N, 4], ``(x0, y0, x1, y1)`` in pixels, end exclusive.
            appearance: float [N, appearance_in_channels]; required when the appearance term is on,
                ignored otherwise.
            regions: ``(box_features [N, F], intersection_features [N, N, F])`` with
                F = ``region_in_channels`` (symmetric in i, j; 0 where the boxes do not meet), from
                :func:`intersection_boxes`; required when the pair appearance term is on.
            mask_fill: float [N] in [0, 1], each instance's mean mask probability; required when
                the mask geometry term is on.

        Returns:
            float [N, N], ``O_ij > 0`` where j is in front of i. Connected to the parameters
            even for N = 0 or 1 (where it is all zero), so a loss on it always backpropagates.
        """
        n = labels.shape[0]
        if boxes.shape != (n, 4):
            raise ValueError(f"boxes must be [N, 4] with N = {n} labels, got {tuple(boxes.shape)}")
        if n > 0 and (int(labels.min()) < 0 or int(labels.max()) >= self.num_thing_classes):
            raise ValueError(f"labels must lie in 0..{self.num_thing_classes - 1}, got {labels.tolist()}")

        onehot = F.one_hot(labels, self.num_thing_classes).to(self.score.weight.dtype)  # [N, K]
        first = F.relu(self.category_first(onehot))  # [N, C]
        second = F.relu(self.category_second(onehot))  # [N, C]
        parts = [first[:, None, :] * second[None, :, :]]  # [N, N, C]
        parts.append(F.relu(self.geometry(relative_box_encoding(boxes.to(onehot.dtype)))))  # [N, N, G]
        if self.appearance_channels > 0:
            if appearance is None or appearance.shape[0] != n:
                raise ValueError("the appearance term is on: pass appearance features [N, appearance_in_channels]")
            a = F.relu(self.appearance_first(appearance))
            b = F.relu(self.appearance_second(appearance))
            parts.append(a[:, None, :] * b[None, :, :])  # [N, N, A]
        if self.pair_appearance_channels > 0:
            if regions is None or regions[0].shape[0] != n or regions[1].shape[:2] != (n, n):
                raise ValueError("the pair appearance term is on: pass regions ([N, F], [N, N, F])")
            own, shared = regions
            ordered = torch.cat([shared, own[:, None, :].expand_as(shared), own[None, :, :].expand_as(shared)], dim=-1)
            parts.append(F.relu(self.pair_appearance(ordered.to(onehot.dtype))))  # [N, N, Q]
        if self.mask_geometry_channels > 0:
            if mask_fill is None or mask_fill.shape != (n,):
                raise ValueError("the mask geometry term is on: pass mask_fill [N]")
            parts.append(F.relu(self.mask_geometry(mask_geometry_encoding(boxes.to(onehot.dtype), mask_fill.to(onehot.dtype)))))
        scores = torch.sigmoid(self.score(torch.cat(parts, dim=-1)).squeeze(-1))  # R, [N, N]
        return F.relu(scores - scores.T)


def relative_box_encoding(boxes: Tensor) -> Tensor:
    """Signed relative geometry of every ordered pair of boxes.

    Args:
        boxes: float [N, 4], ``(x0, y0, x1, y1)``, end exclusive.

    Returns:
        float [N, N, 4]: ``[i, j] = ((cx_j - cx_i) / w_i, (cy_j - cy_i) / h_i, log(w_j / w_i),
        log(h_j / h_i))`` with widths and heights clamped to at least 1.
    """
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    w = (boxes[:, 2] - boxes[:, 0]).clamp(min=1.0)
    h = (boxes[:, 3] - boxes[:, 1]).clamp(min=1.0)
    return torch.stack(
        [
            (cx[None, :] - cx[:, None]) / w[:, None],
            (cy[None, :] - cy[:, None]) / h[:, None],
            torch.log(w[None, :] / w[:, None]),
            torch.log(h[None, :] / h[:, None]),
        ],
        dim=-1,
    )


def mask_geometry_encoding(boxes: Tensor, fill: Tensor) -> Tensor:
    """Every ordered pair's mask sizes: ``[i, j] = (log(a_j / a_i), f_i, f_j)``, ``a = f * w * h``.

    Args:
        boxes: float [N, 4], ``(x0, y0, x1, y1)``, end exclusive (widths, heights clamped to 1).
        fill: float [N], each mask's share of its box, clamped to at least 1e-3.

    Returns:
        float [N, N, 3].
    """
    fill = fill.clamp(min=1e-3)
    w = (boxes[:, 2] - boxes[:, 0]).clamp(min=1.0)
    h = (boxes[:, 3] - boxes[:, 1]).clamp(min=1.0)
    log_area = torch.log(fill * w * h)
    n = len(fill)
    return torch.stack([log_area[None, :] - log_area[:, None], fill[:, None].expand(n, n), fill[None, :].expand(n, n)], dim=-1)


def intersection_boxes(boxes: Tensor) -> tuple[Tensor, Tensor]:
    """The intersection of every pair of boxes, flattened, and whether it has area.

    Args:
        boxes: float [N, 4], ``(x0, y0, x1, y1)``.

    Returns:
        float [N * N, 4] (row ``i * N + j``: boxes i and j; an empty one collapses to a zero-size
        box at the larger corner) and bool [N, N], True where the intersection has positive area.
    """
    x0 = torch.maximum(boxes[:, None, 0], boxes[None, :, 0])
    y0 = torch.maximum(boxes[:, None, 1], boxes[None, :, 1])
    x1 = torch.maximum(torch.minimum(boxes[:, None, 2], boxes[None, :, 2]), x0)
    y1 = torch.maximum(torch.minimum(boxes[:, None, 3], boxes[None, :, 3]), y0)
    meets = (x1 > x0) & (y1 > y0)
    return torch.stack([x0, y0, x1, y1], dim=-1).reshape(-1, 4), meets


def relation_loss(relation: Tensor, ground_truth: Tensor) -> Tensor:
    """``MSE(O + O^T, G)``, the mean over all N x N entries.

    Args:
        relation: float [N, N], the module's O.
        ground_truth: [N, N], G from :func:`~panopticlab.masks.overlap_graph`.

    Returns:
        float scalar; a zero still connected to ``relation`` when N < 2 (nothing to relate).
    """
    if relation.shape[0] < 2:
        return relation.sum() * 0.0
    return F.mse_loss(relation + relation.T, ground_truth.to(relation.dtype))


def overlapping_order(ground_truth: Tensor) -> Tensor:
    """Instances that overlap at least one other, most partners first.

    This is how the released SOGNet picks the instances that go through the relation module
    (the others pass unchanged); ties keep index order.

    Args:
        ground_truth: [N, N], G from :func:`~panopticlab.masks.overlap_graph`.

    Returns:
        int64 [M], indices into the N instances.
    """
    partners = (ground_truth > 0).sum(dim=1)
    counts, order = torch.sort(partners, descending=True, stable=True)
    return order[counts > 0]


def direction_target(masks: Tensor, visible: Tensor, overlap: Tensor, shown: float = 0.1, split: float = 0.1) -> Tensor:
    """Which instance of each overlapping pair is in front, read from the visible segments.

    The front instance of a pair is the one whose visible segment covers the pair's overlap
    ``masks_i & masks_j``, where either of the two shows it: of the overlap's pixels that the two
    segments show (at least ``shown`` of the overlap; a third instance in front of both may hide
    the rest), the front one shows all but less than ``split``. A pair whose overlap neither shows
    (hidden by a third instance, VOID) or that is split between the two gets no target. On the
    shapes data, where the depth order is exact, this is the depth order on every pair it gives
    (``tests/test_sognet_direction.py``); on COCO and Cityscapes the masks are the instances'
    (amodal where the dataset has them) and the visible segments the panoptic ones.

    Args:
        masks: bool [N, H, W], the instances' masks (amodal where known).
        visible: bool [N, H, W], each instance's visible panoptic segment (empty when it has none).
        overlap: [N, N], which pairs overlap (G, :func:`~panopticlab.masks.overlap_graph`).
        shown: the share of the overlap the two segments must show together.
        split: the back instance's largest share of what they show.

    Returns:
        int8 [N, N], antisymmetric: 1 where j is in front of i, -1 where i is in front of j, 0 where
        the pair does not overlap or has no target.
    """
    if masks.shape != visible.shape or masks.dim() != 3:
        raise ValueError(f"masks and visible must both be [N, H, W], got {tuple(masks.shape)}, {tuple(visible.shape)}")
    # Pixel counts are exact in float32 up to 2**24 pixels; beyond that count in float64.
    dtype = torch.float32 if masks.shape[1] * masks.shape[2] <= 2**24 else torch.float64
    flat = masks.flatten(1).to(dtype)
    shared = flat @ flat.T  # [i, j] = |m_i & m_j|
    by_i = (masks & visible).flatten(1).to(dtype) @ flat.T  # [i, j] = |m_i & m_j & visible_i|
    either = by_i + by_i.T  # the segments are disjoint
    decided = (overlap > 0) & (shared > 0) & (either >= shown * shared)
    j_front = decided & (by_i < split * either)  # j shows (almost) all of what is shown
    target = torch.zeros(masks.shape[0], masks.shape[0], dtype=torch.int8, device=masks.device)
    target[j_front] = 1
    target[j_front.T] = -1
    return target


def direction_loss(relation: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy of the pairs' front instance, read from O's antisymmetric part.

    ``O_ij - O_ji = R_ij - R_ji`` lies in (-1, 1), so ``P(j in front of i) = (1 + O_ij - O_ji) / 2``
    is a probability, and the loss is its binary cross-entropy against the target, averaged over
    the pairs that have one (each unordered pair once). A logistic ``sigmoid(O_ij - O_ji)`` would
    read the same difference as at most 0.73 confident, and keep pushing every learned pair towards
    the ends of the range; this one is 0 for a pair that is fully and rightly ordered.

    Args:
        relation: float [N, N], the module's O.
        target: int8 [N, N], :func:`direction_target` (1: j in front of i).

    Returns:
        float scalar; a zero still connected to ``relation`` when no pair has a target.
    """
    upper = torch.triu(target != 0, diagonal=1)
    if not bool(upper.any()):
        return relation.sum() * 0.0
    difference = (relation - relation.T)[upper]
    front = (target[upper] > 0).to(relation.dtype)
    probability = ((1 + difference) / 2).clamp(1e-6, 1 - 1e-6)
    return F.binary_cross_entropy(probability, front)
