"""Building a model from a config, and loading one with its weights."""

from __future__ import annotations

import os
from typing import Sequence

from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:  # panopticlab.config imports the model config sections from this package
    from panopticlab.config import Config


def build_model(config: Config) -> nn.Module:
    """The model a config describes, with freshly initialised weights."""
    from panopticlab.data.categories import load_categories

    categories = load_categories(config.model.categories)
    if config.model.arch == "panoptic_deeplab":
        from panopticlab.models.panoptic_deeplab import build_panoptic_deeplab_model

        return build_panoptic_deeplab_model(config.model.panoptic_deeplab, categories)
    if config.model.arch == "sognet":
        from panopticlab.models.sognet import build_sognet_model

        return build_sognet_model(config.model.sognet, categories)
    raise ValueError(f"unknown model.arch {config.model.arch!r}")  # Literal-checked when the config is read


def load_model(
    config_path: str | os.PathLike, weights: str | os.PathLike | None = None, overrides: Sequence[str] = ()
) -> nn.Module:
    """Build the model of a YAML config and load ``weights`` (a safetensors file) into it.

    The model is returned in eval mode, ready for ``model.predict(images)``.
    """
    from panopticlab.weights import load_weights
    from panopticlab.config import Config, load_config

    model = build_model(load_config(Config, config_path, overrides))
    if weights is not None:
        load_weights(model, weights)
    return model.eval()
