"""Long jobs over many files that survive an interruption: work in chunks, each chunk's results kept.

:func:`run_resumable` is what ``panopticlab prepare coco`` and ``prepare cityscapes`` build on:
chunks of jobs run in worker processes, each finished chunk's results are written to a state
folder, and a rerun after an interruption reads those back instead of recomputing them (so it
redoes at most the chunks that were in flight). :func:`write_final_json` and
:func:`remove_stale_partials` are the other two steps of such a job: the final file written
once (or found already there), and the temporary files a killed writer left removed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from panopticlab.errors import InputError
from panopticlab.fileio import write_json
from panopticlab.parallel import imap_processes, usable_cpus

T = TypeVar("T")
R = TypeVar("R")


def run_resumable(
    jobs: Sequence[T],
    *,
    key: Callable[[T], str],
    work: Callable[[list[T]], list[R]],
    state_dir: Path,
    chunk_size: int,
    workers: int | None,
    advance: Callable[[int], None] | None = None,
    restart: bool = False,
) -> list[R]:
    """``work`` over ``jobs`` in chunks, in worker processes, remembering finished chunks.

    Chunk ``k`` (jobs ``k * chunk_size ...``) is done when ``state_dir/chunk_<k>.json`` holds
    its jobs' keys and results; done chunks are read back instead of recomputed. Results pass
    through JSON either way, so a resumed run returns exactly what a clean one does.

    Args:
        jobs: the work items, picklable.
        key: a stable name per job (e.g. the image id), to recognise a chunk's saved results.
        work: picklable ``chunk -> one JSON-able result per job``.
        state_dir: where chunk results are kept.
        chunk_size: jobs per chunk.
        workers: processes (None: one per usable CPU; 1: this process).
        advance: called with the number of jobs finished (or found done).
        restart: forget saved chunks first.

    Returns:
        The results in job order.
    """
    if restart:
        shutil.rmtree(state_dir, ignore_errors=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(state_dir)
    chunks = [list(jobs[i : i + chunk_size]) for i in range(0, len(jobs), chunk_size)]
    results: dict[int, list[Any]] = {}
    for k, chunk in enumerate(chunks):
        saved = _read_chunk(state_dir / f"chunk_{k:06d}.json", [key(j) for j in chunk])
        if saved is not None:
            results[k] = saved
            if advance is not None:
                advance(len(chunk))
    todo = [k for k in range(len(chunks)) if k not in results]
    processes = max(1, min(workers or usable_cpus(), len(todo)))
    for k, chunk_results in zip(todo, imap_processes(work, [chunks[k] for k in todo], processes)):
        chunk_results = json.loads(json.dumps(chunk_results))
        write_json(state_dir / f"chunk_{k:06d}.json", {"keys": [key(j) for j in chunks[k]], "results": chunk_results})
        results[k] = chunk_results
        if advance is not None:
            advance(len(chunks[k]))
    return [r for k in range(len(chunks)) for r in results[k]]


def _read_chunk(path: Path, keys: list[str]) -> list[Any] | None:
    """A chunk's saved results, or None when absent, unreadable or made for other jobs."""
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or saved.get("keys") != keys or len(saved.get("results", ())) != len(keys):
        return None
    return saved["results"]


def remove_stale_partials(folder: Path, pattern: str = "*") -> None:
    """Delete the temporary files (``.<name>.*.partial``) that a killed writer left in ``folder``."""
    if folder.is_dir():
        for stale in folder.glob(f".{pattern}.*.partial"):
            stale.unlink(missing_ok=True)


def write_final_json(path: Path, document: Any, *, overwrite: bool) -> None:
    """Write ``document``, unless ``path`` already holds exactly it; a different existing file
    is an error unless ``overwrite``."""
    if path.exists() and not overwrite:
        try:
            with open(path, encoding="utf-8") as f:
                same = json.load(f) == document
        except (OSError, ValueError):
            same = False
        if same:
            return
        raise InputError(f"{path}: already exists and differs from what prepare computes (pass --overwrite to replace it)")
    write_json(path, document, overwrite=True)
