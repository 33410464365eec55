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
  beside the panoptic ground truth); when False the loader does not read them at all;
* ``addons``: the :class:`AddOn` s it was given (an ``nn.ModuleDict`` by name, empty for a model of
  its paper alone).

**Add-ons** are what a model is given beyond its family's method: panopticlab's options made for
one kind of data (``models/addons/``: the silhouette class vote, the colour-edge refinement). A
family calls them at four documented points and knows none of them by name:

1. ``data_transform()`` runs the family's own transform (``targets_transform()``), then each
   add-on's, which leaves what it needs under ``item["addon_targets"][name]``;
2. ``forward`` adds each add-on's losses (``AddOn.loss``) after the family's own;
3. before grouping or merging, the family hands its dense predictions, in a form that may be
   averaged over pixels, to each add-on that refines (``AddOn.refine``);
4. after a result is assembled, each add-on may relabel its segments (``AddOn.relabel``).
"""

from __future__ import annotations

import abc
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from panopticlab.data.coco_panoptic import Categories
from panopticlab.data.transforms import Compose
from panopticlab.evaluation.protocol import Evaluator
from panopticlab.models.common import ImageInput
from panopticlab.structures import PanopticResult

#: The item key under which ``data_transform()`` leaves the model's training targets.
TARGETS = "targets"
#: The item key under which add-ons' data transforms leave their targets: ``{add-on name: targets}``.
ADDON_TARGETS = "addon_targets"

Item = dict[str, Any]


class AddOn(nn.Module):
    """Something a model is given beyond its family's method (see the module docstring).

    Every hook does nothing by default; an add-on overrides the ones it needs. ``name`` is its key
    in ``model.addons`` (and so in the state dict: ``addons.<name>.*``), in ``item["addon_targets"]``
    and in the config's ``model.addons``.
    """

    name: str = ""

    def data_transform(self) -> Callable[[Item], Item] | None:
        """A picklable ``item -> item`` run after the family's transform in the loader's workers (it
        sees the item as the family left it: resized to the input size where the family resizes),
        leaving its targets under ``item["addon_targets"][self.name]``; None: it needs none."""
        return None

    def loss(self, batch: Sequence[Item], outputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Named, weighted scalar losses from the training ``batch`` (items through
        :meth:`PanopticModel.data_transform`) and the family's dense ``outputs`` of that batch
        (``sem_seg``: float [B, C, h, w] semantic logits over the contiguous categories, among others)."""
        return {}

    @property
    def refines(self) -> bool:
        """Whether :meth:`refine` changes anything (families skip the conversions it needs otherwise)."""
        return False

    def refine(self, images: Tensor, maps: dict[str, Tensor]) -> dict[str, Tensor]:
        """Dense predictions before grouping or merging, changed.

        Args:
            images: [B, 3, H, W] RGB 0..255 (any dtype), the images the maps belong to.
            maps: name -> float [B, K, H, W] maps of quantities that may be averaged over pixels
                (probabilities, the points that offsets vote for; never logits), at the images' size.

        Returns:
            the same names, shapes and dtypes.
        """
        return maps

    def relabel(self, result: PanopticResult, dense: Mapping[str, Tensor]) -> PanopticResult:
        """One image's final result, its segments changed (the id map and segment ids kept).
        ``dense``: the family's dense outputs of that image at the result's size, where it has them
        (``sem_seg``: float [C, H, W] logits over the contiguous categories)."""
        return result


class PanopticModel(nn.Module, metaclass=abc.ABCMeta):
    """Base class of the model families (see the module docstring)."""

    #: whether the model reads ``item["instances"]`` (amodal instance masks) in training or evaluation
    uses_instances: bool = False

    def __init__(self, categories: Categories):
        super().__init__()
        self.categories = categories
        self.addons = nn.ModuleDict()

    def set_addons(self, addons: Sequence[AddOn]) -> None:
        """Give the model its add-ons (called once, after the family is built). They are registered
        after the family's modules, so that the parameters keep the family's order (and with it the
        sums of gradient clipping)."""
        names = [addon.name for addon in addons]
        if len(set(names)) != len(names) or not all(names):
            raise ValueError(f"add-ons need distinct, non-empty names, got {names}")
        del self.addons
        self.addons = nn.ModuleDict({addon.name: addon for addon in addons})

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def data_transform(self) -> Callable[[Item], Item]:
        """The picklable per-item transform that adds ``item["targets"]`` (the family's
        :meth:`targets_transform`) and then the add-ons' targets."""
        transforms = [self.targets_transform()]
        transforms += [t for t in (addon.data_transform() for addon in self.addons.values()) if t is not None]
        return transforms[0] if len(transforms) == 1 else Compose(transforms)

    @abc.abstractmethod
    def targets_transform(self) -> Callable[[Item], Item]:
        """The family's own picklable per-item transform that adds ``item["targets"]``."""

    def addon_losses(self, batch: Sequence[Item], outputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Every add-on's losses (:meth:`AddOn.loss`), to be added after the family's own."""
        losses: dict[str, Tensor] = {}
        for addon in self.addons.values():
            losses.update(addon.loss(batch, outputs))
        return losses

    @property
    def refines(self) -> bool:
        """Whether an add-on refines the dense predictions (:meth:`AddOn.refine`)."""
        return any(addon.refines for addon in self.addons.values())

    def refined(self, images: Tensor, maps: dict[str, Tensor]) -> dict[str, Tensor]:
        """``maps`` through every refining add-on, in order (:meth:`AddOn.refine` gives the shapes)."""
        for addon in self.addons.values():
            if addon.refines:
                maps = addon.refine(images, maps)
        return maps

    def relabelled(self, result: PanopticResult, dense: Mapping[str, Tensor]) -> PanopticResult:
        """``result`` through every add-on's :meth:`AddOn.relabel`, in order."""
        for addon in self.addons.values():
            result = addon.relabel(result, dense)
        return result

    @abc.abstractmethod
    def forward(self, batch: Sequence[Item]) -> dict[str, Tensor]:
        """Training items (with ``targets``) -> named, weighted scalar losses."""

    @abc.abstractmethod
    def predict(self, images: ImageInput | Sequence[ImageInput]) -> list[PanopticResult]:
        """One panoptic result per image, segments with dataset category ids."""

    def evaluators(self) -> list[Evaluator]:
        """The family's own evaluators, added to the standard ones when the model is tested."""
        return []

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups: ``{"params": [...], "lr_scale": s}``, each trained at
        ``s`` times the schedule's learning rate. One group of every trainable parameter unless a
        family scales a part of itself (SOGNet's ``relation_lr_scale``)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr_scale": 1.0}]


def training_targets(batch: Sequence[Item]) -> list[Any]:
    """Each item's ``targets``; a clear error for an item that ``data_transform()`` did not see."""
    missing = [k for k, item in enumerate(batch) if TARGETS not in item]
    if missing:
        raise ValueError(
            f"batch item {missing[0]} has no '{TARGETS}': run model.data_transform() on training items first "
            "(the trainer does it in its data loader)"
        )
    return [item[TARGETS] for item in batch]


def addon_targets(batch: Sequence[Item], name: str) -> list[Any]:
    """Each item's targets of add-on ``name``; a clear error for an item that its data transform did not see."""
    missing = [k for k, item in enumerate(batch) if name not in item.get(ADDON_TARGETS, {})]
    if missing:
        raise ValueError(
            f"batch item {missing[0]} has no '{ADDON_TARGETS}' of add-on '{name}': run model.data_transform() "
            "on training items first (the trainer does it in its data loader)"
        )
    return [item[ADDON_TARGETS][name] for item in batch]
