"""SOGNet's merge of given instances and the merge-only training of the relation experiment."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection.roi_heads import maskrcnn_loss

from panopticlab.models.sognet.detector import mask_head_loss, mask_head_outputs
from panopticlab.models.sognet.model import _visible_masks
from test_sognet_model import CATEGORIES, shapes_items, tiny_model, with_targets

pytestmark = pytest.mark.usefixtures("one_thread")

THINGS = [i for i in CATEGORIES.ids if CATEGORIES.isthing(i)][:2]

# Two squares of two thing classes on a 64 x 64 image, sharing a 16 x 16 corner (16 % of each: they overlap).
BOXES = torch.tensor([[0.0, 0.0, 40.0, 40.0], [24.0, 24.0, 64.0, 64.0]])
LABELS = torch.tensor([CATEGORIES.to_contiguous(i) for i in THINGS])


def constant_model(second_logit: float = 3.0, **changes):
    """Mask logits 3 inside the first class's boxes, ``second_logit`` inside the second's; every
    semantic logit 0 but the two thing classes', 1."""
    model = tiny_model(**changes)
    predictor = model.detector.roi_heads.mask_predictor.mask_fcn_logits
    torch.nn.init.zeros_(predictor.weight)
    classifier = model.semantic_head.classifier
    torch.nn.init.zeros_(classifier.weight)
    torch.nn.init.zeros_(classifier.bias)
    with torch.no_grad():
        predictor.bias.fill_(3.0)
        predictor.bias[model.labels.thing_index(LABELS[1:])[0] + 1] = second_logit
        classifier.bias[LABELS] = 1.0
    return model


def regions(owner: torch.Tensor) -> dict[str, set[int]]:
    """The owners of the shared corner and of each square's own part."""
    shared = owner[24:40, 24:40]
    first, second = owner[:24, :40], owner[40:, 24:]
    return {name: set(part.unique().tolist()) for name, part in (("shared", shared), ("first", first), ("second", second))}


@pytest.mark.parametrize("front", [0, 1])
def test_a_given_relation_decides_who_takes_the_shared_pixels(front):
    model = constant_model()
    image = torch.zeros(3, 64, 64, dtype=torch.uint8)
    relation = torch.zeros(2, 2)
    relation[1 - front, front] = 1.0  # O_ij > 0: j in front of i
    merged = model.merge_given(image, BOXES, LABELS, relation=relation)
    assert regions(merged.owner) == {"shared": {front}, "first": {0}, "second": {1}}
    # the result is the owner map, segment by segment
    for segment in merged.result.segments:
        owners = merged.owner[torch.from_numpy(merged.result.id_map == segment.id)].unique().tolist()
        assert owners == ([THINGS.index(segment.category_id)] if segment.isthing else [-1])
    assert sorted(s.area for s in merged.result.segments if s.isthing) == [1600 - 256, 1600]
    # each score is the mask confidence, sigmoid(3) everywhere the mask claims
    torch.testing.assert_close(merged.scores, torch.full((2,), torch.sigmoid(torch.tensor(3.0)).item()))
    # the module's own O on the two instances comes back for the direction figures
    assert merged.relation.shape == (2, 2) and float(merged.relation.diagonal().abs().sum()) == 0


def test_the_heuristic_merge_of_given_instances_follows_the_scores():
    model = constant_model()
    image = torch.zeros(3, 64, 64, dtype=torch.uint8)
    merged = model.merge_given(image, BOXES, LABELS, merge="heuristic")
    # equal confidences: given order; the second keeps 84 % of its mask free (>= 70 %), so it stays
    assert regions(merged.owner) == {"shared": {0}, "first": {0}, "second": {1}}
    # a more confident second instance goes first
    confident = constant_model(second_logit=5.0).merge_given(image, BOXES, LABELS, merge="heuristic")
    assert confident.scores[1] > confident.scores[0]
    assert regions(confident.owner) == {"shared": {1}, "first": {0}, "second": {1}}


