"""Weights on disk: safetensors for our own, converters from detectron2, torchvision and timm.

Loading never executes code from a file: safetensors holds raw tensors only, ``.pth`` files go
through ``torch.load(weights_only=True)``, and detectron2's ``.pkl`` files through a restricted
unpickler that builds numpy arrays and refuses every other global.

Every mismatch between a file and a model (missing keys, unexpected keys, shapes) raises
:class:`~panopticlab.errors.InputError` naming the file and the keys.
"""

from __future__ import annotations

import codecs
import collections
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from panopticlab.errors import InputError
from panopticlab.fileio import atomic_path

StateDict = dict[str, torch.Tensor]

_MAX_LISTED_KEYS = 10


@dataclass
class LoadReport:
    """What loading a file into a model did: keys loaded, and keys of the file left unused."""

    path: str
    loaded: int
    ignored: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


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


# ---------------------------------------------------------------------------------------------
# safetensors: our own weights


def save_weights(
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    metadata: Mapping[str, str] | None = None,
    *,
    overwrite: bool = True,
) -> None:
    """Write a model's state dict (or a state dict) to a ``.safetensors`` file, atomically.

    ``metadata``: string keys and values stored in the file header. ``overwrite=False`` refuses
    an existing file with :class:`InputError`.
    """
    from safetensors.torch import save_file

    state = model_or_state_dict.state_dict() if isinstance(model_or_state_dict, nn.Module) else model_or_state_dict
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    with atomic_path(path, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp), metadata={str(k): str(v) for k, v in (metadata or {}).items()})


