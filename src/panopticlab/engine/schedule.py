"""Learning-rate schedules as plain functions of the schedule's position (no scheduler state).

detectron2's ``WarmupPolyLR`` (Panoptic-DeepLab's schedule) and ``WarmupMultiStepLR``:
the rate of iteration ``it`` (0-based, the ``it``-th optimizer step) is
``base_lr x warmup(it) x decay`` with

* ``warmup(it) = f + (1 - f) x it / warmup_iters`` while ``it < warmup_iters`` (linear from
  ``f = warmup_factor``), then 1;
* poly: ``decay = (1 - p) ** poly_power`` with ``p = it / max_iter``, or, for a run scheduled by
  its time budget (``solver.schedule_by_time``), ``p`` = the fraction of the budget spent;
* step: ``decay = gamma ** (number of milestones in steps <= it)``.

:class:`TimeBudget` is a run's budget, counted over every call that trains it (a resumed run
continues with what was left); its state goes into each checkpoint.
"""

from __future__ import annotations

import bisect
import time
from typing import Any

import torch

from panopticlab.config import SolverConfig


def lr_factor(iteration: int, solver: SolverConfig, *, progress: float | None = None) -> float:
    """The multiplier of ``solver.base_lr`` at ``iteration``.

    ``progress``: the poly decay's position in [0, 1] (the fraction of a time budget spent);
    default ``iteration / max_iter``.
    """
    warmup = 1.0
    if iteration < solver.warmup_iters:
        alpha = iteration / solver.warmup_iters
        warmup = solver.warmup_factor * (1 - alpha) + alpha
    if solver.lr_scheduler == "poly":
        position = iteration / solver.max_iter if progress is None else progress
        decay = (1 - min(max(position, 0.0), 1.0)) ** solver.poly_power
    else:
        decay = solver.gamma ** bisect.bisect_right(sorted(solver.steps), iteration)
    return warmup * decay


class TimeBudget:
    """The wall-clock budget of a training run, spent over one call or several (resume).

    Args:
        seconds: the whole budget.
        spent_before: seconds spent on the run by earlier calls (from the checkpoint resumed).
    """

    def __init__(self, seconds: float, spent_before: float = 0.0):
        if seconds <= 0:
            raise ValueError(f"a time budget must be positive, got {seconds} s")
        self.seconds = float(seconds)
        self.spent_before = float(spent_before)
        self._started = time.monotonic()

    @property
    def spent(self) -> float:
        """Seconds spent so far, earlier calls included."""
        return self.spent_before + time.monotonic() - self._started

    @property
    def left(self) -> float:
        return self.seconds - self.spent

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps, to resume with the budget that was left."""
        return {"seconds": self.seconds, "spent": self.spent}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "TimeBudget":
        return cls(state["seconds"], state["spent"])


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every group at ``lr`` times its ``lr_scale`` (1 where it has none)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
