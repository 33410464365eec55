"""Shared fixtures: the real COCO panoptic sample that lives beside the repository."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
COCO_SAMPLE = REPO_ROOT.parent / "shared" / "data" / "coco_panoptic_sample"


@pytest.fixture
def coco_sample() -> Path:
    """../shared/data/coco_panoptic_sample (skips the test where it is absent)."""
    if not (COCO_SAMPLE / "panoptic_examples.json").is_file():
        pytest.skip(f"{COCO_SAMPLE} is not present")
    return COCO_SAMPLE


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a test module of tiny tensors: a second thread gains nothing
    there, and stalls when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