def read_weights(path: str | os.PathLike) -> tuple[StateDict, dict[str, str]]:
    """Read a ``.safetensors`` file: (tensors on CPU, header metadata)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: weights file not found")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise InputError(f"{path}: not a readable safetensors file ({e})") from None


def load_weights(model: nn.Module, path: str | os.PathLike, *, strict: bool = True) -> LoadReport:
    """Load a ``.safetensors`` file saved by :func:`save_weights` into ``model``.

    ``strict``: missing or unexpected keys raise; otherwise they are reported. A shape
    mismatch always raises. A file that holds the weights of one child module only (the
    detectron2 converter writes a bare network, which a ``PanopticDeepLab`` holds as
    ``.network``) loads into that child.
    """
    state, _ = read_weights(path)
    target = _module_holding(model, state)
    return _load_checked(target, state, str(path), allow_missing=not strict, allow_unexpected=not strict)


def _module_holding(model: nn.Module, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """``model``, or its direct child whose state-dict keys are the ones in ``state``."""
    if any(k in state for k in model.state_dict()):
        return model
    for child in model.children():
        if any(k in state for k in child.state_dict()):
            return child
    return model


def _check_fits(
    expected: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    source: str,
    *,
    allow_missing: bool = False,
    allow_unexpected: bool = False,
) -> tuple[list[str], list[str]]:
    """Compare ``state`` with a model's state dict key by key and shape by shape.

    Returns (missing, unexpected); raises :class:`InputError` naming ``source`` on any shape
    mismatch, and on missing / unexpected keys unless allowed.
    """
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    problems = []
    if mismatched:
        problems.append(_listing("shape mismatches", mismatched))
    if missing and not allow_missing:
        problems.append(_listing("missing keys", missing))
    if unexpected and not allow_unexpected:
        problems.append(_listing("unexpected keys", unexpected))
    if problems:
        raise InputError(f"{source}: does not fit the model: " + "; ".join(problems))
    return missing, unexpected


def _load_checked(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str,
    *,
    allow_missing: bool = False,
    allow_unexpected: bool = False,
) -> LoadReport:
    """:func:`_check_fits`, then load the matching tensors into ``model``."""
    expected = model.state_dict()
    missing, unexpected = _check_fits(
        expected, state, source, allow_missing=allow_missing, allow_unexpected=allow_unexpected
    )
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    return LoadReport(source, len(state) - len(unexpected), ignored=unexpected, missing=missing)


def _listing(what: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED_KEYS])
    more = f" and {len(keys) - _MAX_LISTED_KEYS} more" if len(keys) > _MAX_LISTED_KEYS else ""
    return f"{len(keys)} {what} ({shown}{more})"


# ---------------------------------------------------------------------------------------------
# detectron2 pickles, read without executing code


def _allowed_pickle_globals() -> dict[tuple[str, str], Any]:
    """The globals a pickled dict of numpy arrays needs (numpy 1.x and 2.x module names)."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # how protocol-2 pickles store bytes
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    return allowed


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals of :func:`_allowed_pickle_globals`."""

    allowed = _allowed_pickle_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load the global '{module}.{name}' (only numpy arrays and plain containers are allowed)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refusing persistent ids (torch tensors): save numpy arrays instead")


def read_detectron2_pickle(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a detectron2 model-zoo ``.pkl`` safely.

    Returns ``(arrays, extras)``: the ``"model"`` dict (key -> ndarray, a ``module.`` prefix
    removed) and the other top-level entries (``__author__``, ``matching_heuristics``...).
    A file that is a bare ``{key: ndarray}`` dict is accepted too.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        with open(path, "rb") as f:
            data = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except pickle.UnpicklingError as e:
        raise InputError(f"{path}: {e}") from None
    except Exception as e:  # truncated or not a pickle at all
        raise InputError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a pickled dict, got {type(data).__name__}")
    model = data.get("model", data)
    extras = {k: v for k, v in data.items() if k != "model"} if "model" in data else {}
    if not isinstance(model, dict):
        raise InputError(f"{path}: 'model' is a {type(model).__name__}, expected a dict of arrays")
    arrays = {}
    for key, value in model.items():
        if not isinstance(value, (np.ndarray, np.generic)):
            raise InputError(f"{path}: entry {key!r} is a {type(value).__name__}, expected a numpy array")
        arrays[key.removeprefix("module.")] = np.asarray(value)
    return arrays, extras


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    # np.require keeps 0-d arrays 0-d (np.ascontiguousarray would make them 1-d)
    return torch.from_numpy(np.require(array, requirements=["C"]))


# ---------------------------------------------------------------------------------------------
# detectron2 key names -> ours

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


def _apply_rules(rules: list, text: str, *, full: bool) -> str | None:
    for pattern, replace in rules:
        m = re.fullmatch(pattern, text) if full else re.match(pattern, text)
        if m:
            return replace(m) + ("" if full else text[m.end() :])
    return None


def detectron2_backbone_key(key: str) -> str | None:
    """Map a detectron2 ResNet key (``res2.0.conv1.norm.weight``, no ``backbone.`` prefix) to our
    ResNet backbone's (``layer1.0.bn1.weight``); ``None`` when it is not a ResNet key."""
    return _apply_rules(_D2_BACKBONE_RULES, key, full=True)


def detectron2_key(key: str) -> str | None:
    """Map a detectron2 Panoptic-DeepLab state-dict key to ours; ``None`` when it has no counterpart.

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
        rest = _apply_rules(_D2_DECODER_RULES, rest, full=False)
        if rest is None:
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

    The target model is ``build_panoptic_deeplab(num_classes, head_variant=...)`` with
    detectron2's R52 defaults; ``num_classes`` (from the semantic predictor's shape) and
    ``head_variant`` (``"dsconv"`` when the decoder fuse is depthwise-separable, else
    ``"conv"``) are read from the file unless given. Every file key must map onto a model key
    of the same shape and every model key must be filled (``num_batches_tracked`` counters
    absent from the file are set to 0 and listed in the report); otherwise :class:`InputError`
    names the file and the keys. The output's metadata records the source and the config.
    """
    from panopticlab.models.panoptic_deeplab.network import build_panoptic_deeplab

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
        model = build_panoptic_deeplab(num_classes, head_variant=head_variant)  # type: ignore[arg-type]
    expected = model.state_dict()

    state: StateDict = {}
    unmapped = []
    for key, array in arrays.items():
        ours = detectron2_key(key)
        if ours is None or ours not in expected:
            unmapped.append(key)
            continue
        state[ours] = _to_tensor(array).to(expected[ours].dtype)
    if unmapped:
        raise InputError(f"{pkl_path}: " + _listing("keys with no counterpart in the model", unmapped))
    filled = [k for k in expected if k not in state and k.endswith("num_batches_tracked")]
    for k in filled:
        state[k] = torch.zeros(expected[k].shape, dtype=expected[k].dtype)
    _check_fits(expected, state, str(pkl_path))

    author = extras.get("__author__")
    save_weights(
        {k: state[k] for k in expected},
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
        num_parameters=sum(p.numel() for p in model.parameters()),
        num_classes=num_classes,
        head_variant=head_variant,
        author=None if author is None else str(author),
        filled=filled,
    )


