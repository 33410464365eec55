"""panopticlab: panoptic segmentation with Panoptic-DeepLab and SOGNet, evaluated exactly.

The names a user needs most are importable from here; everything else lives in its module
(see docs/architecture.md). They are imported when first used, so that ``import
panopticlab.config`` (or any other light module) does not load torch's models, the
evaluators and pycocotools with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS = {
    "Categories": "panopticlab.data.coco_panoptic",
    "InputError": "panopticlab.errors",
    "PanopticResult": "panopticlab.structures",
    "Segment": "panopticlab.structures",
    "from_label_map": "panopticlab.structures",
    "id2rgb": "panopticlab.structures",
    "rgb2id": "panopticlab.structures",
    "to_label_map": "panopticlab.structures",
    "load_model": "panopticlab.models",
    "pq_compute": "panopticlab.evaluation",
}

__all__ = [
    "Categories",
    "InputError",
    "PanopticResult",
    "Segment",
    "from_label_map",
    "id2rgb",
    "load_model",
    "pq_compute",
    "rgb2id",
    "to_label_map",
]

if TYPE_CHECKING:
    from panopticlab.data.coco_panoptic import Categories
    from panopticlab.errors import InputError
    from panopticlab.evaluation import pq_compute
    from panopticlab.models import load_model
    from panopticlab.structures import PanopticResult, Segment, from_label_map, id2rgb, rgb2id, to_label_map


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'panopticlab' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
