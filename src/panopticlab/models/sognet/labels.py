"""The one place where SOGNet's three label spaces meet.

* contiguous category ids ``0..C-1`` (:class:`~panopticlab.data.coco_panoptic.Categories`):
  the semantic head's channels and the dataset items' ``labels``;
* thing indices ``0..K-1`` (the thing categories in contiguous order): the relation module's
  one-hot; torchvision's detector labels are these plus 1 (0 is its background);
* stuff channels ``0..S-1`` (the stuff categories in contiguous order): the first S channels of
  the panoptic head.
"""

from __future__ import annotations

import torch
from torch import Tensor

from panopticlab.data.coco_panoptic import Categories
from panopticlab.errors import InputError


class LabelSpace:
    """Contiguous ids <-> thing indices <-> stuff channels for one set of categories.

    Args:
        categories: the dataset's categories (at least one thing and one stuff category, else InputError).
    """

    def __init__(self, categories: Categories):
        contiguous = {i: categories.to_contiguous(i) for i in categories.ids}
        #: contiguous ids of the thing classes, in thing-index order
        self.things: list[int] = [contiguous[i] for i in categories.thing_ids]
        #: contiguous ids of the stuff classes, in stuff-channel order
        self.stuff: list[int] = [contiguous[i] for i in categories.stuff_ids]
        if not self.things or not self.stuff:
            raise InputError(f"{categories.source}: SOGNet needs at least one thing and one stuff category")
        self.num_classes = len(categories)
        #: contiguous id -> stuff channel, for the panoptic target
        self.stuff_channel: dict[int, int] = {c: k for k, c in enumerate(self.stuff)}
        # contiguous id -> thing index, -1 for stuff
        self._thing_index = torch.full((self.num_classes,), -1, dtype=torch.int64)
        self._thing_index[self.things] = torch.arange(len(self.things))
        self._is_stuff = torch.zeros(self.num_classes, dtype=torch.bool)
        self._is_stuff[self.stuff] = True

    @property
    def num_things(self) -> int:
        return len(self.things)

    @property
    def num_stuff(self) -> int:
        return len(self.stuff)

    def thing_index(self, contiguous: Tensor) -> Tensor:
        """int64 [N] contiguous ids of thing classes -> int64 [N] thing indices 0..K-1.

        Raises ValueError when one of the ids is not a thing class.
        """
        index = self._thing_index.to(contiguous.device)[contiguous]
        if bool((index < 0).any()):
            raise ValueError(f"categories {contiguous[index < 0].tolist()} (contiguous ids) are not thing classes")
        return index

    def thing_contiguous(self, thing_index: Tensor) -> Tensor:
        """int64 [N] thing indices 0..K-1 -> int64 [N] contiguous ids (the semantic channels)."""
        return torch.as_tensor(self.things, device=thing_index.device)[thing_index]

    def is_stuff(self, contiguous: Tensor) -> Tensor:
        """int64 [...] contiguous ids -> bool [...]."""
        return self._is_stuff.to(contiguous.device)[contiguous]
