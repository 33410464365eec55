"""The model families behind one contract (``base.py``), and the one way to build and load them.

* :func:`build_model`: the model a config describes, freshly initialised (backbone weights
  loaded when the config names them), with the add-ons of ``model.addons``;
* :func:`load_model`: the same with its weights, in eval mode: what ``panopticlab test``,
  ``predict``, the demo and ``panopticlab.load_model`` use.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch

from panopticlab.config import Config, load_config
from panopticlab.data.categories import load_categories
from panopticlab.models.addons import build_addons
from panopticlab.models.base import PanopticModel
from panopticlab.models.panoptic_deeplab import build_panoptic_deeplab_model
from panopticlab.models.sognet import build_sognet_model
from panopticlab.weights import load_weights


def build_model(config: Config) -> PanopticModel:
    """The model a config describes, with freshly initialised weights: the family's, then its add-ons
    (``model.addons``), built in that order (so the family's weights draw the same random numbers
    with add-ons or without)."""
    categories = load_categories(config.model.categories)
    if config.model.arch == "panoptic_deeplab":
        model = build_panoptic_deeplab_model(config.model.panoptic_deeplab, categories, crop_size=tuple(config.input.crop_size))
    elif config.model.arch == "sognet":
        model = build_sognet_model(config.model.sognet, categories)
    else:
        raise ValueError(f"unknown model.arch {config.model.arch!r}")  # Literal-checked when the config is read
    model.set_addons(build_addons(config.model.addons, categories))
    return model


def load_model(
    config: Config | str | os.PathLike,
    weights: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    *,
    device: str | torch.device | None = None,
) -> PanopticModel:
    """Build the model of a config (a :class:`Config`, or a YAML file with ``overrides``) and load
    ``weights`` (a safetensors file of the whole model) into it.

    Returns the model in eval mode on ``device`` (default: the CPU), ready for ``model.predict(images)``.
    """
    if not isinstance(config, Config):
        config = load_config(Config, config, overrides)
    elif overrides:
        raise ValueError("overrides apply to a config file; change the Config object instead")
    model = build_model(config)
    if weights is not None:
        load_weights(model, weights)
    return model.to(device or "cpu").eval()
