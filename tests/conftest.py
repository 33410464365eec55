"""Shared fixtures: the real COCO panoptic sample that lives beside the repository, and helpers."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
COCO_SAMPLE = REPO_ROOT.parent / "shared" / "data" / "coco_panoptic_sample"


SHARED_REFERENCE = REPO_ROOT.parent / "shared" / "reference"


def shared_file(path: Path) -> Path:
    """A file of ../shared that a parity test reads: a missing one fails the test, never skips it
    (CI has ../shared; a checkout without it cannot check parity, and must say so)."""
    if not path.is_file():
        pytest.fail(f"{path} is missing: parity tests need the project's ../shared folder beside the repository")
    return path


@pytest.fixture
def coco_sample() -> Path:
    """../shared/data/coco_panoptic_sample: real COCO panoptic annotations."""
    shared_file(COCO_SAMPLE / "panoptic_examples.json")
    return COCO_SAMPLE


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a test module of tiny tensors: a second thread gains nothing
    there, and stalls when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class InterruptAfter:
    """A progress factory (``progress(description, total) -> advance``) whose bar raises
    KeyboardInterrupt once ``n`` items are done: an interrupted long job, for resume tests."""

    def __init__(self, n: int):
        self.n = n

    @contextlib.contextmanager
    def __call__(self, description: str, total: int):
        done = [0]

        def advance(k: int = 1) -> None:
            done[0] += k
            if done[0] >= self.n:
                raise KeyboardInterrupt

        yield advance


@pytest.fixture
def interrupt_after() -> type[InterruptAfter]:
    """``interrupt_after(n)``: see :class:`InterruptAfter`."""
    return InterruptAfter
