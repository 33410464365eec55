"""Joint bilateral filtering: dense predictions smoothed along the image's colour edges, not across them.

A test-time refinement in the spirit of DeepLab v1/v2's fully connected CRF (Chen et al., 2015-2018),
which sharpened a stride-8 network's boundaries against the image; here a local k x k filter,
repeated, without learnt parameters. A network whose heads work at stride 4 predicts outlines that
are smooth at the scale of 4 pixels; where the image has a sharp colour edge between two regions,
averaging each pixel's prediction with those of its neighbours of the *same colour* moves the
predicted boundary onto the image's edge.

The weights come from the image once: for pixel p and each neighbour q within ``radius``,
``w(p, q) = exp(-|I_p - I_q|^2 / (2 sigma_color^2) - |p - q|^2 / (2 sigma_space^2))``, normalised
over q (neighbours outside the image take no part). Each pass replaces the map's value at p by
the ``w``-weighted mean over q.

Not part of Panoptic-DeepLab or SOGNet: a panopticlab option (:class:`BilateralRefinement`, an
add-on) for data whose objects differ from their surroundings by sharp colour edges, such as the
built-in shapes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from panopticlab.models.base import AddOn


def _window_offsets(radius: int) -> list[tuple[int, int]]:
    """(dy, dx) of every neighbour of a (2 radius + 1)^2 window, row by row."""
    return [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]


def _shifted(padded: Tensor, radius: int, dy: int, dx: int, height: int, width: int) -> Tensor:
    """The map [..., H, W] that ``padded`` (padded by ``radius``) holds, moved so that pixel p reads p + (dy, dx)."""
    return padded[..., radius + dy : radius + dy + height, radius + dx : radius + dx + width]


def bilateral_weights(image: Tensor, radius: int, sigma_color: float, sigma_space: float) -> Tensor:
    """float32 [B, K, H, W], K = (2 radius + 1)^2: each pixel's weight for each neighbour of its window
    (in :func:`_window_offsets` order), normalised to sum 1 over the neighbours inside the image.
    ``image``: [B, 3, H, W], RGB 0..255, any dtype."""
    height, width = image.shape[-2:]
    image = image.float()
    padded = F.pad(image, (radius,) * 4)
    inside = F.pad(image.new_ones(1, 1, height, width), (radius,) * 4)
    logits = []
    for dy, dx in _window_offsets(radius):
        colour = (_shifted(padded, radius, dy, dx, height, width) - image).square().sum(dim=1)  # [B, H, W]
        logit = -colour / (2 * sigma_color**2) - (dy * dy + dx * dx) / (2 * sigma_space**2)
        logits.append(logit.masked_fill(_shifted(inside, radius, dy, dx, height, width)[:, 0] == 0, float("-inf")))
    return torch.softmax(torch.stack(logits, dim=1), dim=1)


def bilateral_filter(values: Tensor, weights: Tensor, iterations: int) -> Tensor:
    """``values`` float [B, C, H, W] averaged ``iterations`` times with :func:`bilateral_weights` [B, K, H, W]."""
    height, width = values.shape[-2:]
    radius = (int(round(weights.shape[1] ** 0.5)) - 1) // 2
    offsets = _window_offsets(radius)
    for _ in range(iterations):
        padded = F.pad(values, (radius,) * 4)
        filtered = torch.zeros_like(values)
        for k, (dy, dx) in enumerate(offsets):
            filtered.addcmul_(_shifted(padded, radius, dy, dx, height, width), weights[:, k : k + 1])
        values = filtered
    return values


class BilateralRefinement(AddOn):
    """The add-on (``model.addons.bilateral``, ``models/base.py``): at test, the dense maps a family
    hands over before grouping or merging (probabilities, the centres its offsets point to) are
    each filtered ``iterations`` times along the image's colour edges. Nothing is learnt, so it
    works on weights trained without it.

    Args:
        iterations: passes of :func:`bilateral_filter` (0: off).
        radius, sigma_color, sigma_space: the weights' window and Gaussians (:func:`bilateral_weights`).
    """

    name = "bilateral"

    def __init__(self, *, iterations: int = 5, radius: int = 9, sigma_color: float = 15.0, sigma_space: float = 9.0):
        super().__init__()
        self.iterations = iterations
        self.radius = radius
        self.sigma_color = sigma_color
        self.sigma_space = sigma_space

    @property
    def refines(self) -> bool:
        return self.iterations > 0

    def refine(self, images: Tensor, maps: dict[str, Tensor]) -> dict[str, Tensor]:
        """Every map of ``maps`` (float [B, K, H, W]) filtered with the weights of ``images`` ([B, 3, H, W],
        RGB 0..255). The maps' channels are averaged independently, so one filter over all of them
        (concatenated in the dict's order) equals one per map."""
        names = list(maps)
        stacked = torch.cat([maps[name] for name in names], dim=1)
        weights = bilateral_weights(images.to(stacked.device), self.radius, self.sigma_color, self.sigma_space)
        filtered = bilateral_filter(stacked, weights, self.iterations)
        return dict(zip(names, filtered.split([maps[name].shape[1] for name in names], dim=1), strict=True))
