"""Learning-rate schedules as plain functions of the iteration (no scheduler state to save).

detectron2's ``WarmupPolyLR`` (Panoptic-DeepLab's schedule) and ``WarmupMultiStepLR``:
the rate of iteration ``it`` (0-based, the ``it``-th optimizer step) is
``base_lr x warmup(it) x decay(it)`` with

* ``warmup(it) = f + (1 - f) x it / warmup_iters`` while ``it < warmup_iters`` (linear from
  ``f = warmup_factor``), then 1;
* poly: ``decay(it) = (1 - it / max_iter) ** poly_power``;
* step: ``decay(it) = gamma ** (number of milestones in steps <= it)``.
"""

from __future__ import annotations

import bisect

import torch

from panopticlab.config import SolverConfig


def lr_factor(iteration: int, solver: SolverConfig) -> float:
    """The multiplier of ``solver.base_lr`` at ``iteration``."""
    warmup = 1.0
    if iteration < solver.warmup_iters:
        alpha = iteration / solver.warmup_iters
        warmup = solver.warmup_factor * (1 - alpha) + alpha
    if solver.lr_scheduler == "poly":
        decay = (1 - iteration / solver.max_iter) ** solver.poly_power
    else:
        decay = solver.gamma ** bisect.bisect_right(sorted(solver.steps), iteration)
    return warmup * decay


def fit_max_iter(iteration: int, seconds_per_step: float, seconds_left: float, max_iter: int) -> int:
    """The last iteration of a run that must end within ``seconds_left`` at ``seconds_per_step``
    (with 3% to spare), never beyond ``max_iter`` and at least one more step."""
    remaining_steps = int(0.97 * seconds_left / seconds_per_step)
    return max(iteration + 1, min(max_iter, iteration + remaining_steps))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
