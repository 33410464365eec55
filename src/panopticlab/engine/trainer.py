"""The training loop, one for every model family.

The trainer knows a model only through its contract (``models/base.py``):

* ``model.data_transform()`` -> a picklable ``item -> item`` run in the data loader's workers,
  which adds the model's ``targets``; ``model.uses_instances`` says whether to read instances;
* ``model(batch)`` with ``batch`` a list of such items -> a dict of named, already weighted
  scalar losses; the trainer sums them;
* ``model.predict(images)``, ``model.categories`` and ``model.evaluators()`` for evaluation.

Around it: the optimizer (Adam or SGD), the warm-up + poly/step schedule, gradient clipping,
mixed precision, DDP under torchrun, periodic checkpoints and evaluation, metrics as JSON
lines and TensorBoard scalars, a progress bar, and a time budget that stops cleanly.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from panopticlab import distributed
from panopticlab.config import Config, check_section, save_config, to_dict
from panopticlab.data.build import build_dataset, build_test_loader, build_train_loader, check_categories
from panopticlab.engine.checkpointing import POINTER, last_checkpoint, load_checkpoint, save_checkpoint
from panopticlab.engine.inference import evaluate
from panopticlab.engine.metrics import MetricsWriter, format_record
from panopticlab.engine.schedule import TimeBudget, lr_factor, set_learning_rate
from panopticlab.errors import InputError
from panopticlab.models import build_model
from panopticlab.models.base import PanopticModel
from panopticlab.models.norm import convert_sync_batchnorm_if_distributed
from panopticlab.progress import ProgressFactory, no_progress, progress_bar
from panopticlab.weights import save_weights

logger = logging.getLogger(__name__)

FINAL_WEIGHTS = "model_final.safetensors"


def train(
    config: Config,
    *,
    resume: bool = False,
    overwrite: bool = False,
    max_minutes: float | None = None,
    progress: ProgressFactory = progress_bar,
    on_log: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train the model of ``config`` on ``data.train``; evaluate on ``data.test`` every ``test.eval_period``.

    Args:
        resume: continue from ``<output_dir>/last_checkpoint`` (start afresh when there is none).
        overwrite: start afresh even though ``output_dir`` holds a run.
        max_minutes: time budget of the run (default ``solver.max_minutes``; 0 = none): when it is
            spent, training stops after the current step and writes its checkpoint and final
            weights, as at ``max_iter``. With ``solver.schedule_by_time`` the learning rate decays
            with the budget spent and the budget, not ``max_iter``, ends the run. A resumed run
            keeps the budget of the run it resumes (saved in the checkpoint) and gets what was left.
        progress: the progress bar (:mod:`panopticlab.progress`; the default shows one on a
            terminal): iterations, or the seconds of the budget with ``solver.schedule_by_time``.
            Log lines go to the ``logging`` module.
        on_log: called on the main process with every record written to ``metrics.jsonl``.

    Writes to ``output_dir``: ``config.yaml``, ``metrics.jsonl``, ``tensorboard/``,
    checkpoints (see :mod:`panopticlab.engine.checkpointing`) and ``model_final.safetensors``.

    Returns:
        ``iteration`` reached, ``stopped_early`` (a time budget stopped an iteration schedule),
        ``weights`` (final weights), ``checkpoint``, ``last_log`` (the last training record),
        ``eval`` (the last evaluation summary, or None), ``seconds`` (of training in this call),
        ``time_budget`` (``{"seconds", "spent"}`` of a budgeted run, else None), ``images_per_s``
        and ``data_wait_share`` over this call.
    """
    process = distributed.setup(config.device)
    try:
        trainer = Trainer(config, process, resume=resume, overwrite=overwrite, on_log=on_log)
        budget = config.solver.max_minutes if max_minutes is None else max_minutes
        return trainer.run(max_minutes=budget, progress=progress)
    finally:
        distributed.teardown(process)


