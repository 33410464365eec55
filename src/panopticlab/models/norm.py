"""Normalisation layers shared by every model family."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d


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


class EvalFrozenBatchNorm2d(FrozenBatchNorm2d):
    """torchvision's :class:`~torchvision.ops.misc.FrozenBatchNorm2d` (the same buffers, never
    updated), computed by ``F.batch_norm(training=False)``: the arithmetic of an ``nn.BatchNorm2d``
    in eval mode, bit for bit, which is what the released SOGNet / UPSNet backbones run."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


#: (convolution, BatchNorm) attribute pairs that a module applies one right after the other
_FOLDABLE_PAIRS = [(f"conv{k}", f"bn{k}") for k in range(1, 4)] + [
    ("conv", "norm"), ("conv", "bn"), ("depthwise", "bn_depth"), ("pointwise", "bn_point"),
]  # fmt: skip


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every inference-mode BatchNorm into the convolution it follows, in place.

    Patterns: a module's ``convK``/``bnK``, ``conv``/``norm``, ``conv``/``bn``,
    ``depthwise``/``bn_depth``, ``pointwise``/``bn_point`` children (torchvision's ResNet blocks,
    panopticlab's heads, the seed's backbones), and a Conv2d directly followed by a BatchNorm2d in
    an ``nn.Sequential``. The convolution takes the BatchNorm's affine map (``fuse_conv_bn_eval``)
    and the BatchNorm becomes an identity, so the outputs are the same up to float rounding (about
    1e-6 relative) and one pass over each feature map is saved. For inference only: the model
    must be in eval mode, and cannot be trained afterwards.

    Returns:
        how many BatchNorm layers were folded.
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode (the running statistics are folded)")
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = 0
    for module in list(model.modules()):
        for conv_name, bn_name in _FOLDABLE_PAIRS:
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d and bn.track_running_stats:
                setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(module, bn_name, nn.Identity())
                folded += 1
        if isinstance(module, nn.Sequential):
            children = list(module._modules.items())
            for (conv_key, conv), (bn_key, bn) in zip(children, children[1:]):
                if isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d and bn.track_running_stats:
                    module._modules[conv_key] = fuse_conv_bn_eval(conv, bn)
                    module._modules[bn_key] = nn.Identity()
                    folded += 1
    return folded
