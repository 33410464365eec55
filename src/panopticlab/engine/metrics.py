"""Where training metrics go: JSON lines (always) and TensorBoard scalars (when installed).

Only the main process creates these; the others write nothing.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

from panopticlab.evaluation.report import to_jsonable
from panopticlab.fileio import atomic_path


class MetricsWriter:
    """Appends one JSON object per line to ``metrics.jsonl`` and mirrors numbers to TensorBoard.

    Each record has an ``iteration``. On resuming from iteration ``N``, records after ``N``
    (written by the interrupted run after its last checkpoint) are dropped first, from the
    JSON lines and (through ``purge_step``) from TensorBoard.
    """

    def __init__(self, output_dir: str | os.PathLike, *, start_iter: int = 0, tensorboard: bool = True):
        self.path = Path(output_dir) / "metrics.jsonl"
        _truncate_after(self.path, start_iter)
        self._file = open(self.path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                warnings.warn("TensorBoard scalars skipped: `pip install tensorboard` to have them", stacklevel=2)
            else:
                self._tb = SummaryWriter(str(Path(output_dir) / "tensorboard"), purge_step=start_iter or None)

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(to_jsonable(record)) + "\n")  # NaN (e.g. no stuff class seen) as null
        self._file.flush()
        if self._tb is not None:
            for key, value in _flatten(record).items():
                if key != "iteration" and isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(key, value, record["iteration"])

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        elif not isinstance(value, bool):
            flat[f"{prefix}{key}"] = value
    return flat


def _truncate_after(path: Path, iteration: int) -> None:
    """Keep the records of ``path`` up to ``iteration`` (none when starting afresh)."""
    if not path.is_file():
        return
    kept = []
    if iteration > 0:
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("iteration", 0) <= iteration:
                    kept.append(line + "\n")
            except json.JSONDecodeError:  # a line torn by a crash
                pass
    with atomic_path(path) as tmp:
        tmp.write_text("".join(kept), encoding="utf-8")


def format_record(record: dict[str, Any], max_iter: int | None) -> str:
    """One log line: iteration (of ``max_iter``, or the share of the time budget spent), total and
    per-loss values, learning rate, speed, data-wait share."""
    losses = "  ".join(f"{k.removeprefix('loss_')} {v:.4g}" for k, v in record["losses"].items())
    position = f"iter {record['iteration']}/{max_iter}"
    if max_iter is None:
        position = f"iter {record['iteration']} ({100 * record['budget_spent']:.0f} % of the budget)"
    return (
        f"{position}  loss {record['loss']:.4g} ({losses})  lr {record['lr']:.3g}  "
        f"{record['images_per_s']:.1f} img/s  data {100 * record['data_wait_share']:.0f}%"
    )