class Trainer:
    """The state of one training run on one process (see :func:`train`)."""

    def __init__(
        self,
        config: Config,
        process: distributed.Process,
        *,
        resume: bool = False,
        overwrite: bool = False,
        on_log: Callable[[dict[str, Any]], None] | None = None,
    ):
        self.config, self.process, self.on_log = config, process, on_log
        _check_solver(config, process.device)
        self.amp = resolve_amp(config.solver.amp, process.device)
        solver = config.solver
        self.output_dir = Path(config.output_dir)
        if (self.output_dir / POINTER).exists() and not (resume or overwrite):
            raise InputError(f"{self.output_dir}: holds a training run already (pass --resume to continue it, or --overwrite)")

        torch.manual_seed(config.seed)  # the same initial weights on every process
        self.model = build_model(config).to(process.device)
        if process.distributed and process.device.type == "cuda":  # SyncBatchNorm has no CPU kernels
            self.model = convert_sync_batchnorm_if_distributed(self.model)
        if solver.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(self.model, config)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == "fp16")
        self.start_iter = 0
        self.resumed_budget: dict[str, Any] | None = None
        checkpoint = last_checkpoint(self.output_dir) if resume else None
        if checkpoint is not None:
            self.start_iter, self.resumed_budget = load_checkpoint(checkpoint, self.model, self.optimizer, scaler=self.scaler)

        instances = self.model.uses_instances
        self.dataset = build_dataset(config, "train", instances=instances)
        check_categories(self.dataset, self.model.categories, where=f"data.train ({self.dataset.panoptic.json_file})")
        self.test_loader = None
        if config.test.eval_period > 0 and config.data.test.is_set:
            test_set = build_dataset(config, "test", instances=instances)
            check_categories(test_set, self.model.categories, where=f"data.test ({test_set.panoptic.json_file})")
            self.test_loader = build_test_loader(config, test_set, rank=process.rank, world_size=process.world_size)

        self.train_model: nn.Module = self.model
        if process.distributed:
            device_ids = [process.device.index] if process.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=device_ids)
        if solver.compile:
            self.train_model = torch.compile(self.train_model)

    # -- the loop ----------------------------------------------------------------------------

    def run(self, *, max_minutes: float = 0.0, progress: ProgressFactory = progress_bar) -> dict[str, Any]:
        config, process, solver = self.config, self.process, self.config.solver
        main = process.is_main
        budget = self._time_budget(max_minutes)
        by_time = budget is not None and solver.schedule_by_time
        if main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            save_config(config, self.output_dir / "config.yaml")
            logger.info("training %s; its full config is in %s", type(self.model).__name__, self.output_dir / "config.yaml")
            if solver.amp == "auto":
                logger.info("mixed precision (solver.amp: auto) on %s: %s", process.device, self.amp)
        writer = MetricsWriter(self.output_dir, start_iter=self.start_iter, tensorboard=solver.tensorboard) if main else None

        loader = build_train_loader(
            config,
            self.dataset,
            model_transform=self.model.data_transform(),
            rank=process.rank,
            world_size=process.world_size,
            start_iter=self.start_iter,
            pin_memory=process.device.type == "cuda",
        )
        batches = iter(loader)
        autocast = _autocast(self.amp, process.device)
        window = _Window()
        total_time = total_data = 0.0
        last_log: dict[str, Any] = {}
        last_eval = None
        checkpoint_path = None
        iteration = self.start_iter
        # A fresh run makes at least one step; a resumed one whose budget is spent makes none.
        resumed_spent = self.resumed_budget is not None and budget is not None and budget.left <= 0
        finished = (not by_time and iteration >= solver.max_iter) or resumed_spent
        # The bar counts iterations, or with a schedule by time the seconds of the budget.
        total, done = (budget.seconds, budget.spent_before) if by_time else (solver.max_iter, self.start_iter)
        started = time.monotonic()
        self.model.train()
        try:
            bar = progress if main else no_progress
            with bar("train", total, completed=done) as advance:
                while not finished:
                    t0 = time.perf_counter()
                    batch = next(batches)
                    data_time = time.perf_counter() - t0
                    position = self._fraction_spent(budget) if by_time else None
                    losses = self._step(batch, iteration, autocast, solver.base_lr * lr_factor(iteration, solver, progress=position))
                    iteration += 1
                    step_time = time.perf_counter() - t0
                    window.add(losses, step_time, data_time)
                    total_time += step_time
                    total_data += data_time

                    out_of_time = budget is not None and distributed.any_process(budget.left <= 0, process)
                    finished = out_of_time or (not by_time and iteration >= solver.max_iter)
                    status = None
                    if iteration % solver.log_period == 0 or finished:
                        last_log = window.record(iteration, self.optimizer, solver.batch_size, process)
                        if budget is not None:
                            last_log["budget_spent"] = min(1.0, budget.spent / budget.seconds)
                        status = f"loss {last_log['loss']:.4g}  {last_log['images_per_s']:.1f} img/s"
                        if main:
                            self._log(writer, last_log)
                            logger.info(format_record(last_log, None if by_time else solver.max_iter))
                    advance(step_time if by_time else 1, status=status)
                    if iteration % solver.checkpoint_period == 0 or finished:
                        checkpoint_path = self._checkpoint(iteration, budget)
                    if self.test_loader is not None and (iteration % config.test.eval_period == 0 or finished):
                        last_eval = self._evaluate(iteration, writer)
        finally:
            batches = loader = None  # stops the loader's workers, also when a traceback keeps this frame
            if writer is not None:
                writer.close()

        stopped_early = budget is not None and not by_time and iteration < solver.max_iter
        if main and stopped_early:
            logger.info("time budget of %.3g min spent: stopped at iteration %d", budget.seconds / 60, iteration)
        weights = self.output_dir / FINAL_WEIGHTS
        if main:
            save_weights(self.model, weights, metadata={"iteration": str(iteration)})
        distributed.barrier(process)
        steps = max(1, iteration - self.start_iter)
        return {
            "iteration": iteration,
            "stopped_early": stopped_early,
            "weights": weights,
            "checkpoint": checkpoint_path,
            "last_log": last_log,
            "eval": last_eval,
            "seconds": time.monotonic() - started,
            "time_budget": None if budget is None else budget.state(),
            "images_per_s": steps * solver.batch_size / total_time if total_time else 0.0,
            "data_wait_share": total_data / total_time if total_time else 0.0,
        }

    def _time_budget(self, max_minutes: float) -> TimeBudget | None:
        """The run's budget: the resumed checkpoint's (with what is left of it), else ``max_minutes``'."""
        if self.resumed_budget is not None:
            budget = TimeBudget.from_state(self.resumed_budget)
            if self.process.is_main:
                logger.info(
                    "resuming from iteration %d with %.3g of the run's %.3g min left",
                    self.start_iter, max(0.0, budget.left) / 60, budget.seconds / 60,
                )  # fmt: skip
            return budget
        if self.start_iter and self.process.is_main:
            logger.info("resuming from iteration %d", self.start_iter)
        return TimeBudget(60 * max_minutes) if max_minutes > 0 else None

    def _fraction_spent(self, budget: TimeBudget) -> float:
        """The fraction of the budget spent, the same on every process (their mean)."""
        spent = torch.tensor([budget.spent], dtype=torch.float64)
        return float(distributed.all_reduce_mean(spent, self.process)[0]) / budget.seconds

    def _step(
        self, batch: list[dict[str, Any]], iteration: int, autocast: Callable[[], Any], lr: float
    ) -> dict[str, torch.Tensor]:
        """One optimizer step on ``batch`` at learning rate ``lr``; returns the losses by name
        (float32 scalars on the CPU)."""
        solver = self.config.solver
        set_learning_rate(self.optimizer, lr)
        # Dropout & co. draw from a generator seeded by (seed, iteration, rank): resuming needs no RNG state.
        torch.manual_seed(int(np.random.SeedSequence([self.config.seed, iteration, self.process.rank]).generate_state(1)[0]))
        with autocast():
            losses = self.train_model(batch)
        if not losses:
            raise ValueError("the model returned no losses")
        total = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if solver.clip_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), solver.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        values = torch.stack([v.detach().float() for v in losses.values()]).cpu()  # one device sync per step
        if not torch.isfinite(values).all():
            named = ", ".join(f"{k}={v:.4g}" for k, v in zip(losses, values.tolist()))
            raise FloatingPointError(f"loss became infinite or NaN at iteration {iteration + 1}: {named}")
        return dict(zip(losses, values))

    # -- reporting ---------------------------------------------------------------------------

    def _log(self, writer: MetricsWriter, record: dict[str, Any]) -> None:
        writer.write(record)
        if self.on_log is not None:
            self.on_log(record)

    def _checkpoint(self, iteration: int, budget: TimeBudget | None) -> Path:
        path = None
        if self.process.is_main:
            path = save_checkpoint(
                self.output_dir,
                iteration,
                self.model,
                self.optimizer,
                config=to_dict(self.config),
                scaler=self.scaler,
                time_budget=None if budget is None else budget.state(),
            )
        distributed.barrier(self.process)
        return path

    def _evaluate(self, iteration: int, writer: MetricsWriter | None) -> dict[str, float]:
        results = evaluate(self.model, self.test_loader, self.config)
        self.model.train()
        summary = results["summary"]
        if self.process.is_main:
            self._log(writer, {"iteration": iteration, "eval": summary})
            logger.info("eval at %d: %s", iteration, "  ".join(f"{k} {v:.1f}" for k, v in summary.items()))
        return summary


