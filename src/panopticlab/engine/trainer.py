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
import dataclasses
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
from panopticlab.engine.schedule import fit_max_iter, lr_factor, set_learning_rate
from panopticlab.errors import InputError
from panopticlab.models import build_model
from panopticlab.models.norm import convert_sync_batchnorm_if_distributed
from panopticlab.progress import no_progress, progress_bar
from panopticlab.weights import save_weights

logger = logging.getLogger(__name__)

FINAL_WEIGHTS = "model_final.safetensors"
#: steps timed before the schedule is fitted to a time budget
FIT_STEPS = 20


def train(
    config: Config,
    *,
    resume: bool = False,
    overwrite: bool = False,
    max_minutes: float | None = None,
    progress: bool = True,
    on_log: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train the model of ``config`` on ``data.train``; evaluate on ``data.test`` every ``test.eval_period``.

    Args:
        resume: continue from ``<output_dir>/last_checkpoint`` (start afresh when there is none).
        overwrite: start afresh even though ``output_dir`` holds a run.
        max_minutes: time budget of this call (default ``solver.max_minutes``; 0 = none):
            when it is spent, training stops after the current step and writes its checkpoint
            and final weights, as at ``max_iter``.
        progress: show a progress bar on a terminal (log lines go to the ``logging`` module).
        on_log: called on the main process with every record written to ``metrics.jsonl``.

    Writes to ``output_dir``: ``config.yaml``, ``metrics.jsonl``, ``tensorboard/``,
    checkpoints (see :mod:`panopticlab.engine.checkpointing`) and ``model_final.safetensors``.

    Returns:
        ``iteration`` reached, ``stopped_early`` (time budget), ``weights`` (final weights),
        ``checkpoint``, ``last_log`` (the last training record), ``eval`` (the last
        evaluation summary, or None), ``images_per_s`` and ``data_wait_share`` over this call.
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
        solver = config.solver
        _check_solver(config, process.device)
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
        self.scaler = torch.amp.GradScaler("cuda", enabled=solver.amp == "fp16")
        self.start_iter = 0
        checkpoint = last_checkpoint(self.output_dir) if resume else None
        if checkpoint is not None:
            self.start_iter = load_checkpoint(checkpoint, self.model, self.optimizer, scaler=self.scaler)

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

    def run(self, *, max_minutes: float = 0.0, progress: bool = True) -> dict[str, Any]:
        config, process, solver = self.config, self.process, self.config.solver
        main = process.is_main
        if main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            save_config(config, self.output_dir / "config.yaml")
            logger.info("training %s; its full config is in %s", type(self.model).__name__, self.output_dir / "config.yaml")
            if self.start_iter:
                logger.info("resuming from iteration %d", self.start_iter)
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
        images_per_step = solver.batch_size
        autocast = _autocast(solver.amp, process.device)
        deadline = time.monotonic() + 60 * max_minutes if max_minutes > 0 else None
        window = _Window()
        total_time = total_data = 0.0
        last_log: dict[str, Any] = {}
        last_eval = None
        checkpoint_path = None
        stopped_early = False
        iteration = self.start_iter
        max_iter = solver.max_iter  # shortened once when the schedule is fitted to a time budget
        self.model.train()
        try:
            bar = progress_bar if progress and main else no_progress
            with bar("train", solver.max_iter, completed=self.start_iter) as advance:
                while iteration < max_iter:
                    t0 = time.perf_counter()
                    batch = next(batches)
                    data_time = time.perf_counter() - t0
                    losses = self._step(batch, iteration, autocast, max_iter)
                    iteration += 1
                    step_time = time.perf_counter() - t0
                    window.add(losses, step_time, data_time)
                    total_time += step_time
                    total_data += data_time
                    if deadline is not None and solver.fit_schedule_to_budget and iteration - self.start_iter == FIT_STEPS:
                        max_iter = self._fitted_max_iter(iteration, total_time / FIT_STEPS, deadline)
                        if main:
                            logger.info("schedule fitted to the time budget: max_iter %d", max_iter)

                    out_of_time = deadline is not None and distributed.any_process(time.monotonic() > deadline, process)
                    finished = iteration == max_iter or out_of_time
                    status = None
                    if iteration % solver.log_period == 0 or finished:
                        last_log = window.record(iteration, self.optimizer, images_per_step, process)
                        status = f"loss {last_log['loss']:.4g}  {last_log['images_per_s']:.1f} img/s"
                        if main:
                            self._log(writer, last_log)
                            logger.info(format_record(last_log, solver.max_iter))
                    advance(1, status=status)
                    if iteration % solver.checkpoint_period == 0 or finished:
                        checkpoint_path = self._checkpoint(iteration)
                    if self.test_loader is not None and (iteration % config.test.eval_period == 0 or finished):
                        last_eval = self._evaluate(iteration, writer)
                    if out_of_time and iteration < max_iter:
                        stopped_early = True
                        if main:
                            logger.info("time budget of %g min spent: stopped at iteration %d", max_minutes, iteration)
                        break
        finally:
            batches = loader = None  # stops the loader's workers, also when a traceback keeps this frame
            if writer is not None:
                writer.close()

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
            "images_per_s": steps * images_per_step / total_time if total_time else 0.0,
            "data_wait_share": total_data / total_time if total_time else 0.0,
        }

    def _fitted_max_iter(self, iteration: int, seconds_per_step: float, deadline: float) -> int:
        """The last iteration that fits before ``deadline`` at the measured speed (the same on every process)."""
        seconds_per_step = float(distributed.all_reduce_mean(torch.tensor([seconds_per_step]), self.process)[0])
        return fit_max_iter(iteration, seconds_per_step, deadline - time.monotonic(), self.config.solver.max_iter)

    def _step(
        self, batch: list[dict[str, Any]], iteration: int, autocast: Callable[[], Any], max_iter: int
    ) -> dict[str, torch.Tensor]:
        """One optimizer step on ``batch``; returns the losses by name (float32 scalars on the CPU)."""
        solver = self.config.solver
        schedule = solver if max_iter == solver.max_iter else dataclasses.replace(solver, max_iter=max_iter)
        set_learning_rate(self.optimizer, solver.base_lr * lr_factor(iteration, schedule))
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

    def _checkpoint(self, iteration: int) -> Path:
        path = None
        if self.process.is_main:
            path = save_checkpoint(
                self.output_dir, iteration, self.model, self.optimizer, config=to_dict(self.config), scaler=self.scaler
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


def build_optimizer(model: nn.Module, config: Config) -> torch.optim.Optimizer:
    """Adam (torch's betas and eps, detectron2's Panoptic-DeepLab choice) or SGD with momentum;
    one weight decay for every parameter (the recipe's is 0)."""
    s = config.solver
    params = [p for p in model.parameters() if p.requires_grad]
    if s.optimizer == "adam":
        return torch.optim.Adam(params, lr=s.base_lr, weight_decay=s.weight_decay)
    return torch.optim.SGD(params, lr=s.base_lr, momentum=s.momentum, weight_decay=s.weight_decay)


def _autocast(amp: str, device: torch.device) -> Callable[[], Any]:
    if amp == "off":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def _check_solver(config: Config, device: torch.device) -> None:
    check_section(config.solver, "solver.")  # read from a file it was checked; made in Python perhaps not
    if config.solver.amp == "fp16" and device.type != "cuda":
        raise InputError("solver.amp=fp16 needs a GPU (its gradient scaler is CUDA's); use solver.amp=bf16 on a CPU")
