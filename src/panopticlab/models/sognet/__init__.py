"""SOGNet (Yang et al., AAAI 2020): Mask R-CNN + semantic head + scene overlap graph + panoptic head.

Parameter-free maths: ``relation.py`` the relation module, its ground truth and loss;
``overlap_removal.py`` the differentiable removal of occluded pixels;
``panoptic_head.py`` UPSNet's panoptic logits, target and loss.
The network and the model: ``settings.py`` (a config section resolved), ``labels.py``,
``detector.py`` (torchvision Mask R-CNN parts), ``semantic_head.py``, ``targets.py``,
``inference.py`` and ``model.py`` (``SOGNet``, ``build_sognet_model``); see docs/sognet.md.
"""

from panopticlab.models.sognet.model import SOGNet, build_sognet_model
from panopticlab.models.sognet.overlap_removal import (
    remove_overlaps,
    remove_overlaps_pairwise,
)
from panopticlab.models.sognet.panoptic_head import (
    box_support,
    crop_to_boxes,
    panoptic_logits,
    panoptic_loss,
    panoptic_target,
    paste_mask_logits,
    unknown_logits,
)
from panopticlab.models.sognet.relation import (
    RelationModule,
    overlapping_order,
    relation_loss,
    relative_box_encoding,
)

__all__ = [
    "RelationModule",
    "SOGNet",
    "box_support",
    "build_sognet_model",
    "crop_to_boxes",
    "overlapping_order",
    "panoptic_logits",
    "panoptic_loss",
    "panoptic_target",
    "paste_mask_logits",
    "relation_loss",
    "relative_box_encoding",
    "remove_overlaps",
    "remove_overlaps_pairwise",
    "unknown_logits",
]
