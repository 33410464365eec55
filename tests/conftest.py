"""Shared fixtures: the real COCO panoptic sample that lives beside the repository."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
COCO_SAMPLE = REPO_ROOT.parent / "shared" / "data" / "coco_panoptic_sample"


@pytest.fixture
def coco_sample() -> Path:
    """../shared/data/coco_panoptic_sample (skips the test where it is absent)."""
    if not (COCO_SAMPLE / "panoptic_examples.json").is_file():
        pytest.skip(f"{COCO_SAMPLE} is not present")
    return COCO_SAMPLE
