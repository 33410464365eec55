"""Panoptic-DeepLab (Cheng et al., CVPR 2020), faithful to detectron2's implementation.

``network.py`` backbone + dual ASPP/decoders + heads; ``targets.py`` training targets;
``losses.py`` losses; ``postprocess.py`` centre grouping and merging; ``model.py`` joins them;
``detectron2.py`` converts detectron2's model-zoo checkpoints.
"""

from panopticlab.models.panoptic_deeplab.losses import DeepLabCE, center_loss, offset_loss, panoptic_deeplab_losses
from panopticlab.models.panoptic_deeplab.model import PanopticDeepLab, build_panoptic_deeplab_model
from panopticlab.models.panoptic_deeplab.network import PanopticDeepLabNetwork, build_panoptic_deeplab
from panopticlab.models.panoptic_deeplab.postprocess import get_panoptic_segmentation, panoptic_deeplab_inference
from panopticlab.models.panoptic_deeplab.targets import PanopticDeepLabTargetGenerator, collate_targets

__all__ = [
    "DeepLabCE",
    "PanopticDeepLab",
    "PanopticDeepLabNetwork",
    "PanopticDeepLabTargetGenerator",
    "build_panoptic_deeplab",
    "build_panoptic_deeplab_model",
    "center_loss",
    "collate_targets",
    "get_panoptic_segmentation",
    "offset_loss",
    "panoptic_deeplab_inference",
    "panoptic_deeplab_losses",
]
