"""The one evaluator protocol (detectron2's): ``reset()``, ``process(inputs, outputs)``, ``evaluate()``.

* ``inputs``: the dataset items of a batch (``image_id``, ``panoptic`` ground truth, and
  ``instances`` or ``image`` where an evaluator needs them);
* ``outputs``: the model's :class:`~panopticlab.structures.PanopticResult` of each item;
* ``evaluate()``: the scores of everything processed, as a dict whose keys no other evaluator
  uses. Under torch.distributed every process processes its share, and ``evaluate()``
  gathers inside (through :mod:`panopticlab.distributed`), so every process gets the whole.

The engine composes a list of evaluators and merges their dicts; it knows no evaluator by name.
The evaluators: :class:`~.evaluator.PanopticEvaluator` (PQ, mIoU, AP),
:class:`~.cityscapes_instance.CityscapesInstanceEvaluator`, and
:class:`~.overlap.OverlapRelationEvaluator` (contributed by the models that have a relation).
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence

from panopticlab.structures import PanopticResult


class Evaluator(Protocol):
    def reset(self) -> None:
        """Forget everything processed so far."""

    def process(self, inputs: Sequence[Mapping[str, Any]], outputs: Sequence[PanopticResult]) -> None:
        """Add one batch: its dataset items and the model's results, in the same order."""

    def evaluate(self) -> dict[str, Any]:
        """The scores of everything processed, over all processes."""