def test_a_model_without_relation_merges_given_instances_with_or_without_a_given_o():
    model = constant_model(panoptic="upsnet", unknown_class=False, test_x2mask=True)
    image = torch.zeros(3, 64, 64, dtype=torch.uint8)
    assert model.merge_given(image, BOXES, LABELS).relation is None
    relation = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    assert regions(model.merge_given(image, BOXES, LABELS, relation=relation).owner)["shared"] == {1}


@pytest.mark.parametrize("panoptic", ["sognet", "heuristic"])
def test_mask_head_only_training_trains_the_merge_heads_and_leaves_the_detector_alone(panoptic):
    model = tiny_model(panoptic=panoptic, detector_training="mask_head_only").train()
    losses = model(with_targets(model, shapes_items(2)))
    merge = {"loss_panoptic", "loss_relation"} if panoptic == "sognet" else set()
    assert set(losses) == {"loss_mask", "loss_sem_seg", "loss_sem_roi"} | merge
    sum(losses.values()).backward()
    heads = model.detector.roi_heads
    untouched = [model.detector.rpn, heads.box_head, heads.box_predictor]
    assert all(p.grad is None for part in untouched for p in part.parameters())
    for part in [heads.mask_head, heads.mask_predictor, model.semantic_head] + ([model.relation] if merge else []):
        assert all(p.grad is not None for p in part.parameters())


@pytest.mark.parametrize("mask_target", ["amodal", "visible"])
def test_mask_head_loss_equals_torchvisions_on_the_ground_truth_boxes(mask_target):
    model = tiny_model(detector_training="mask_head_only", mask_target=mask_target).train()
    batch = with_targets(model, shapes_items(2))
    torch.manual_seed(0)
    loss = model(batch)["loss_mask"]

    targets = [item["targets"] for item in batch]
    masks = [_visible_masks(t) if mask_target == "visible" else t["masks"] for t in targets]
    images = model._preprocess([item["image"].float() for item in batch])
    features = model.detector.backbone(images.tensors)
    boxes, labels = [t["boxes"] for t in targets], [t["labels"] + 1 for t in targets]
    heads = model.detector.roi_heads
    all_logits = heads.mask_predictor(heads.mask_head(heads.mask_roi_pool(features, boxes, images.image_sizes)))
    reference = maskrcnn_loss(all_logits, boxes, masks, labels, [torch.arange(len(b)) for b in boxes])
    torch.testing.assert_close(loss, reference)
    logits, _ = mask_head_outputs(model.detector, features, boxes, labels, images.image_sizes)
    torch.testing.assert_close(mask_head_loss(logits, boxes, masks), reference)


def test_visible_mask_targets_are_the_disjoint_visible_parts_of_the_amodal_masks():
    model = tiny_model()
    for item in with_targets(model, shapes_items(3)):
        targets = item["targets"]
        visible, amodal = _visible_masks(targets), targets["masks"]
        assert bool((visible.sum(0) <= 1).all()) and bool((visible <= amodal).all())
        assert bool(visible.flatten(1).any(1).all())  # every training instance is visible somewhere
    assert any(bool((_visible_masks(i["targets"]) != i["targets"]["masks"]).any()) for i in with_targets(model, shapes_items(3)))


def test_pair_appearance_relation_trains_and_merges():
    model = tiny_model(relation_pair_appearance_channels=4).train()
    losses = model(with_targets(model, shapes_items(2)))
    sum(losses.values()).backward()
    assert model.relation.pair_appearance.weight.grad is not None and model.relation.pair_appearance.weight.grad.any()
    model.eval()
    relation = model.predict_relations(torch.zeros(3, 64, 64, dtype=torch.uint8), BOXES, LABELS)
    assert relation.shape == (2, 2)
    merged = constant_model(relation_pair_appearance_channels=4).merge_given(torch.zeros(3, 64, 64, dtype=torch.uint8), BOXES, LABELS)
    assert merged.relation.shape == (2, 2)
