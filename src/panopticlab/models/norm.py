"""Normalisation layers shared by every model family."""

from __future__ import annotations

import torch
from torch import nn


def convert_sync_batchnorm_if_distributed(model: nn.Module) -> nn.Module:
    """Replace BatchNorm by SyncBatchNorm when a ``torch.distributed`` process group exists,
    else return ``model`` unchanged (SyncBN without a process group fails in training).

    Uses timm's converter when timm is installed, which also keeps timm's fused BN+activation layers.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return model
    try:
        from timm.layers import convert_sync_batchnorm
    except ImportError:
        convert_sync_batchnorm = nn.SyncBatchNorm.convert_sync_batchnorm
    return convert_sync_batchnorm(model)