# ---------------------------------------------------------------------------------------------
# backbone-only weights: torchvision ResNet, timm, detectron2 ImageNet pickles


def read_state_dict(path: str | os.PathLike) -> StateDict:
    """Read a state dict from ``.safetensors``, ``.pkl`` (detectron2, restricted unpickler) or any
    other ``torch.save`` file (``torch.load(weights_only=True)``; a ``{"state_dict": ...}`` or
    ``{"model": ...}`` wrapper is unwrapped)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_weights(path)[0]
    if path.suffix == ".pkl":
        return {k: _to_tensor(v) for k, v in read_detectron2_pickle(path)[0].items()}
    if not path.is_file():
        raise InputError(f"{path}: weights file not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(f"{path}: not a readable torch weights file ({type(e).__name__}: {e})") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(wrapper), dict):
            data = data[wrapper]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise InputError(f"{path}: expected a dict of tensors (a state dict)")
    return {k.removeprefix("module."): v for k, v in data.items()}


def _resnet_key(key: str, ours: Mapping[str, Any]) -> str | None:
    """Our ResNet backbone's name for a key of ours, torchvision's or detectron2's; ``None`` if none."""
    if key in ours:
        return key
    if key.startswith(("conv1.", "bn1.")):  # torchvision's stem
        return "stem." + key
    return detectron2_backbone_key(key.removeprefix("backbone."))


def load_backbone_weights(backbone: nn.Module, path: str | os.PathLike, *, strict: bool = True) -> LoadReport:
    """Load backbone-only weights (ImageNet classifiers) into a backbone of ``models/backbones.py``.

    * :class:`ResNetBackbone`: torchvision ResNet state dicts (``conv1``/``bn1`` -> ``stem.``;
      the ``fc`` classifier is ignored), detectron2 ResNet pickles (``stem.conv1``, ``res2.0...``,
      with or without ``backbone.``) or our own names. Any other unknown key raises.
    * :class:`TimmBackbone`: a timm model's state dict; keys of layers that ``features_only``
      drops (classifier, final convs) are ignored and listed in the report.

    ``strict``: every backbone key must be filled. Shape mismatches always raise (e.g.
    torchvision's 7x7 stem into the DeepLab-stem ``r52_dc5``).
    """
    from panopticlab.models.backbones import ResNetBackbone, TimmBackbone

    state = read_state_dict(path)
    if isinstance(backbone, TimmBackbone):
        state = {"body." + k: v for k, v in state.items()}
        return _load_checked(backbone, state, str(path), allow_missing=not strict, allow_unexpected=True)
    if not isinstance(backbone, ResNetBackbone):
        raise TypeError(f"no backbone-weight converter for {type(backbone).__name__}")
    ours = backbone.state_dict()
    renamed: StateDict = {}
    unknown = []
    for key, value in state.items():
        if key.startswith("fc."):
            continue
        name = _resnet_key(key, ours)
        if name is None:
            unknown.append(key)
        else:
            renamed[name] = value
    if unknown:
        raise InputError(f"{path}: " + _listing("keys that are not ResNet backbone keys", unknown))
    return _load_checked(backbone, renamed, str(path), allow_missing=not strict)
