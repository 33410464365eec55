"""Resumable training checkpoints, without pickle, written so that a crash never tears one.

A checkpoint at iteration ``N`` (``N`` optimizer steps done) is three files in the output
folder::

    checkpoint_000000N.safetensors            the model's weights (loadable by load_model)
    checkpoint_000000N.optimizer.safetensors  the optimizer's state tensors
    checkpoint_000000N.json                   iteration, config, the optimizer state's
                                              non-tensor structure, the gradient scaler, the
                                              time budget (whole and spent) of a budgeted run

and ``last_checkpoint``, a one-line text file naming the newest one. Each file is written
to a temporary name and renamed into place, and ``last_checkpoint`` is written last, so it
always names a complete checkpoint.

Nothing else is needed to resume exactly: the learning rate is a function of the iteration
(or, for a run scheduled by time, of the budget spent, which the checkpoint keeps), the random
generators are re-seeded from ``(seed, iteration, rank)`` at every step, and the sampler's
position is ``iteration x batch size``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from panopticlab.weights import load_weights, read_weights, save_weights
from panopticlab.errors import InputError
from panopticlab.fileio import atomic_path, read_json, write_json

POINTER = "last_checkpoint"
FORMAT_VERSION = 1


def checkpoint_name(iteration: int) -> str:
    return f"checkpoint_{iteration:07d}"


def save_checkpoint(
    output_dir: str | os.PathLike,
    iteration: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    config: dict[str, Any],
    scaler: torch.amp.GradScaler | None = None,
    time_budget: dict[str, Any] | None = None,
) -> Path:
    """Write the checkpoint of ``iteration`` and point ``last_checkpoint`` at it; returns the weights path.

    ``time_budget``: the run's :meth:`~panopticlab.engine.schedule.TimeBudget.state`, if it has one.
    """
    output_dir = Path(output_dir)
    name = checkpoint_name(iteration)
    weights = output_dir / f"{name}.safetensors"
    save_weights(model, weights, metadata={"iteration": str(iteration)})
    tensors, structure = flatten_state(optimizer.state_dict())
    save_weights(tensors, output_dir / f"{name}.optimizer.safetensors")
    write_json(
        output_dir / f"{name}.json",
        {
            "format": FORMAT_VERSION,
            "iteration": iteration,
            "weights": weights.name,
            "optimizer_tensors": f"{name}.optimizer.safetensors",
            "optimizer": structure,
            "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
            "time_budget": time_budget,
            "config": config,
        },
        indent=1,
    )
    with atomic_path(output_dir / POINTER) as tmp:
        tmp.write_text(name + "\n", encoding="utf-8")
    return weights


def last_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The JSON file of the newest complete checkpoint in ``output_dir``, or None."""
    pointer = Path(output_dir) / POINTER
    if not pointer.is_file():
        return None
    return Path(output_dir) / f"{pointer.read_text(encoding='utf-8').strip()}.json"


def load_checkpoint(
    json_path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[int, dict[str, Any] | None]:
    """Restore model, optimizer (and scaler) from a checkpoint; returns its iteration and its time
    budget's state (None for a run without a budget)."""
    json_path = Path(json_path)
    meta = read_json(json_path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        raise InputError(f"{json_path}: not a panopticlab training checkpoint (format {FORMAT_VERSION})")
    load_weights(model, json_path.parent / meta["weights"])
    tensors, _ = read_weights(json_path.parent / meta["optimizer_tensors"])
    try:
        optimizer.load_state_dict(unflatten_state(meta["optimizer"], tensors))
    except (ValueError, KeyError) as e:
        raise InputError(f"{json_path}: the optimizer state does not fit this model/optimizer ({e})") from None
    if scaler is not None and scaler.is_enabled() and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    return int(meta["iteration"]), meta.get("time_budget")


# --- nested state <-> (flat tensors, JSON structure) ---

_TENSOR, _TUPLE, _ITEMS = "__tensor__", "__tuple__", "__items__"


def flatten_state(state: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """Split a nested state (dicts, lists, tuples, tensors, numbers, strings, None) into
    a flat ``{key: tensor}`` dict and a JSON-able structure referring to those keys.

    Dicts whose keys are not all strings (an optimizer's state is keyed by parameter
    index) and tuples are tagged so that :func:`unflatten_state` rebuilds them exactly.
    """
    tensors: dict[str, torch.Tensor] = {}

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, torch.Tensor):
            tensors[path] = value
            return {_TENSOR: path}
        if isinstance(value, dict):
            if all(isinstance(k, str) for k in value):
                return {k: walk(v, f"{path}.{k}") for k, v in value.items()}
            return {_ITEMS: [[k, walk(v, f"{path}.{k}")] for k, v in value.items()]}
        if isinstance(value, tuple):
            return {_TUPLE: [walk(v, f"{path}.{i}") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(value)]
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise TypeError(f"cannot store {type(value).__name__} at '{path}' in a checkpoint")

    return tensors, walk(state, "state")


def unflatten_state(structure: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of :func:`flatten_state`."""
    if isinstance(structure, list):
        return [unflatten_state(v, tensors) for v in structure]
    if isinstance(structure, dict):
        if _TENSOR in structure:
            return tensors[structure[_TENSOR]]
        if _TUPLE in structure:
            return tuple(unflatten_state(v, tensors) for v in structure[_TUPLE])
        if _ITEMS in structure:
            return {k: unflatten_state(v, tensors) for k, v in structure[_ITEMS]}
        return {k: unflatten_state(v, tensors) for k, v in structure.items()}
    return structure
