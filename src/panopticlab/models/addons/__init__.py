"""Add-ons: what a model is given beyond its family's method (the protocol: ``models/base.py``).

* :mod:`.silhouette`: :class:`SilhouetteVote`, each thing's class from its segment's outline;
* :mod:`.bilateral`: :class:`BilateralRefinement`, dense predictions filtered along colour edges.

Both are panopticlab's options for the built-in shapes data; no family module imports them.
:func:`build_addons` makes those a ``model.addons`` section lists.
"""

from __future__ import annotations

from panopticlab.config.addons import AddOnsConfig
from panopticlab.config.loading import check_section
from panopticlab.data.coco_panoptic import Categories
from panopticlab.models.addons.bilateral import BilateralRefinement
from panopticlab.models.addons.silhouette import SilhouetteVote
from panopticlab.models.base import AddOn

__all__ = ["BilateralRefinement", "SilhouetteVote", "build_addons"]


def build_addons(config: AddOnsConfig, categories: Categories) -> list[AddOn]:
    """The add-ons of a ``model.addons`` section for these categories, in the section's order."""
    addons: list[AddOn] = []
    if config.silhouette is not None:
        s = config.silhouette
        check_section(s, "model.addons.silhouette.")
        addons.append(
            SilhouetteVote(
                categories, width=s.width, size=s.size, loss_weight=s.loss_weight, semantic_prior=s.semantic_prior, relabel=s.relabel
            )
        )
    if config.bilateral is not None:
        b = config.bilateral
        check_section(b, "model.addons.bilateral.")
        addons.append(BilateralRefinement(iterations=b.iterations, radius=b.radius, sigma_color=b.sigma_color, sigma_space=b.sigma_space))
    return addons
