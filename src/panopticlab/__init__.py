"""panopticlab: panoptic segmentation with Panoptic-DeepLab and SOGNet, evaluated exactly.

The names a user needs most are importable from here; everything else lives in its module
(see docs/architecture.md).
"""

from panopticlab.data.coco_panoptic import Categories
from panopticlab.errors import InputError
from panopticlab.evaluation import pq_compute
from panopticlab.structures import PanopticResult, Segment, from_label_map, id2rgb, rgb2id, to_label_map

__version__ = "0.1.0"


def load_model(config_path, weights=None, overrides=()):
    """Build a model from a YAML config and load its weights (see ``panopticlab.models.load_model``)."""
    from panopticlab.models import load_model as _load_model

    return _load_model(config_path, weights, overrides)


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
