"""SOGNet's overlap removal as the released code writes it, equation (1) of
``panopticlab.models.sognet.overlap_removal``: the oracle its factorised form is tested against.

    X~_i = X_i - sum_j O_ij * X_i * s_i * s_j
"""

from __future__ import annotations

import torch
from torch import Tensor

from panopticlab.models.sognet.overlap_removal import check_shapes


def remove_overlaps_naive(mask_logits: Tensor, relation: Tensor) -> Tensor:
    """The same result through the [N, N, H, W] (or [B, N, N, H, W]) broadcast of (1).

    Memory grows with N^2 H W: for tests and the benchmark only.
    """
    check_shapes(mask_logits, relation)
    relation = relation.to(mask_logits.dtype)
    probs = torch.sigmoid(mask_logits)
    own = (mask_logits * probs).unsqueeze(-3)  # [..., N, 1, H, W]: X_i s_i
    other = probs.unsqueeze(-4)  # [..., 1, N, H, W]: s_j
    overlap = own * other * relation[..., :, :, None, None]  # [..., N, N, H, W]
    return mask_logits - overlap.sum(dim=-3)
