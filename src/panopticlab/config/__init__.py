"""Typed configs: the schema of an experiment, read from YAML, changed by ``key=value`` overrides.

This package is a leaf of the house: it imports no model, no dataset and no torch, so any
layer may read a config (``tests/test_architecture.py`` holds it to that).

* :mod:`.loading`: the machinery (:func:`load_config`, :func:`from_dict`, overrides, checks);
* :mod:`.experiment`: :class:`Config` and its general sections;
* :mod:`.panoptic_deeplab`, :mod:`.sognet`: the model families' sections;
* :mod:`.addons`: the add-ons' section (``model.addons``).
"""

from panopticlab.config.addons import AddOnsConfig, BilateralConfig, SilhouetteConfig
from panopticlab.config.experiment import (
    Config,
    DataConfig,
    InputConfig,
    ModelConfig,
    SolverConfig,
    SplitConfig,
    TestConfig,
)
from panopticlab.config.loading import (
    Section,
    apply_overrides,
    check_section,
    from_dict,
    load_config,
    save_config,
    to_dict,
)
from panopticlab.config.panoptic_deeplab import PanopticDeepLabConfig
from panopticlab.config.sognet import SOGNetConfig

__all__ = [
    "AddOnsConfig",
    "BilateralConfig",
    "SilhouetteConfig",
    "Config",
    "DataConfig",
    "InputConfig",
    "ModelConfig",
    "PanopticDeepLabConfig",
    "SOGNetConfig",
    "Section",
    "SolverConfig",
    "SplitConfig",
    "TestConfig",
    "apply_overrides",
    "check_section",
    "from_dict",
    "load_config",
    "save_config",
    "to_dict",
]
