"""Weight files: safetensors for our own, and safe readers of the state dicts others publish.

Loading never executes code from a file: safetensors holds raw tensors only, ``.pth`` files go
through ``torch.load(weights_only=True)``, and detectron2's ``.pkl`` files through a restricted
unpickler that builds numpy arrays and refuses every other global.

Every mismatch between a file and a module (missing keys, unexpected keys, shapes) raises
:class:`~panopticlab.errors.InputError` naming the file and the keys. Weights load into the
module named by the caller (a model, or one of its parts with ``prefix``); the key rules of
other projects' checkpoints live with the models they fit (``models/backbone_weights.py``,
``models/panoptic_deeplab/detectron2.py``).
"""

from __future__ import annotations

import codecs
import collections
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

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


def load_weights(module: nn.Module, path: str | os.PathLike, *, strict: bool = True, prefix: str = "") -> LoadReport:
    """Load a ``.safetensors`` file saved by :func:`save_weights` into ``module``.

    Args:
        module: what the file's keys name (a whole model, for the files panopticlab writes).
        strict: missing or unexpected keys raise; otherwise they are reported. A shape
            mismatch always raises.
        prefix: load only the file's keys that start with ``prefix``, without it: e.g.
            ``load_weights(model.network, path, prefix="network.")`` for the network of a
            Panoptic-DeepLab model's file.
    """
    state, _ = read_weights(path)
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise InputError(f"{path}: no keys start with {prefix!r}")
    return load_checked(module, state, str(path), allow_missing=not strict, allow_unexpected=not strict)


def check_fits(
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
        problems.append(listing("shape mismatches", mismatched))
    if missing and not allow_missing:
        problems.append(listing("missing keys", missing))
    if unexpected and not allow_unexpected:
        problems.append(listing("unexpected keys", unexpected))
    if problems:
        raise InputError(f"{source}: does not fit the model: " + "; ".join(problems))
    return missing, unexpected


def load_checked(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str,
    *,
    allow_missing: bool = False,
    allow_unexpected: bool = False,
) -> LoadReport:
    """:func:`check_fits`, then load the matching tensors into ``model``."""
    expected = model.state_dict()
    missing, unexpected = check_fits(
        expected, state, source, allow_missing=allow_missing, allow_unexpected=allow_unexpected
    )
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    return LoadReport(source, len(state) - len(unexpected), ignored=unexpected, missing=missing)


def listing(what: str, keys: list[str]) -> str:
    """``"3 missing keys (a, b, c)"``, at most ten keys named."""
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
    try:
        from numpy._core.numeric import _frombuffer
    except ImportError:  # numpy < 2
        from numpy.core.numeric import _frombuffer  # type: ignore[no-redef]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(module, "_frombuffer")] = _frombuffer  # numpy arrays under pickle protocol 5
    return allowed


#: array kinds a weights file may hold: bool, signed and unsigned integers, floats
_NUMERIC_KINDS = "biuf"
#: what a top-level extra (``__author__``...) may be kept as; anything else is described, not kept
_PLAIN_EXTRAS = (str, int, float, bool, type(None))


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

    Only numeric arrays (bool, integer, float) under string keys are accepted; extras that are not
    plain scalars are replaced by a description (``<list>``). Anything else, a truncated file, a
    pickle that refers to out-of-band buffers (protocol 5 with ``buffer_callback``) or one nested
    too deeply, is an :class:`InputError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        with open(path, "rb") as f:
            data = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except pickle.UnpicklingError as e:
        if "out-of-band" in str(e):
            raise InputError(f"{path}: the pickle keeps its arrays in out-of-band buffers (protocol 5), "
                             "which a file cannot carry; save it with the buffers in band") from None  # fmt: skip
        raise InputError(f"{path}: {e}") from None
    except RecursionError:
        raise InputError(f"{path}: the pickle is nested too deeply to be a weights file") from None
    except Exception as e:  # truncated or not a pickle at all
        raise InputError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None
    if type(data) not in (dict, collections.OrderedDict):
        raise InputError(f"{path}: expected a pickled dict, got {type(data).__name__}")
    model = data.get("model", data)
    extras = {}
    if "model" in data:
        for k, v in data.items():
            if k != "model":
                extras[str(k)] = v if type(v) in _PLAIN_EXTRAS else f"<{type(v).__name__}>"
    if type(model) not in (dict, collections.OrderedDict):
        raise InputError(f"{path}: 'model' is a {type(model).__name__}, expected a dict of arrays")
    arrays = {}
    for key, value in model.items():
        if type(key) is not str:
            raise InputError(f"{path}: a key of 'model' is a {type(key).__name__} ({key!r:.40}), expected a string")
        if type(value) is not np.ndarray and not isinstance(value, np.generic):
            raise InputError(f"{path}: entry {key!r} is a {type(value).__name__}, expected a numpy array")
        array = np.asarray(value)
        if array.dtype.kind not in _NUMERIC_KINDS or array.dtype.fields is not None:
            raise InputError(f"{path}: entry {key!r} has dtype {array.dtype}, expected numbers (bool, int or float)")
        arrays[key.removeprefix("module.")] = array
    return arrays, extras


def array_to_tensor(array: np.ndarray) -> torch.Tensor:
    """A CPU tensor sharing the array's memory."""
    # np.require keeps 0-d arrays 0-d (np.ascontiguousarray would make them 1-d)
    return torch.from_numpy(np.require(array, requirements=["C"]))


# ---------------------------------------------------------------------------------------------
# any state dict file


def read_state_dict(path: str | os.PathLike) -> StateDict:
    """Read a state dict from ``.safetensors``, ``.pkl`` (detectron2, restricted unpickler) or any
    other ``torch.save`` file (``torch.load(weights_only=True)``; a ``{"state_dict": ...}`` or
    ``{"model": ...}`` wrapper is unwrapped)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_weights(path)[0]
    if path.suffix == ".pkl":
        return {k: array_to_tensor(v) for k, v in read_detectron2_pickle(path)[0].items()}
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
