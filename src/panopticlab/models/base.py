"""The model contract: what the trainer, the evaluators and the tools know of any model.

Every model family subclasses :class:`PanopticModel`, a ``torch.nn.Module`` with

* ``categories``: the dataset's :class:`~panopticlab.data.coco_panoptic.Categories`; results carry
  their dataset ids;
* ``data_transform()``: a picklable ``item -> item`` that the trainer runs on every training
  item in the data loader's workers, after augmentation. It adds ``item["targets"]``
  (:data:`TARGETS`), whatever the family's targets are, and may resize the item;
* ``forward(batch)``: a list of such items -> a dict of named, already weighted scalar losses
  (the trainer sums them). An item without ``targets`` is an error, not recomputed;
* ``predict(images, **options)``: images (paths, PIL, numpy, tensors) -> one
  :class:`~panopticlab.structures.PanopticResult` each, in eval mode without autograd. The
  options are the family's own (Panoptic-DeepLab: test-time augmentation); every setting read
  from the config was fixed when the model was built;
* ``evaluators()``: the family's own metrics (evaluator protocol, :mod:`panopticlab.evaluation.protocol`)
  that the engine adds to the standard ones; none by default;
* ``uses_instances``: whether training and evaluation read ``item["instances"]`` (instance masks
  beside the panoptic ground truth); when False the loader does not read them at all.
"""

from __future__ import annotations

import abc
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from panopticlab.data.coco_panoptic import Categories
from panopticlab.evaluation.protocol import Evaluator
from panopticlab.models.common import ImageInput
from panopticlab.structures import PanopticResult

#: The item key under which ``data_transform()`` leaves the model's training targets.
TARGETS = "targets"

Item = dict[str, Any]


class PanopticModel(nn.Module, metaclass=abc.ABCMeta):
    """Base class of the model families (see the module docstring)."""

    #: whether the model reads ``item["instances"]`` (amodal instance masks) in training or evaluation
    uses_instances: bool = False

    def __init__(self, categories: Categories):
        super().__init__()
        self.categories = categories

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @abc.abstractmethod
    def data_transform(self) -> Callable[[Item], Item]:
        """The picklable per-item transform that adds ``item["targets"]``."""

    @abc.abstractmethod
    def forward(self, batch: Sequence[Item]) -> dict[str, Tensor]:
        """Training items (with ``targets``) -> named, weighted scalar losses."""

    @abc.abstractmethod
    def predict(self, images: ImageInput | Sequence[ImageInput]) -> list[PanopticResult]:
        """One panoptic result per image, segments with dataset category ids."""

    def evaluators(self) -> list[Evaluator]:
        """The family's own evaluators, added to the standard ones when the model is tested."""
        return []


def training_targets(batch: Sequence[Item]) -> list[Any]:
    """Each item's ``targets``; a clear error for an item that ``data_transform()`` did not see."""
    missing = [k for k, item in enumerate(batch) if TARGETS not in item]
    if missing:
        raise ValueError(
            f"batch item {missing[0]} has no '{TARGETS}': run model.data_transform() on training items first "
            "(the trainer does it in its data loader)"
        )
    return [item[TARGETS] for item in batch]
