"""Progress of long loops: one protocol, rich's live bar on a terminal, silence elsewhere.

A *progress factory* is ``progress(description, total) -> context manager yielding advance``,
and ``advance(n=1)`` marks ``n`` more of ``total`` done. Long-running library functions
(dataset generation and preparation, prediction of files) take a factory and call nothing
else; the command line hands them :func:`progress_bar`, tests an interrupting one, and the
default :func:`no_progress` shows nothing.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, ContextManager, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

#: ``advance(n=1)``; the trainer's bar also takes ``status=`` (a short text shown after the bar)
Advance = Callable[..., None]
#: ``progress(description, total)`` -> a context manager yielding :data:`Advance`
ProgressFactory = Callable[[str, int], ContextManager[Advance]]


@contextmanager
def no_progress(description: str, total: int, *, completed: int = 0) -> Iterator[Advance]:
    """The factory that shows nothing."""
    yield lambda n=1, status=None: None


@contextmanager
def progress_bar(description: str, total: int, *, completed: int = 0) -> Iterator[Advance]:
    """Yield ``advance(n=1, status=None)``; shows a bar with count, elapsed time, ETA and the
    latest status on a terminal (stderr), nothing elsewhere. Log records printed while it runs
    appear above it."""
    console = Console(stderr=True)
    if not console.is_terminal:
        yield lambda n=1, status=None: None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total, completed=completed, status="")

        def advance(n: int = 1, status: str | None = None) -> None:
            progress.advance(task, n)
            if status is not None:
                progress.update(task, status=status)

        yield advance