class _Window:
    """Loss sums and times since the last log line."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.names: list[str] = []
        self.losses: torch.Tensor | None = None
        self.steps = 0
        self.time = self.data_time = 0.0

    def add(self, losses: dict[str, torch.Tensor], step_time: float, data_time: float) -> None:
        values = torch.stack(list(losses.values()))
        self.names = list(losses)
        self.losses = values if self.losses is None else self.losses + values
        self.steps += 1
        self.time += step_time
        self.data_time += data_time

    def record(self, iteration: int, optimizer: torch.optim.Optimizer, images_per_step: int, process) -> dict[str, Any]:
        """The window's means (losses averaged over processes too), then reset."""
        times = torch.tensor([self.time, self.data_time], dtype=torch.float64)
        losses = distributed.all_reduce_mean(self.losses / self.steps, process)
        times = distributed.all_reduce_mean(times, process)  # the data wait of the average process
        record = {
            "iteration": iteration,
            "loss": float(losses.sum()),
            "losses": dict(zip(self.names, losses.tolist())),
            "lr": optimizer.param_groups[0]["lr"],
            "images_per_s": self.steps * images_per_step / float(times[0]),
            "time_per_iter": float(times[0]) / self.steps,
            "data_wait_share": float(times[1] / times[0]),
        }
        self.reset()
        return record


