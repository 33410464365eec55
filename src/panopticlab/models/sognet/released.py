"""SOGNet's and UPSNet's released checkpoints -> panopticlab's SOGNet state dict.

The released models (SOGNet-50 COCO from LaoYang1994/SOGNet, UPSNet-50 COCO and Cityscapes from
uber-research/UPSNet) are ``torch.save`` files of the UPSNet-based code. Their keys, read from the
released definitions (``tools/released_sognet_keys.py``, lists in ``tests/data/released_keys/``):

=========================================================  ==============================================
released                                                   panopticlab (``SOGNet`` state dict)
=========================================================  ==============================================
``resnet_backbone.conv1.{conv1,bn1}``                      ``detector.backbone.body.{conv1,bn1}``
``resnet_backbone.res{2..5}.layers.{i}.{conv,bn}{1..3}``   ``detector.backbone.body.layer{1..4}.{i}...``
``resnet_backbone.res{n}.layers.0.downsample.{0,1}``       ``...layer{n-1}.0.downsample.{0,1}``
``fpn.fpn_p{2..5}_1x1``                                    ``detector.backbone.fpn.inner_blocks.{0..3}.0``
                                                           (P5's: ``inner_blocks.3.lateral.0`` with GAP)
``fpn.fpn_gap`` (SOGNet; UPSNet without)                   ``detector.backbone.fpn.inner_blocks.3.context``
``fpn.fpn_p{2..5}``                                        ``detector.backbone.fpn.layer_blocks.{0..3}.0``
``rpn.conv_proposal.0`` / ``cls_score`` / ``bbox_pred``    ``detector.rpn.head.conv.0.0`` / ``cls_logits`` / ``bbox_pred``
``rcnn.fc6.0`` / ``fc7.0``                                 ``detector.roi_heads.box_head.fc6`` / ``fc7``
``rcnn.cls_score`` / ``bbox_pred``                         ``detector.roi_heads.box_predictor.cls_score`` / ``bbox_pred``
``mask_branch.mask_conv{1..4}.0``                          ``detector.roi_heads.mask_head.{0..3}.0``
``mask_branch.mask_deconv1.0`` / ``mask_score``            ``detector.roi_heads.mask_predictor.conv5_mask`` / ``mask_fcn_logits``
``fcn_head.fcn_subnet.conv.{i}.0.{conv_offset,conv}``      ``semantic_head.subnet.{i}.{offset,conv}``
``fcn_head.score``                                         ``semantic_head.classifier`` (rows reordered)
``relation_head.{U,V}.0`` (SOGNet only)                    ``relation.category_{first,second}``
``relation_head.{W,P}.0`` (1x1 convs)                      ``relation.{geometry,score}`` (linear: 1x1 dropped)
=========================================================  ==============================================

The one reordering: the released semantic classes put stuff first (COCO: the 53 stuff classes,
then the 80 things, ``init_coco.py``; Cityscapes: the 11 stuff, then the 8 things), panopticlab's
channels are the contiguous category ids (COCO: things first). Detector classes (background + the
things in category order) and the relation's one-hot are in the same order on both sides.
BatchNorm ``num_batches_tracked`` counters of the file are dropped (frozen BN has none).

A file is read with ``torch.load(weights_only=True)`` (no code runs); any key of the file without
a counterpart, any model key left unfilled and any shape that differs is an :class:`InputError`
naming the file and the keys.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from panopticlab.config import Config, load_config
from panopticlab.data.categories import load_categories
from panopticlab.errors import InputError
from panopticlab.models.sognet.model import SOGNet, build_sognet_model
from panopticlab.weights import check_fits, listing, read_state_dict, save_weights

#: the released 1x1 convolutions that are linear layers here
_ONE_BY_ONE_TO_LINEAR = ("relation.geometry.weight", "relation.score.weight")

#: (released key pattern, panopticlab key template): the first that matches maps the key
_RULES: list[tuple[re.Pattern, str]] = [
    (re.compile(r"resnet_backbone\.conv1\.(conv1|bn1)\.(.+)"), r"detector.backbone.body.\1.\2"),
    (re.compile(r"resnet_backbone\.res([2-5])\.layers\.(\d+)\.(.+)"), "detector.backbone.body.layer{stage}.\\2.\\3"),
    (re.compile(r"fpn\.fpn_p([2-5])_1x1\.(weight|bias)"), "detector.backbone.fpn.inner_blocks.{level}.{lateral}0.\\2"),
    (re.compile(r"fpn\.fpn_gap\.(weight|bias)"), r"detector.backbone.fpn.inner_blocks.3.context.\1"),
    (re.compile(r"fpn\.fpn_p([2-5])\.(weight|bias)"), "detector.backbone.fpn.layer_blocks.{level}.0.\\2"),
    (re.compile(r"rpn\.conv_proposal\.0\.(weight|bias)"), r"detector.rpn.head.conv.0.0.\1"),
    (re.compile(r"rpn\.cls_score\.(weight|bias)"), r"detector.rpn.head.cls_logits.\1"),
    (re.compile(r"rpn\.bbox_pred\.(weight|bias)"), r"detector.rpn.head.bbox_pred.\1"),
    (re.compile(r"rcnn\.(fc6|fc7)\.0\.(weight|bias)"), r"detector.roi_heads.box_head.\1.\2"),
    (re.compile(r"rcnn\.(cls_score|bbox_pred)\.(weight|bias)"), r"detector.roi_heads.box_predictor.\1.\2"),
    (re.compile(r"mask_branch\.mask_conv([1-4])\.0\.(weight|bias)"), "detector.roi_heads.mask_head.{conv}.0.\\2"),
    (re.compile(r"mask_branch\.mask_deconv1\.0\.(weight|bias)"), r"detector.roi_heads.mask_predictor.conv5_mask.\1"),
    (re.compile(r"mask_branch\.mask_score\.(weight|bias)"), r"detector.roi_heads.mask_predictor.mask_fcn_logits.\1"),
    (re.compile(r"fcn_head\.fcn_subnet\.conv\.(\d+)\.0\.conv_offset\.(weight|bias)"), r"semantic_head.subnet.\1.offset.\2"),
    (re.compile(r"fcn_head\.fcn_subnet\.conv\.(\d+)\.0\.conv\.(weight|bias)"), r"semantic_head.subnet.\1.conv.\2"),
    (re.compile(r"fcn_head\.score\.(weight|bias)"), r"semantic_head.classifier.\1"),
    (re.compile(r"relation_head\.U\.0\.weight"), "relation.category_first.weight"),
    (re.compile(r"relation_head\.V\.0\.weight"), "relation.category_second.weight"),
    (re.compile(r"relation_head\.W\.0\.weight"), "relation.geometry.weight"),
    (re.compile(r"relation_head\.P\.0\.weight"), "relation.score.weight"),
]


def released_key(key: str, *, global_context: bool) -> str | None:
    """The panopticlab key of a released key (``None``: no counterpart).

    ``global_context``: the FPN has the released ``fpn_gap`` (SOGNet's COCO model), whose P5
    lateral sits inside panopticlab's ``GlobalContextLateral``.
    """
    for pattern, template in _RULES:
        match = pattern.fullmatch(key)
        if match is None:
            continue
        groups = match.groups()
        values = {}
        if "{stage}" in template:
            values["stage"] = int(groups[0]) - 1
        if "{level}" in template:
            values["level"] = int(groups[0]) - 2
            values["lateral"] = "lateral." if global_context and groups[0] == "5" else ""
        if "{conv}" in template:
            values["conv"] = int(groups[0]) - 1
        return match.expand(template.format(**values))
    return None


def semantic_order(things: list[int], stuff: list[int]) -> list[int]:
    """Row of the released classifier for each panopticlab semantic channel (contiguous id).

    The released classes are the stuff classes ``0..S-1`` then the things ``S..S+K-1``, each in
    category order; ``things`` / ``stuff`` are the contiguous ids of the model's thing and stuff
    categories in category order (:class:`~.labels.LabelSpace`).
    """
    rows = [0] * (len(things) + len(stuff))
    for rank, contiguous in enumerate(stuff):
        rows[contiguous] = rank
    for rank, contiguous in enumerate(things):
        rows[contiguous] = len(stuff) + rank
    return rows


def convert_released_state(
    released: Mapping[str, Tensor],
    expected: Mapping[str, Tensor],
    source: str,
    *,
    semantic_rows: list[int],
) -> dict[str, Tensor]:
    """Map a released state dict onto ``expected`` (the target model's state dict, any device).

    Args:
        released: the file's tensors (a ``module.`` prefix of DataParallel already removed).
        expected: the panopticlab model's state dict (names, shapes, dtypes).
        source: the file's name, for errors.
        semantic_rows: :func:`semantic_order` of the model's categories.

    Returns:
        the model's state dict filled from the file (``expected``'s keys, dtypes of ``expected``).

    Raises:
        InputError: a released key without counterpart, a model key left unfilled, a shape that differs.
    """
    global_context = "detector.backbone.fpn.inner_blocks.3.context.weight" in expected
    state: dict[str, Tensor] = {}
    unmapped = []
    for key, tensor in released.items():
        if key.endswith("num_batches_tracked"):
            continue
        ours = released_key(key, global_context=global_context)
        if ours is None or ours not in expected:
            unmapped.append(key)
            continue
        if ours in _ONE_BY_ONE_TO_LINEAR and tensor.dim() == 4:
            tensor = tensor.flatten(1)  # [out, in, 1, 1] -> [out, in]; another kernel size stays mis-shaped
        elif ours.startswith("semantic_head.classifier.") and tensor.shape[0] == len(semantic_rows):
            tensor = tensor[torch.as_tensor(semantic_rows)]
        state[ours] = tensor.to(expected[ours].dtype)
    if unmapped:
        raise InputError(f"{source}: " + listing("keys with no counterpart in the model", unmapped))
    check_fits(expected, state, source)
    return state


def convert_released(
    checkpoint: str | os.PathLike, config_path: str | os.PathLike, output: str | os.PathLike, *, overwrite: bool = False
) -> ConversionSummary:
    """Convert a released SOGNet / UPSNet ``.pth`` to a ``.safetensors`` file for ``config_path``.

    The model of the config (e.g. ``configs/sognet/sognet_r50_coco_released.yaml``) is built on
    the meta device for its key names and shapes; the file's tensors are mapped onto it
    (:func:`convert_released_state`) and written with the model's keys, so that
    ``load_model(config_path, output)`` loads them.
    """
    checkpoint = Path(checkpoint)
    model = build_target_model(config_path)
    released = read_state_dict(checkpoint)
    expected = model.state_dict()
    rows = semantic_order(model.labels.things, model.labels.stuff)
    state = convert_released_state(released, expected, str(checkpoint), semantic_rows=rows)
    save_weights(state, output, metadata={"source": "released", "source_file": checkpoint.name}, overwrite=overwrite)
    return ConversionSummary(str(checkpoint), str(output), len(state), sum(v.numel() for v in state.values()))


def build_target_model(config_path: str | os.PathLike) -> SOGNet:
    """The SOGNet model of a config on the meta device: the names and shapes a conversion fills."""
    config = load_config(Config, config_path)
    if config.model.arch != "sognet":
        raise InputError(f"{config_path}: a released SOGNet / UPSNet checkpoint needs a sognet config, not {config.model.arch}")
    with torch.device("meta"):
        return build_sognet_model(config.model.sognet, load_categories(config.model.categories))


@dataclass
class ConversionSummary:
    source: str
    destination: str
    num_tensors: int
    num_values: int
