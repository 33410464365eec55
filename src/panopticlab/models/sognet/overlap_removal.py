"""Differentiable overlap removal: each instance gives up the pixels it shares with those in front.

With pasted mask logits X (0 outside each box), s = sigmoid(X) and the overlap relation O
(``O_ij > 0``: j is in front of i), the released SOGNet code computes

    X~_i = X_i - sum_j O_ij * X_i * s_i * s_j                                      (1)

``s_i * s_j`` is a soft "both present"; where j is in front and both are confident, X~_i falls
to about ``X_i * (1 - s_i)``, near 0, and the semantic term of the panoptic head decides the
pixel. Because ``X_i * s_i`` does not depend on j, (1) factorises exactly into

    X~ = X - X * s * (O @ s)                                                       (2)

which needs O(N H W) memory instead of the [N, N, H, W] tensor (1) builds ((1) as written is
the test oracle ``tests/oracles/overlap_removal_naive.py``, which the benchmark measures too).

Mask logits are 0 outside each box, so ``sigmoid(X_j) = 0.5`` there: in (1) an instance loses
``0.5 O_ij X_i s_i`` wherever it lies outside its occluder's box, over its whole mask. That is the
released behaviour and the default; ``support`` (each instance's box on the canvas) confines
``sigmoid(X_j)`` to j's box (0 outside), so an occluder acts only where it can be.

* :func:`remove_overlaps` — (2); the one to use, at training and at test.
* :func:`remove_overlaps_pairwise` — the released inference: a sequential loop over pairs, each
  applying (2) to two instances with the current (already updated) logits. Order-dependent and
  different from (2); kept for parity checks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def check_shapes(mask_logits: Tensor, relation: Tensor) -> None:
    if mask_logits.dim() not in (3, 4):
        raise ValueError(f"mask_logits must be [N, H, W] or [B, N, H, W], got {tuple(mask_logits.shape)}")
    n = mask_logits.shape[-3]
    if relation.dim() not in (2, 3) or relation.shape[-2:] != (n, n):
        raise ValueError(f"relation must be [{n}, {n}] or [B, {n}, {n}], got {tuple(relation.shape)}")
    if relation.dim() == 3 and (mask_logits.dim() != 4 or relation.shape[0] != mask_logits.shape[0]):
        raise ValueError(
            f"a batched relation {tuple(relation.shape)} needs mask_logits [B, N, H, W] with the same B, "
            f"got {tuple(mask_logits.shape)}"
        )


def remove_overlaps(mask_logits: Tensor, relation: Tensor, support: Tensor | None = None) -> Tensor:
    """``X - X * sigmoid(X) * (O @ sigmoid(X))``, the factorised removal (2).

    Args:
        mask_logits: float [N, H, W] or [B, N, H, W], pasted mask logits X.
        relation: float [N, N] (shared by the batch) or [B, N, N], the overlap relation O.
        support: optional bool, the shape of ``mask_logits``: each instance's box
            (:func:`~panopticlab.models.sognet.panoptic_head.box_support`); ``sigmoid(X)`` is
            taken as 0 outside it. None: the released formula.

    Returns:
        float, the shape of ``mask_logits``.
    """
    check_shapes(mask_logits, relation)
    relation = relation.to(mask_logits.dtype)
    probs = torch.sigmoid(mask_logits)
    if support is not None:
        probs = torch.where(support, probs, probs.new_zeros(()))
    if mask_logits.dim() == 3:
        occluders = torch.einsum("ij,jhw->ihw", relation, probs)
    elif relation.dim() == 2:
        occluders = torch.einsum("ij,bjhw->bihw", relation, probs)
    else:
        occluders = torch.einsum("bij,bjhw->bihw", relation, probs)
    return mask_logits - mask_logits * probs * occluders


def remove_overlaps_pairwise(
    mask_logits: Tensor, pair_relation: Callable[[int, int], Tensor], support: Tensor | None = None
) -> Tensor:
    """The released code's inference: pairs (i, j), i < j, in order, each resolved on the current logits.

    For each pair the 2 x 2 relation ``pair_relation(i, j)`` (rows and columns ordered (i, j))
    is applied to ``(X_i, X_j)`` with (2), and both results are written back before the next
    pair, so later pairs see earlier updates. Out of place, so autograd works through it.

    Args:
        mask_logits: float [N, H, W].
        pair_relation: ``(i, j) -> float [2, 2]``; with a full O at hand,
            ``lambda i, j: O[[i, j]][:, [i, j]]`` (equal to the module run on the pair alone).
        support: optional bool [N, H, W], as in :func:`remove_overlaps`.

    Returns:
        float [N, H, W].
    """
    if mask_logits.dim() != 3:
        raise ValueError(f"mask_logits must be [N, H, W], got {tuple(mask_logits.shape)}")
    current = list(mask_logits.unbind(0))
    n = len(current)
    for i in range(n - 1):
        for j in range(i + 1, n):
            pair_support = None if support is None else support[[i, j]]
            pair = remove_overlaps(torch.stack([current[i], current[j]]), pair_relation(i, j), pair_support)
            current[i], current[j] = pair[0], pair[1]
    if n == 0:
        return mask_logits.clone()
    return torch.stack(current)