def build_optimizer(model: PanopticModel, config: Config) -> torch.optim.Optimizer:
    """Adam (torch's betas and eps, detectron2's Panoptic-DeepLab choice) or SGD with momentum;
    one weight decay for every parameter (the recipe's is 0); the model's parameter groups
    (``PanopticModel.parameter_groups``: each with its ``lr_scale``)."""
    s = config.solver
    params = [group for group in model.parameter_groups() if group["params"]]
    if s.optimizer == "adam":
        return torch.optim.Adam(params, lr=s.base_lr, weight_decay=s.weight_decay)
    return torch.optim.SGD(params, lr=s.base_lr, momentum=s.momentum, weight_decay=s.weight_decay)


def resolve_amp(amp: str, device: torch.device) -> str:
    """``solver.amp`` with ``auto`` decided for ``device``: bf16 where it is computed natively, else off."""
    if amp != "auto":
        return amp
    return "bf16" if distributed.native_bf16(device) else "off"


def _autocast(amp: str, device: torch.device) -> Callable[[], Any]:
    if amp == "off":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def _check_solver(config: Config, device: torch.device) -> None:
    check_section(config.solver, "solver.")  # read from a file it was checked; made in Python perhaps not
    if config.solver.amp == "fp16" and device.type != "cuda":
        raise InputError("solver.amp=fp16 needs a GPU (its gradient scaler is CUDA's); use solver.amp=bf16 on a CPU")
