"""detectron2's Panoptic-DeepLab checkpoints: their key names, and the converter to our weights.

detectron2's model-zoo ``.pkl`` files are read by the restricted unpickler of
:mod:`panopticlab.weights` (numpy arrays only, no code). The architecture is read from the keys
(:func:`checkpoint_architecture`): detectron2's R52, or the Panoptic-DeepLab seed's Xception-65 /
HRNet (``tools_d2``'s ``d2_xception_65`` / ``d2_hrnet``, whose backbone keys are the seed module's
own names, :mod:`panopticlab.models.seed_backbones`), with the decoder stages the file has. Every
key is mapped by the explicit rules below; the converted ``.safetensors`` holds the weights of a whole
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
    backbone: str = "r52_dc5"
    low_level_features: tuple[str, ...] = ("res3", "res2")
    filled: list[str] = field(default_factory=list)  # keys absent from the file, set to zero (num_batches_tracked)


@dataclass(frozen=True)
class Architecture:
    """What a checkpoint holds: the network's build arguments that its keys and shapes decide.

    ``low_level_features`` deepest first, with the semantic and instance projection widths of each.
    """

    backbone: str
    head_variant: str
    num_classes: int
    low_level_features: tuple[str, ...]
    semantic_projection_channels: tuple[int, ...]
    instance_projection_channels: tuple[int, ...]

    def build_arguments(self) -> dict:
        """Keyword arguments of :func:`build_panoptic_deeplab` (besides ``num_classes``)."""
        return {
            "backbone": self.backbone,
            "head_variant": self.head_variant,
            "low_level_features": self.low_level_features,
            "semantic_projection_channels": self.semantic_projection_channels,
            "instance_projection_channels": self.instance_projection_channels,
        }


def checkpoint_architecture(arrays: dict, where: str, *, num_classes: int | None = None, head_variant: str | None = None) -> Architecture:
    """Read a detectron2 Panoptic-DeepLab checkpoint's architecture from its keys and shapes.

    Backbone: ``backbone.block21...`` -> the seed's Xception-65; ``backbone.stage4...`` -> the seed's
    HRNet (width from its first branch); ``backbone.stem.conv1...`` -> detectron2's R52. Decoder
    stages: the ``sem_seg_head.decoder.resN.project_conv`` keys present. ``num_classes`` (from the
    semantic predictor) and ``head_variant`` (``dsconv`` when the decoder fuse is
    depthwise-separable) unless given.

    Raises:
        InputError: naming ``where``, when the keys are not a Panoptic-DeepLab of a known backbone.
    """
    if num_classes is None:
        predictor = arrays.get("sem_seg_head.predictor.weight")
        if predictor is None or predictor.ndim != 4:
            raise InputError(f"{where}: no 'sem_seg_head.predictor.weight': not a Panoptic-DeepLab checkpoint")
        num_classes = int(predictor.shape[0])
    hrnet_branch = arrays.get("backbone.stage4.0.branches.0.0.conv1.weight")
    if "backbone.block21.sep_conv3.block.pointwise.weight" in arrays:
        backbone = "seed:xception65"
    elif hrnet_branch is not None:
        backbone = f"seed:hrnet_w{int(hrnet_branch.shape[0])}"
    elif "backbone.stem.conv1.weight" in arrays:
        backbone = "r52_dc5"
    else:
        raise InputError(f"{where}: unknown backbone (neither detectron2's R52 nor the seed's Xception-65 or HRNet keys)")
    stages = tuple(f for f in ("res4", "res3", "res2") if f"sem_seg_head.decoder.{f}.project_conv.weight" in arrays)
    if not stages or any(f"ins_embed_head.decoder.{f}.project_conv.weight" not in arrays for f in stages):
        raise InputError(f"{where}: the semantic and instance decoders have no matching projection stages")
    if head_variant is None:
        head_variant = "dsconv" if f"sem_seg_head.decoder.{stages[-1]}.fuse_conv.depthwise.weight" in arrays else "conv"
    return Architecture(
        backbone=backbone,
        head_variant=head_variant,
        num_classes=num_classes,
        low_level_features=stages,
        semantic_projection_channels=tuple(int(arrays[f"sem_seg_head.decoder.{f}.project_conv.weight"].shape[0]) for f in stages),
        instance_projection_channels=tuple(int(arrays[f"ins_embed_head.decoder.{f}.project_conv.weight"].shape[0]) for f in stages),
    )


def detectron2_key(key: str, *, backbone: str = "r52_dc5") -> str | None:
    """Map a detectron2 Panoptic-DeepLab state-dict key to our network's; ``None`` when it has no counterpart.

    detectron2's ``Conv2d`` keeps its BatchNorm as a child named ``norm``; ours has ``conv`` and
    ``norm`` children, so a normalised conv's ``X.weight`` becomes ``X.conv.weight``. The
    predictors and the image-pooling conv have no norm and keep their names. The seed's
    backbones (``backbone="seed:..."``) keep the seed's module names: their keys map unchanged.
    """
    if key.startswith("backbone."):
        if backbone.startswith("seed:"):
            return key
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

    The target network is ``build_panoptic_deeplab(num_classes, **architecture)`` with the
    architecture read from the file (:func:`checkpoint_architecture`: detectron2's R52 or the
    seed's Xception-65 / HRNet, the decoder stages, the projection widths; ``num_classes`` and
    ``head_variant`` unless given). Every file key must map onto a network key of the same shape
    and every network key must be filled (``num_batches_tracked`` counters absent from the file
    are set to 0 and listed in the report); otherwise :class:`InputError` names the file and the
    keys. The output's keys are the model's (``network.`` + the network key), and its metadata
    records the source and the architecture.
    """
    pkl_path = Path(pkl_path)
    arrays, extras = read_detectron2_pickle(pkl_path)
    architecture = checkpoint_architecture(arrays, str(pkl_path), num_classes=num_classes, head_variant=head_variant)
    with torch.device("meta"):  # names and shapes only: no memory, no initialisation cost
        network = build_panoptic_deeplab(architecture.num_classes, **architecture.build_arguments())  # type: ignore[arg-type]
    expected = network.state_dict()

    state: StateDict = {}
    unmapped = []
    for key, array in arrays.items():
        ours = detectron2_key(key, backbone=architecture.backbone)
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
            "num_classes": str(architecture.num_classes),
            "head_variant": architecture.head_variant,
            "backbone": architecture.backbone,
            "low_level_features": ",".join(architecture.low_level_features),
        },
        overwrite=overwrite,
    )
    return ConversionReport(
        source=str(pkl_path),
        destination=str(out_path),
        num_tensors=len(expected),
        num_parameters=sum(p.numel() for p in network.parameters()),
        num_classes=architecture.num_classes,
        head_variant=architecture.head_variant,
        author=None if author is None else str(author),
        filled=filled,
        backbone=architecture.backbone,
        low_level_features=architecture.low_level_features,
    )
