"""How the library's log records are shown: the command line decides, the library only logs.

Every module logs to ``logging.getLogger(__name__)`` (children of the ``panopticlab`` logger)
and prints nothing. :func:`show_logs` is what ``panopticlab`` commands wrap themselves in: for
the length of a command, records of ``level`` and above go to stderr, through rich's handler on
a terminal (they then appear above a live progress bar) and as plain lines elsewhere. A program
using the library configures ``logging`` as it likes instead.
"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.logging import RichHandler


class _StderrHandler(logging.StreamHandler):
    """A stream handler on whatever ``sys.stderr`` is at each record (test harnesses swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):  # noqa: D102
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


@contextmanager
def show_logs(level: int = logging.INFO) -> Iterator[None]:
    """Show the ``panopticlab`` logger's records of ``level`` and above on stderr inside the block."""
    logger = logging.getLogger("panopticlab")
    console = Console(stderr=True)
    if console.is_terminal:
        handler: logging.Handler = RichHandler(console=console, show_path=False, log_time_format="[%X]")
    else:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    handler.setLevel(level)
    previous_level, previous_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(min(level, previous_level) if previous_level else level)
    logger.propagate = False  # shown once, here, not again by a root handler
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
        logger.propagate = previous_propagate
