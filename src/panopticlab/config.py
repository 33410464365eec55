"""Typed configs: nested dataclasses, read from YAML, changed by ``key=value`` overrides.

A config file holds only the values that differ from the dataclass defaults::

    model:
      num_classes: 19
    solver:
      base_lr: 0.001

and on the command line ``solver.max_iter=90000 input.crop_size=[512,1024]`` changes single
values (each value is parsed as YAML, so numbers, lists and booleans need no quoting).
Every key is checked against the dataclass: an unknown key or a value of the wrong type
raises :class:`~panopticlab.errors.InputError` naming the file and the key.

The first half of this module is the generic machinery; the second half is the schema of
an experiment (:class:`Config`), whose model-specific sections live beside their models
(e.g. :class:`~panopticlab.models.panoptic_deeplab.config.PanopticDeepLabConfig`).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Sequence, TypeVar

import yaml

from panopticlab.errors import InputError
from panopticlab.fileio import atomic_path
from panopticlab.models.panoptic_deeplab.config import PanopticDeepLabConfig
from panopticlab.models.sognet.config import SOGNetConfig

T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any], *, source: str = "<dict>", prefix: str = "") -> T:
    """Build dataclass ``cls`` from a (partial) nested dict, checking keys and types."""
    if not isinstance(data, dict):
        raise InputError(f"{source}: '{prefix.rstrip('.') or '<top>'}' must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise InputError(f"{source}: unknown key '{prefix}{unknown[0]}' (known here: {known})")
    values = {}
    for name, value in data.items():
        values[name] = _convert(hints[name], value, source=source, key=f"{prefix}{name}")
    return cls(**values)


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as plain nested dicts and lists (tuples become lists)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(config)


def load_config(cls: type[T], path: str | os.PathLike, overrides: Sequence[str] = ()) -> T:
    """Read a YAML file into ``cls`` and apply ``key=value`` overrides."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, expected a YAML config file") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise InputError(f"{path}: not valid YAML ({e})") from None
    data = apply_overrides(data, overrides)
    return from_dict(cls, data, source=str(path))


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of nested ``data`` with each ``a.b.c=value`` set (value parsed as YAML)."""
    data = _deep_copy(data)
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key:
            raise InputError(f"override '{override}' is not of the form key=value (e.g. solver.max_iter=1000)")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise InputError(f"override '{override}': cannot parse the value ({e})") from None
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InputError(f"override '{override}': '{part}' is not a section")
        node[parts[-1]] = value
    return data


def save_config(config: Any, path: str | os.PathLike) -> None:
    """Write a config as YAML (all values, defaults included), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(to_dict(config), sort_keys=False), encoding="utf-8")


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def _convert(hint: Any, value: Any, *, source: str, key: str) -> Any:
    """Check ``value`` against the type ``hint`` and convert lists to tuples where asked."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, source=source, prefix=f"{key}.")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(option, value, source=source, key=key)
            except InputError as e:
                errors.append(str(e))
        raise InputError(errors[0] if errors else f"{source}: '{key}' cannot be {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise InputError(f"{source}: '{key}' must be one of {list(args)}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise InputError(f"{source}: '{key}' must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise InputError(f"{source}: '{key}' must have {len(args)} items, got {value!r}")
            items = [_convert(a, v, source=source, key=key) for a, v in zip(args, value)]
        else:
            item_hint = args[0] if args else Any
            items = [_convert(item_hint, v, source=source, key=key) for v in value]
        return tuple(items) if origin is tuple else items
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise InputError(f"{source}: '{key}' must be {hint.__name__}, got {value!r}")
        return value
    raise TypeError(f"config type {hint!r} of '{key}' is not supported")  # a bug in a schema, not user input


# --------------------------------------------------------------------------------------
# The schema of an experiment
# --------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    arch: Literal["panoptic_deeplab", "sognet"] = "panoptic_deeplab"
    #: "shapes", "cityscapes", "coco", or a JSON file with the categories
    categories: str = "cityscapes"
    panoptic_deeplab: PanopticDeepLabConfig = field(default_factory=PanopticDeepLabConfig)
    sognet: SOGNetConfig = field(default_factory=SOGNetConfig)


@dataclass
class SplitConfig:
    """Where a split is: either ``folder`` (holding ``images/``, ``panoptic/``, ``panoptic.json``
    and optionally ``instances.json``, as ``panopticlab synth`` writes) or the explicit paths.
    Relative paths are relative to ``data.root``."""

    folder: str = ""
    image_folder: str = ""
    panoptic_json: str = ""
    panoptic_folder: str = ""
    instances_json: Optional[str] = None


@dataclass
class DataConfig:
    root: str = "."
    train: SplitConfig = field(default_factory=SplitConfig)
    test: SplitConfig = field(default_factory=SplitConfig)
    num_workers: int = 2


@dataclass
class InputConfig:
    crop_size: tuple[int, int] = (512, 1024)
    min_scale: float = 0.5
    max_scale: float = 2.0
    flip: bool = True


@dataclass
class SolverConfig:
    optimizer: Literal["adam", "sgd"] = "adam"
    base_lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    poly_power: float = 0.9
    warmup_iters: int = 1000
    warmup_factor: float = 0.001
    max_iter: int = 90_000
    #: images per iteration over all processes (detectron2's IMS_PER_BATCH)
    batch_size: int = 32
    #: "poly": warm-up then (1 - it / max_iter) ** poly_power; "step": warm-up then x gamma at each of ``steps``
    lr_scheduler: Literal["poly", "step"] = "poly"
    steps: tuple[int, ...] = ()
    gamma: float = 0.1
    #: clip the gradients' global L2 norm to this value; 0 = no clipping
    clip_grad_norm: float = 0.0
    #: mixed precision: "bf16" (CPU and GPU) or "fp16" (GPU, with a gradient scaler)
    amp: Literal["off", "bf16", "fp16"] = "off"
    channels_last: bool = False
    compile: bool = False
    #: write a resumable checkpoint every this many iterations (and at the end)
    checkpoint_period: int = 5000
    #: log losses, learning rate, speed and data-wait time every this many iterations
    log_period: int = 20
    #: stop cleanly (final weights and a checkpoint written) after this many minutes; 0 = no limit
    max_minutes: float = 0.0
    #: with a time budget: time the first 20 steps once and shorten max_iter so that the poly
    #: schedule ends when the budget does (a run bounded by minutes otherwise stops at a high rate)
    fit_schedule_to_budget: bool = False
    #: also write TensorBoard scalars (needs the ``tensorboard`` package); JSON lines are always written
    tensorboard: bool = True


@dataclass
class TestConfig:
    #: test-time augmentation: the scales to average over, and whether to add flipped images
    tta_scales: tuple[float, ...] = (1.0,)
    tta_flip: bool = False
    batch_size: int = 1
    #: evaluate on ``data.test`` every this many training iterations and at the end; 0 = never while training
    eval_period: int = 0
    #: also report instance AP of the thing classes (from the scored panoptic segments)
    compute_ap: bool = True
    #: Cityscapes instance AP (cityscapesscripts' evaluator, the "AP" of Cityscapes tables) against
    #: this ``gtFine/<split>`` folder, relative to ``data.root`` (e.g. ``gtFine/val``); "" = off.
    #: Reported as ``cityscapes_instance`` and as the summary's AP / AP50.
    cityscapes_instance_gt: str = ""


@dataclass
class Config:
    """A whole experiment. Defaults: detectron2's Panoptic-DeepLab R52-DSConv on Cityscapes."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    input: InputConfig = field(default_factory=InputConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    test: TestConfig = field(default_factory=TestConfig)
    output_dir: str = "outputs/run"
    seed: int = 0
    #: "auto" (cuda:LOCAL_RANK when a GPU is there, else cpu), "cpu", "cuda"...
    device: str = "auto"
