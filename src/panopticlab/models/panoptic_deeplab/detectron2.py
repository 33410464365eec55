"""detectron2's Panoptic-DeepLab checkpoints: their key names, and the converter to our weights.

detectron2's model-zoo ``.pkl`` files are read by the restricted unpickler of
:mod:`panopticlab.weights` (numpy arrays only, no code). Every key is mapped by the explicit
rules below; the converted ``.safetensors`` holds the weights of a whole
:class:`~panopticlab.models.panoptic_deeplab.model.PanopticDeepLab` (keys ``network.…``), the
same layout ``panopticlab train`` writes, so ``load_model(config, converted)`` reads it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from panopticlab.errors import InputError
from panopticlab.models.backbone_weights import detectron2_backbone_key
from panopticlab.models.panoptic_deeplab.network import build_panoptic_deeplab
from panopticlab.weights import StateDict, array_to_tensor, check_fits, listing, read_detectron2_pickle, save_weights

#: Where the network sits inside the model: the converted file's keys start with this.
NETWORK_PREFIX = "network."

# detectron2 module prefix -> ours (first match wins)
_D2_HEAD_PREFIXES = [
    ("sem_seg_head.decoder.", "semantic_decoder."),
    ("ins_embed_head.decoder.", "instance_decoder."),
    ("sem_seg_head.head.", "semantic_head.tower."),
    ("sem_seg_head.predictor.", "semantic_head.predictor."),
    ("ins_embed_head.center_head.", "center_head.tower."),
    ("ins_embed_head.center_predictor.", "center_head.predictor."),
    ("ins_embed_head.offset_head.", "offset_head.tower."),
    ("ins_embed_head.offset_predictor.", "offset_head.predictor."),
]

# inside a decoder: detectron2's DeepLabV3PlusHead.decoder[feature] -> our aspp / stages
_D2_DECODER_RULES = [
    (r"res5\.project_conv\.convs\.0\.", lambda m: "aspp.conv1x1."),
    (r"res5\.project_conv\.convs\.([123])\.", lambda m: f"aspp.atrous.{int(m[1]) - 1}."),
    (r"res5\.project_conv\.convs\.4\.1\.", lambda m: "aspp.pooling.conv."),  # convs.4.0 is the pool
    (r"res5\.project_conv\.project\.", lambda m: "aspp.project."),
    (r"(res\d)\.project_conv\.", lambda m: f"stages.{m[1]}.project."),
    (r"(res\d)\.fuse_conv\.", lambda m: f"stages.{m[1]}.fuse."),
]


@dataclass
class ConversionReport:
    """Result of :func:`convert_detectron2`: what was read, what was written, the inferred config."""

    source: str
    destination: str
    num_tensors: int
    num_parameters: int
    num_classes: int
    head_variant: str
    author: str | None
    filled: list[str] = field(default_factory=list)  # keys absent from the file, set to zero (num_batches_tracked)


def detectron2_key(key: str) -> str | None:
    """Map a detectron2 Panoptic-DeepLab state-dict key to our network's; ``None`` when it has no counterpart.

    detectron2's ``Conv2d`` keeps its BatchNorm as a child named ``norm``; ours has ``conv`` and
    ``norm`` children, so a normalised conv's ``X.weight`` becomes ``X.conv.weight``. The
    predictors and the image-pooling conv have no norm and keep their names.
    """
    if key.startswith("backbone."):
        mapped = detectron2_backbone_key(key[len("backbone.") :])
        return None if mapped is None else "backbone." + mapped
    for d2_prefix, ours in _D2_HEAD_PREFIXES:
        if key.startswith(d2_prefix):
            rest = key[len(d2_prefix) :]
            break
    else:
        return None
    if ours.endswith("decoder."):
        for pattern, replace in _D2_DECODER_RULES:
            m = re.match(pattern, rest)
            if m:
                rest = replace(m) + rest[m.end() :]
                break
        else:
            return None
    mapped = ours + rest
    plain_conv = ".predictor." in mapped or ".pooling.conv." in mapped
    if not plain_conv and mapped.endswith(".weight") and ".norm." not in mapped:
        mapped = mapped[: -len(".weight")] + ".conv.weight"
    return mapped


def convert_detectron2(
    pkl_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    num_classes: int | None = None,
    head_variant: str | None = None,
    overwrite: bool = True,
) -> ConversionReport:
    """Convert a detectron2 Panoptic-DeepLab model-zoo ``.pkl`` to our ``.safetensors``.

    The target network is ``build_panoptic_deeplab(num_classes, head_variant=...)`` with
    detectron2's R52 defaults; ``num_classes`` (from the semantic predictor's shape) and
    ``head_variant`` (``"dsconv"`` when the decoder fuse is depthwise-separable, else
    ``"conv"``) are read from the file unless given. Every file key must map onto a network key
    of the same shape and every network key must be filled (``num_batches_tracked`` counters
    absent from the file are set to 0 and listed in the report); otherwise :class:`InputError`
    names the file and the keys. The output's keys are the model's (``network.`` + the network
    key), and its metadata records the source and the config.
    """
    pkl_path = Path(pkl_path)
    arrays, extras = read_detectron2_pickle(pkl_path)
    if num_classes is None:
        predictor = arrays.get("sem_seg_head.predictor.weight")
        if predictor is None or predictor.ndim != 4:
            raise InputError(f"{pkl_path}: no 'sem_seg_head.predictor.weight': not a Panoptic-DeepLab checkpoint")
        num_classes = int(predictor.shape[0])
    if head_variant is None:
        head_variant = "dsconv" if "sem_seg_head.decoder.res3.fuse_conv.depthwise.weight" in arrays else "conv"
    with torch.device("meta"):  # names and shapes only: no memory, no initialisation cost
        network = build_panoptic_deeplab(num_classes, head_variant=head_variant)  # type: ignore[arg-type]
    expected = network.state_dict()

    state: StateDict = {}
    unmapped = []
    for key, array in arrays.items():
        ours = detectron2_key(key)
        if ours is None or ours not in expected:
            unmapped.append(key)
            continue
        state[ours] = array_to_tensor(array).to(expected[ours].dtype)
    if unmapped:
        raise InputError(f"{pkl_path}: " + listing("keys with no counterpart in the model", unmapped))
    filled = [k for k in expected if k not in state and k.endswith("num_batches_tracked")]
    for k in filled:
        state[k] = torch.zeros(expected[k].shape, dtype=expected[k].dtype)
    check_fits(expected, state, str(pkl_path))

    author = extras.get("__author__")
    save_weights(
        {NETWORK_PREFIX + k: state[k] for k in expected},
        out_path,
        metadata={
            "source": "detectron2",
            "source_file": pkl_path.name,
            "author": str(author),
            "num_classes": str(num_classes),
            "head_variant": head_variant,
        },
        overwrite=overwrite,
    )
    return ConversionReport(
        source=str(pkl_path),
        destination=str(out_path),
        num_tensors=len(expected),
        num_parameters=sum(p.numel() for p in network.parameters()),
        num_classes=num_classes,
        head_variant=head_variant,
        author=None if author is None else str(author),
        filled=filled,
    )
