"""The ``model.addons`` section: what a model is given beyond its family's method (``models/addons/``).

Each add-on is off unless its key is there; its settings are its own::

    model:
      addons:
        silhouette: {}            # the silhouette class vote, with its defaults
        bilateral: {iterations: 5}

Both are panopticlab's options for data whose classes are shapes and whose objects end at sharp
colour edges (the built-in shapes dataset); every published recipe leaves them out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from panopticlab.config.loading import Section


@dataclass
class SilhouetteConfig(Section):
    """The silhouette vote (models/addons/silhouette.py): a small CNN trained beside the model on the
    ground truth's visible thing masks names each thing from its final segment's outline; a thing's
    score becomes its score times that class's probability."""

    #: channels of the classifier's first layers, and the side of its input crops
    width: int = 16
    size: int = 32
    #: the weight of loss_silhouette
    loss_weight: float = 1.0
    #: the class with the highest classifier probability times the mean semantic probability of the
    #: segment's pixels (Panoptic-DeepLab's former class_vote silhouette_mean_probability), not the classifier's alone
    semantic_prior: bool = False
    #: false: the classifier is built, trained and loaded, but results keep the model's own classes
    #: (to test such weights without the vote)
    relabel: bool = True

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if self.width < 1:
            found.append(("width", "must be at least 1"))
        if self.size < 4:
            found.append(("size", "must be at least 4 (the classifier pools twice by 2)"))
        if self.loss_weight < 0:
            found.append(("loss_weight", "must be >= 0"))
        return found


@dataclass
class BilateralConfig(Section):
    """The colour-edge refinement (models/addons/bilateral.py): at test, the model's dense predictions
    filtered along the image's colour edges before its grouping or merging."""

    #: passes of the filter (0 = off)
    iterations: int = 5
    #: the window's radius in pixels, and the weights' Gaussian sigmas in RGB levels and in pixels
    radius: int = 9
    sigma_color: float = 15.0
    sigma_space: float = 9.0

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if self.iterations < 0:
            found.append(("iterations", "must be >= 0 (0 = off)"))
        if self.radius < 1:
            found.append(("radius", "must be at least 1"))
        found += [(key, "must be > 0") for key in ("sigma_color", "sigma_space") if not getattr(self, key) > 0]
        return found


#: the keys both family sections had before the add-ons -> where they went
KEYS_MOVED_TO_ADDONS = {
    **{f"silhouette_{key}": f"model.addons.silhouette.{key}" for key in ("width", "size", "loss_weight")},
    **{f"bilateral_{key}": f"model.addons.bilateral.{key}" for key in ("iterations", "radius", "sigma_color", "sigma_space")},
}


@dataclass
class AddOnsConfig(Section):
    """The add-ons a model is given; None (the default) = not given."""

    silhouette: Optional[SilhouetteConfig] = None
    bilateral: Optional[BilateralConfig] = None
