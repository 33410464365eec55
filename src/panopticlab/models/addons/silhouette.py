"""The silhouette vote, an add-on: a thing's class from its mask's outline alone, by a small CNN.

Not part of Panoptic-DeepLab or SOGNet: a panopticlab option for data whose classes are shapes
(the built-in shapes dataset, where colour and texture are drawn the same way for every class).
There the dense semantic head learns the outline slowly from RGB, while the same small network
learns it in seconds from a binary mask (``benchmarks/shape_learnability.py``). The classifier is
trained on ground-truth masks (blurred and re-thresholded, so that it also reads the softer
outlines a model predicts) and applied at test to each predicted thing's final segment.

* :func:`instance_index_map`: a panoptic id map -> instances 1..N, the input of the crops;
* :func:`silhouette_crops`: masks -> square crops around each mask, resized to ``size``;
* :func:`roughen_silhouettes`: the training-time augmentation;
* :class:`SilhouetteClassifier`: crops -> thing-class logits;
* :func:`classify_by_silhouette`: a panoptic result with its things given the classifier's classes;
* :class:`SilhouetteTargets`: the add-on's data transform (the ground truth's crops);
* :class:`SilhouetteVote`: the add-on (``model.addons.silhouette``, ``models/base.py``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from panopticlab.data.coco_panoptic import Categories
from panopticlab.models.base import ADDON_TARGETS, AddOn, Item, addon_targets
from panopticlab.structures import PanopticResult

#: each crop is the square around the mask's box, this many pixels wider on every side
MARGIN = 2.0


def instance_index_map(id_map: Tensor, segment_ids: Sequence[int]) -> Tensor:
    """int64 [H, W]: k on the pixels of ``segment_ids[k - 1]``, 0 on every other pixel of the
    non-negative integer id map [H, W]."""
    id_map = id_map.long()
    if not segment_ids:
        return torch.zeros_like(id_map)
    ids = torch.tensor(list(segment_ids), dtype=torch.long, device=id_map.device)
    slot_of_id = torch.zeros(max(int(id_map.max()), int(ids.max())) + 1, dtype=torch.long, device=id_map.device)
    slot_of_id[ids] = torch.arange(1, len(ids) + 1, device=id_map.device)
    return slot_of_id[id_map]


def silhouette_crops(index_map: Tensor, num_instances: int, size: int = 32) -> Tensor:
    """Square crops of instances ``1..num_instances`` of an instance index map.

    Each crop is centred on the instance's box, its side the box's longer side + 2 x
    :data:`MARGIN` pixels, sampled at ``size`` x ``size`` with 2 x 2 nearest samples per crop
    pixel (so a crop pixel holds the share of its area inside the mask). Outside the image is
    outside the mask.

    Args:
        index_map: int [H, W]; pixel value k in 1..num_instances = instance k, anything else none.
        num_instances: N.
        size: crop side S.

    Returns:
        float32 [N, 1, S, S] in [0, 1]; an instance without pixels gives an empty crop.
    """
    height, width = index_map.shape
    device = index_map.device
    if num_instances == 0:
        return torch.zeros(0, 1, size, size, device=device)
    index_map = index_map.long()
    ids = torch.arange(1, num_instances + 1, device=device)
    ys = torch.arange(height, device=device).repeat_interleave(width)
    xs = torch.arange(width, device=device).repeat(height)
    flat = index_map.flatten()
    inside = (flat >= 1) & (flat <= num_instances)
    slot = torch.where(inside, flat - 1, 0)
    big, small = torch.full((num_instances,), 1 << 30, device=device), torch.full((num_instances,), -1, device=device)
    y0 = big.scatter_reduce(0, slot[inside], ys[inside], "amin")
    x0 = big.scatter_reduce(0, slot[inside], xs[inside], "amin")
    y1 = small.scatter_reduce(0, slot[inside], ys[inside], "amax") + 1
    x1 = small.scatter_reduce(0, slot[inside], xs[inside], "amax") + 1
    present = y1 > 0
    y0, x0 = torch.where(present, y0, 0), torch.where(present, x0, 0)
    y1, x1 = torch.where(present, y1, 1), torch.where(present, x1, 1)
    cy, cx = (y0 + y1).double() / 2, (x0 + x1).double() / 2
    half = torch.maximum(y1 - y0, x1 - x0).double() / 2 + MARGIN
    # sample points in pixel-edge coordinates (pixel i spans [i, i + 1]), 2 per crop pixel and axis
    steps = (torch.arange(2 * size, device=device, dtype=torch.float64) + 0.5) / (2 * size)
    py = cy[:, None] - half[:, None] + 2 * half[:, None] * steps  # [N, 2S]
    px = cx[:, None] - half[:, None] + 2 * half[:, None] * steps
    grid_y = (py / height * 2 - 1)[:, :, None].expand(-1, -1, 2 * size)
    grid_x = (px / width * 2 - 1)[:, None, :].expand(-1, 2 * size, -1)
    grid = torch.stack((grid_x, grid_y), dim=-1).float().reshape(1, num_instances * 2 * size, 2 * size, 2)
    sampled = F.grid_sample(index_map[None, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    sampled = sampled.reshape(num_instances, 1, 2 * size, 2 * size)
    masks = (sampled == ids.view(-1, 1, 1, 1).float()) & present.view(-1, 1, 1, 1)
    return F.avg_pool2d(masks.float(), 2)


def roughen_silhouettes(crops: Tensor) -> Tensor:
    """Training augmentation: each crop [N, 1, S, S] blurred by a 1, 3 or 5 box filter and thresholded
    at a level drawn from U(0.3, 0.7), so that corners round off and edges move by a pixel or two, as
    in a model's predicted masks. Returns binary float32 crops of the same shape."""
    if crops.shape[0] == 0:
        return crops
    kernels = torch.randint(0, 3, (crops.shape[0],)) * 2 + 1
    blurred = crops.clone()
    for k in (3, 5):
        chosen = (kernels == k).to(crops.device)
        if chosen.any():
            blurred[chosen] = F.avg_pool2d(crops[chosen], k, stride=1, padding=k // 2, count_include_pad=True)
    levels = torch.empty(crops.shape[0], 1, 1, 1).uniform_(0.3, 0.7).to(crops.device)
    return (blurred > levels).float()


class SilhouetteClassifier(nn.Module):
    """Six 3x3 conv-BN-ReLU layers (``width``, ``2 width``, ``4 width`` channels, a 2x2 max-pool after
    the second and the fourth), global average pooling and a linear layer.

    Input float [N, 1, S, S] silhouettes (:func:`silhouette_crops`); output float [N, num_classes]
    logits over the thing classes.
    """

    def __init__(self, num_classes: int, width: int = 16):
        super().__init__()
        if num_classes < 1 or width < 1:
            raise ValueError(f"num_classes and width must be at least 1, got {num_classes} and {width}")

        def block(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

        w = width
        self.features = nn.Sequential(
            block(1, w), block(w, w), nn.MaxPool2d(2),
            block(w, 2 * w), block(2 * w, 2 * w), nn.MaxPool2d(2),
            block(2 * w, 4 * w), block(4 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.classifier = nn.Linear(4 * w, num_classes)

    def forward(self, crops: Tensor) -> Tensor:
        return self.classifier(self.features(crops))


def classify_by_silhouette(
    result: PanopticResult,
    classifier: SilhouetteClassifier,
    size: int,
    category_ids: Sequence[int],
    semantic: Tensor | None = None,
) -> PanopticResult:
    """``result`` with each thing segment's class chosen from its mask by ``classifier`` (in eval mode).

    Args:
        result: a prediction; its thing segments are relabelled, nothing else changes.
        classifier: maps crops of ``size`` to logits over the T thing classes.
        category_ids: the dataset category id of each of the T classes.
        semantic: optional float [T, H, W] per-pixel thing-class probabilities: the class is then
            the highest of the classifier's probability times the mean of these over the
            segment's pixels (renormalised over the T classes).

    A thing's score becomes its score times the chosen class's probability.
    """
    things = [seg for seg in result.segments if seg.isthing]
    if not things:
        return result
    device = next(classifier.parameters()).device
    index_map = instance_index_map(torch.from_numpy(result.id_map).to(device), [seg.id for seg in things])
    probability = torch.softmax(classifier(silhouette_crops(index_map, len(things), size)).double(), dim=1)  # [N, T]
    if semantic is not None:
        pixels = index_map.flatten() > 0
        sums = torch.zeros_like(probability)
        sums.index_add_(0, index_map.flatten()[pixels] - 1, semantic.flatten(1)[:, pixels].double().T.to(device))
        probability = probability * sums / sums.sum(dim=1, keepdim=True).clamp(min=1e-300)
        probability = probability / probability.sum(dim=1, keepdim=True).clamp(min=1e-300)
    best, chosen = probability.max(dim=1)
    relabelled = {
        seg.id: replace(seg, category_id=int(category_ids[c]), score=(seg.score or 0.0) * p)
        for seg, c, p in zip(things, chosen.tolist(), best.tolist(), strict=True)
    }
    return PanopticResult(result.id_map, [relabelled.get(seg.id, seg) for seg in result.segments])


class SilhouetteTargets:
    """``item -> item`` with the silhouette classifier's targets under ``item["addon_targets"]["silhouette"]``:
    ``crops`` float32 [N, 1, S, S], the visible segments of the item's things, and ``classes`` int64
    [N], their thing indices (the thing categories in dataset-id order). Picklable.

    The things are the non-crowd thing segments of ``item["panoptic"]`` that have pixels, each once:
    in the order of ``item["instances"]`` where the item has instances (each one's visible segment,
    as the family's detector sees them), else in the order of the segments.

    Args:
        thing_index: dataset category id -> thing index, for the thing categories.
        size: the crops' side S.
    """

    def __init__(self, thing_index: Mapping[int, int], size: int):
        self.thing_index = dict(thing_index)
        self.size = size

    def __call__(self, item: Item) -> Item:
        panoptic = item["panoptic"]
        things = {s.id: s for s in panoptic.segments if s.category_id in self.thing_index and not s.iscrowd}
        ids = list(things)
        if "instances" in item:
            ids = list(dict.fromkeys(i for i in item["instances"]["panoptic_segment_ids"].tolist() if i in things))
        index_map = instance_index_map(torch.from_numpy(np.ascontiguousarray(panoptic.id_map)).long(), ids)
        crops = silhouette_crops(index_map, len(ids), self.size)
        present = crops.flatten(1).sum(dim=1) > 0
        classes = torch.tensor([self.thing_index[things[i].category_id] for i in ids], dtype=torch.long)
        targets = {"crops": crops[present], "classes": classes[present]}
        return {**item, ADDON_TARGETS: {**item.get(ADDON_TARGETS, {}), SilhouetteVote.name: targets}}


class SilhouetteVote(AddOn):
    """The add-on: a :class:`SilhouetteClassifier` trained beside the model on the ground truth's
    visible thing segments (``loss_silhouette``), naming each thing of a result from its final
    segment at test.

    Args:
        categories: the dataset's categories (the classifier's classes are its thing categories).
        width: channels of the classifier's first layers.
        size: the side of its input crops.
        loss_weight: the weight of ``loss_silhouette``.
        semantic_prior: the class is the highest of the classifier's probability times the mean
            semantic probability of the segment's pixels (the family's ``sem_seg``), not the
            classifier's alone.
        relabel: False: trained and loaded, but results keep the family's classes (to test such
            weights without the vote).
    """

    name = "silhouette"

    def __init__(
        self,
        categories: Categories,
        *,
        width: int = 16,
        size: int = 32,
        loss_weight: float = 1.0,
        semantic_prior: bool = False,
        relabel: bool = True,
    ):
        super().__init__()
        self.network = SilhouetteClassifier(len(categories.thing_ids), width=width)
        self.size = size
        self.loss_weight = loss_weight
        self.semantic_prior = semantic_prior
        self.relabel_results = relabel
        #: dataset ids of the thing classes (the classifier's outputs) and their contiguous ids
        self.thing_ids = list(categories.thing_ids)
        self.thing_channels = [categories.to_contiguous(i) for i in categories.thing_ids]

    def data_transform(self) -> SilhouetteTargets:
        return SilhouetteTargets({i: k for k, i in enumerate(self.thing_ids)}, self.size)

    def loss(self, batch: Sequence[Item], outputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``loss_silhouette``: the cross-entropy of the classifier on the batch's roughened crops
        (:func:`roughen_silhouettes`)."""
        targets = addon_targets(batch, self.name)
        device = self.network.classifier.weight.device
        crops = torch.cat([t["crops"] for t in targets]).to(device)
        classes = torch.cat([t["classes"] for t in targets]).to(device)
        if classes.numel() == 0:  # a zero that keeps every parameter in the graph
            return {"loss_silhouette": sum(p.sum() for p in self.network.parameters()) * 0.0}
        loss = F.cross_entropy(self.network(roughen_silhouettes(crops)), classes)
        return {"loss_silhouette": self.loss_weight * loss}

    def relabel(self, result: PanopticResult, dense: Mapping[str, Tensor]) -> PanopticResult:
        """``result`` with its things classified by :func:`classify_by_silhouette` (times the mean
        semantic probabilities of ``dense["sem_seg"]`` with ``semantic_prior``)."""
        if not self.relabel_results:
            return result
        semantic = None
        if self.semantic_prior:
            logits = dense.get("sem_seg")
            if logits is None or tuple(logits.shape[-2:]) != result.id_map.shape:
                raise ValueError("the silhouette vote's semantic_prior needs the model's sem_seg at the result's size")
            semantic = torch.softmax(logits.double(), dim=0)[self.thing_channels]
        return classify_by_silhouette(result, self.network, self.size, self.thing_ids, semantic)
