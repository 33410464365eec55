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
instances overlap, not which one is in front; the direction is learned through the
panoptic loss only.
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
        embedding = category_channels + geometry_channels + appearance_channels + pair_appearance_channels
        self.score = nn.Linear(embedding, 1, bias=False)  # P
        nn.init.kaiming_normal_(self.score.weight)

    def forward(
        self,
        labels: Tensor,
        boxes: Tensor,
        appearance: Tensor | None = None,
        regions: tuple[Tensor, Tensor] | None = None,
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
