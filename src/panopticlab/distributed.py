"""Everything torch.distributed: joining a run's processes, and sharing results between them.

``torchrun --nproc-per-node N -m panopticlab train ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and the rendezvous variables; :func:`setup` then joins the process group
(NCCL on GPUs, gloo on CPUs). Multi-node runs use torchrun's ``--nnodes`` / ``--rdzv-*``
options and need nothing else here. A process group created by the caller is used as is.

The evaluators gather through :func:`all_gather` and :func:`broadcast_from_main`, which work
with or without a process group (one process: the object itself), so no caller tests for one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist

from panopticlab.errors import InputError


@dataclass(frozen=True)
class Process:
    rank: int
    world_size: int
    device: torch.device
    owns_group: bool  # True when setup() created the process group (and teardown() ends it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` -> ``cuda:<local_rank>`` when a GPU is there, else ``cpu``; ``"cuda"`` gets the local rank too."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"device: unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device: {name!r} asked for but no GPU is available")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
    return device


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively: a GPU that supports it, or a CPU with
    AVX512-BF16 or AMX (elsewhere PyTorch's CPU bf16 convolutions fall back to a slow kernel)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return any(getattr(torch.cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return False


def setup(device_name: str) -> Process:
    """Join torchrun's process group when launched by it (or use an existing one); pick the device."""
    owns = False
    if dist.is_available() and not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        gpu = torch.cuda.is_available() and device_name != "cpu"
        dist.init_process_group(backend="nccl" if gpu else "gloo")
        owns = True
    initialized = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if initialized else 0
    world_size = dist.get_world_size() if initialized else 1
    device = resolve_device(device_name, int(os.environ.get("LOCAL_RANK", rank)))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return Process(rank, world_size, device, owns)


def teardown(process: Process) -> None:
    if process.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(process: Process) -> None:
    if process.distributed:
        dist.barrier()


def all_reduce_mean(values: torch.Tensor, process: Process) -> torch.Tensor:
    """The mean over processes of a float tensor (a copy; communicated on the process's device)."""
    if not process.distributed:
        return values.clone()
    values = values.to(process.device, copy=True)
    dist.all_reduce(values)
    return values.cpu() / process.world_size


def any_process(flag: bool, process: Process) -> bool:
    """True on every process when ``flag`` is true on any (so all stop together)."""
    if not process.distributed:
        return flag
    value = torch.tensor([float(flag)], device=process.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def _group_size() -> int:
    """The number of processes of the current group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """Rank 0 of the current group, or the only process."""
    return _group_size() == 1 or dist.get_rank() == 0


def all_gather(obj: Any) -> list[Any]:
    """Every process's ``obj`` (picklable), in rank order, on every process: ``[obj]`` without a group."""
    if _group_size() == 1:
        return [obj]
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, obj)
    return parts


def broadcast_from_main(compute: Callable[[], Any]) -> Any:
    """``compute()`` run on rank 0 only, its (picklable) result handed to every process."""
    if _group_size() == 1:
        return compute()
    result: list[Any] = [compute() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(result, src=0)
    return result[0]
