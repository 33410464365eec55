"""ImageNet (backbone-only) weights into the backbones both model families use.

One door, :func:`load_backbone_weights`, for every backbone and every file it may come from:

* ResNets, ours (:class:`~panopticlab.models.backbones.ResNetBackbone`, Panoptic-DeepLab) or
  torchvision's own ``ResNet`` (the body of SOGNet's detector): torchvision ResNet state dicts,
  detectron2 ResNet pickles (``R-52.pkl``: ``stem.conv1``, ``res2.0...``, with or without
  ``backbone.``), or our own names. The ``fc`` classifier is ignored, any other unknown key raises.
* :class:`~panopticlab.models.backbones.TimmBackbone`: a timm model's state dict; keys of layers
  that ``features_only`` drops (classifier, final convs) are ignored and listed in the report.
* The seed's Xception-65 and HRNet (:mod:`~panopticlab.models.seed_backbones`): the ImageNet files
  the seed starts from (SegmenTron's ``tf-xception65-270e81cf.pth``, HRNet-Image-Classification's
  ``hrnetv2_w48_imagenet_pretrained.pth``) or their detectron2 pickles (``x65.pkl``, ``h48.pkl``);
  keys already carry the backbone's names. Keys of the classifier parts (HRNet's ``incre_modules``,
  ``downsamp_modules``, ``final_layer``, ``classifier``) are ignored and listed, as the seed's
  ``load_state_dict(strict=False)`` ignores them.

:func:`detectron2_backbone_key` is detectron2's ResNet naming, shared with the Panoptic-DeepLab
converter (``models/panoptic_deeplab/detectron2.py``).
"""

from __future__ import annotations

import os
import re
from typing import Callable

from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import ResNet

from panopticlab.errors import InputError
from panopticlab.models.backbones import ResNetBackbone, TimmBackbone
from panopticlab.models.seed_backbones import HRNet, Xception65
from panopticlab.weights import LoadReport, StateDict, listing, load_checked, read_state_dict

_D2_BACKBONE_RULES: list[tuple[str, Callable[[re.Match[str]], str]]] = [
    # DeepLab stem: conv{k} and its BN child conv{k}.norm
    (r"stem\.conv(\d)\.norm\.(\w+)", lambda m: f"stem.bn{m[1]}.{m[2]}"),
    (r"stem\.conv(\d)\.weight", lambda m: f"stem.conv{m[1]}.weight"),
    # bottlenecks: res{N} is torchvision's layer{N-1}; shortcut = downsample.0 (conv) / .1 (BN)
    (r"res(\d)\.(\d+)\.conv(\d)\.norm\.(\w+)", lambda m: f"layer{int(m[1]) - 1}.{m[2]}.bn{m[3]}.{m[4]}"),
    (r"res(\d)\.(\d+)\.conv(\d)\.weight", lambda m: f"layer{int(m[1]) - 1}.{m[2]}.conv{m[3]}.weight"),
    (r"res(\d)\.(\d+)\.shortcut\.norm\.(\w+)", lambda m: f"layer{int(m[1]) - 1}.{m[2]}.downsample.1.{m[3]}"),
    (r"res(\d)\.(\d+)\.shortcut\.weight", lambda m: f"layer{int(m[1]) - 1}.{m[2]}.downsample.0.weight"),
]


def detectron2_backbone_key(key: str) -> str | None:
    """Map a detectron2 ResNet key (``res2.0.conv1.norm.weight``, no ``backbone.`` prefix) to our
    ResNet backbone's (``layer1.0.bn1.weight``); ``None`` when it is not a ResNet key."""
    for pattern, replace in _D2_BACKBONE_RULES:
        m = re.fullmatch(pattern, key)
        if m:
            return replace(m)
    return None


def _resnet_key(key: str, ours: StateDict) -> str | None:
    """Our ResNet backbone's name (``stem.conv1.weight``, ``layer1.0...``) for a key of ours,
    torchvision's or detectron2's; ``None`` if it is none of them."""
    if key in ours:
        return key
    if key.startswith(("conv1.", "bn1.")):  # torchvision's stem
        return "stem." + key
    return detectron2_backbone_key(key.removeprefix("backbone."))


def _is_torchvision_resnet(module: nn.Module) -> bool:
    """torchvision's ResNet, or the IntermediateLayerGetter of one that its BackboneWithFPN keeps."""
    return isinstance(module, ResNet) or (isinstance(module, IntermediateLayerGetter) and hasattr(module, "layer1"))


def load_backbone_weights(backbone: nn.Module, path: str | os.PathLike, *, strict: bool = True) -> LoadReport:
    """Load backbone-only weights (ImageNet classifiers) into ``backbone`` (see the module docstring).

    ``strict``: every backbone key must be filled. Shape mismatches always raise (e.g.
    torchvision's 7x7 stem into the DeepLab-stem ``r52_dc5``).
    """
    state = read_state_dict(path)
    if isinstance(backbone, TimmBackbone):
        state = {"body." + k: v for k, v in state.items()}
        return load_checked(backbone, state, str(path), allow_missing=not strict, allow_unexpected=True)
    if isinstance(backbone, (Xception65, HRNet)):
        state = {k.removeprefix("backbone."): v for k, v in state.items()}
        return load_checked(backbone, state, str(path), allow_missing=not strict, allow_unexpected=True)
    if isinstance(backbone, ResNetBackbone):
        to_target = lambda name: name  # noqa: E731
    elif _is_torchvision_resnet(backbone):
        # torchvision's names have no 'stem.'; its classifier is not part of the backbone (the
        # container below shares the other children's parameters, so loading into it loads them).
        to_target = lambda name: name.removeprefix("stem.")  # noqa: E731
        backbone = nn.ModuleDict({name: child for name, child in backbone.named_children() if name != "fc"})
    else:
        raise TypeError(f"no backbone-weight converter for {type(backbone).__name__}")
    target = backbone.state_dict()
    ours = {("stem." + k if k.startswith(("conv1.", "bn1.")) else k): v for k, v in target.items()}
    counts_batches = any(k.endswith("num_batches_tracked") for k in target)  # frozen BatchNorm does not
    renamed: StateDict = {}
    unknown = []
    for key, value in state.items():
        if key.startswith("fc.") or (key.endswith("num_batches_tracked") and not counts_batches):
            continue
        name = _resnet_key(key, ours)
        if name is None:
            unknown.append(key)
        else:
            renamed[to_target(name)] = value
    if unknown:
        raise InputError(f"{path}: " + listing("keys that are not ResNet backbone keys", unknown))
    return load_checked(backbone, renamed, str(path), allow_missing=not strict)
