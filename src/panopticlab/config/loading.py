"""The config machinery: nested dataclasses, read from YAML, changed by ``key=value`` overrides.

A config file holds only the values that differ from the dataclass defaults::

    model:
      num_classes: 19
    solver:
      base_lr: 0.001

and on the command line ``solver.max_iter=90000 input.crop_size=[512,1024]`` changes single
values (each value is parsed as YAML, so numbers, lists and booleans need no quoting).
Every key is checked against the dataclass: an unknown key or a value of the wrong type
raises :class:`~panopticlab.errors.InputError` naming the file and the key.

A section that subclasses :class:`Section` also states the values that cannot work together
(:meth:`Section.problems`); reading a file reports the first one as an InputError naming the
file and the full key, e.g. ``exp.yaml: 'model.sognet.anchor_sizes' needs 5 positive sizes, one
per level P2..P6, got [8, 16]``. The schema itself is in :mod:`panopticlab.config.experiment`.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Sequence, TypeVar

import yaml

from panopticlab.errors import InputError
from panopticlab.fileio import atomic_path

T = TypeVar("T")


class Section:
    """Base of the schema's dataclasses: the checks of values that are well-typed but cannot work,
    and where keys that left the section went."""

    #: a former key (``"key"``) or a former value of a key (``"key=value"``) -> where it went
    #: (e.g. ``"model.addons.bilateral.iterations"``): reading it is an error that says so
    moved: ClassVar[dict[str, str]] = {}

    def problems(self) -> list[tuple[str, str]]:
        """``(key, what is wrong)`` for every value of this section (not of its subsections) that
        cannot work, e.g. ``("max_iter", "must be at least 1")``; empty when all is well."""
        return []


def check_section(section: Section, where: str, *, source: str = "<config>") -> None:
    """Raise InputError for the first of ``section.problems()``, naming ``source`` and ``where.key``.

    :func:`from_dict` calls it for every section it reads; a builder handed a section made in
    Python calls it too.
    """
    for key, problem in section.problems():
        raise InputError(f"{source}: '{where}{key}' {problem}, got {getattr(section, key)!r}")


def from_dict(cls: type[T], data: dict[str, Any], *, source: str = "<dict>", prefix: str = "") -> T:
    """Build dataclass ``cls`` from a (partial) nested dict, checking keys and types."""
    if not isinstance(data, dict):
        raise InputError(f"{source}: '{prefix.rstrip('.') or '<top>'}' must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    moved = getattr(cls, "moved", {})
    for name, value in data.items():
        if name in moved:
            raise InputError(f"{source}: '{prefix}{name}' has moved to {moved[name]}")
        if isinstance(value, (str, int, float, bool)) and f"{name}={value}" in moved:
            raise InputError(f"{source}: '{prefix}{name}: {value}' has moved to {moved[f'{name}={value}']}")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise InputError(f"{source}: unknown key '{prefix}{unknown[0]}' (known here: {known})")
    values = {}
    for name, value in data.items():
        values[name] = _convert(hints[name], value, source=source, key=f"{prefix}{name}")
    config = cls(**values)
    if isinstance(config, Section):
        check_section(config, prefix, source=source)
    return config


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
            if node.get(part) is None:  # absent, or an optional section left out (null): a key of it sets it
                node[part] = {}
            node = node[part]
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
