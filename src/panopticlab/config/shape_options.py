"""The checks of panopticlab's two options for classes that are shapes, shared by the
``model.panoptic_deeplab`` and ``model.sognet`` sections: the silhouette classifier
(``silhouette_width``, ``silhouette_size``, ``silhouette_loss_weight``, models/silhouette.py) and
the test-time bilateral refinement (``bilateral_*``, models/bilateral.py)."""

from __future__ import annotations

from typing import Any


def shape_option_problems(section: Any) -> list[tuple[str, str]]:
    """(key, problem) for each bad value of the two options' keys of ``section``."""
    found = []
    if section.silhouette_width < 1:
        found.append(("silhouette_width", "must be at least 1"))
    if section.silhouette_size < 4:
        found.append(("silhouette_size", "must be at least 4 (the classifier pools twice by 2)"))
    if section.silhouette_loss_weight < 0:
        found.append(("silhouette_loss_weight", "must be >= 0"))
    if section.bilateral_iterations < 0:
        found.append(("bilateral_iterations", "must be >= 0 (0 = off)"))
    if section.bilateral_radius < 1:
        found.append(("bilateral_radius", "must be at least 1"))
    for key in ("bilateral_sigma_color", "bilateral_sigma_space"):
        if not getattr(section, key) > 0:
            found.append((key, "must be > 0"))
    return found
