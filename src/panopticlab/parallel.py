"""Running a function over many tasks in worker processes, cleanly."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def usable_cpus() -> int:
    """CPUs this process may run on (fewer than ``os.cpu_count()`` in a container or under taskset)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def imap_processes(func: Callable[[T], R], tasks: Iterable[T], workers: int, chunksize: int = 1) -> Iterator[R]:
    """``map(func, tasks)`` in order, over ``workers`` processes (in this process when ``workers <= 1``).

    Processes are started with "spawn": the same on every OS, and safe when the caller runs
    threads (torch does), where forking can deadlock. The pool is closed and joined on success
    and terminated on any error, so no worker outlives the call.
    """
    if workers <= 1:
        yield from map(func, tasks)
        return
    pool = multiprocessing.get_context("spawn").Pool(workers)
    try:
        yield from pool.imap(func, tasks, chunksize=chunksize)
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
