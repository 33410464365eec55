"""SOGNet given the two add-ons for data whose classes are shapes: the silhouette class vote and the
test-time bilateral refinement of the panoptic logits (both off by default)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import panopticlab.models.sognet.model as sognet_model
from panopticlab.errors import InputError
from panopticlab.models.addons.silhouette import roughen_silhouettes, silhouette_crops
from panopticlab.models.sognet.model import _visible_masks
from test_sognet_merge_given import BOXES, LABELS, constant_model
from test_sognet_model import shapes_items, tiny_model, with_targets

pytestmark = pytest.mark.usefixtures("one_thread")


def test_training_adds_a_silhouette_loss_whose_gradient_reaches_the_classifier_only_through_it():
    model = tiny_model(addons={"silhouette": {}}).train()
    vote = model.addons["silhouette"]
    losses = model(with_targets(model, shapes_items(2)))
    assert "loss_silhouette" in losses
    # at initialisation the loss is near the log of the number of thing classes
    assert abs(losses["loss_silhouette"].item() - np.log(model.labels.num_things)) < 1.0
    losses["loss_silhouette"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in vote.parameters())
    assert all(p.grad is None for part in (model.detector, model.semantic_head, model.relation) for p in part.parameters())
    # the crops are each training instance's visible segment, cut out alone, in order
    batch = with_targets(model, shapes_items(2))
    targets = [item["targets"] for item in batch]
    torch.manual_seed(0)
    loss = vote.loss(batch, {})["loss_silhouette"]
    crops = torch.cat([silhouette_crops(visible.long(), 1, vote.size) for t in targets for visible in _visible_masks(t)])
    classes = torch.cat([t["labels"] for t in targets])
    torch.manual_seed(0)
    torch.testing.assert_close(loss, F.cross_entropy(vote.network(roughen_silhouettes(crops)), classes))
    # without the add-on the model has no classifier; relabel: false builds it (to test such weights with the box classes)
    assert len(tiny_model().addons) == 0
    assert "silhouette" in tiny_model(addons={"silhouette": {"relabel": False}}).addons


def given_detections(monkeypatch, scores: tuple[float, float] = (0.9, 0.8)) -> None:
    """Every detection step returns the two squares of ``BOXES`` with classes ``LABELS`` (the
    tiny models' input is the image itself: min_size 64 on 64 x 64 images)."""
    # the detector's labels are thing indices + 1: THINGS are the first two thing classes
    detections = {"boxes": BOXES, "labels": torch.tensor([1, 2]), "scores": torch.tensor(scores)}

    def detect(*args, **kwargs):
        return [dict(detections)]

    monkeypatch.setattr(sognet_model, "detect", detect)


def test_the_silhouette_vote_gives_every_thing_the_classifier_class_and_keeps_the_segments(monkeypatch):
    given_detections(monkeypatch)
    box_vote, model = constant_model(), constant_model(addons={"silhouette": {}})
    classifier = model.addons["silhouette"].network
    with torch.no_grad():  # a classifier that always says the third thing class
        classifier.classifier.weight.zero_()
        classifier.classifier.bias.zero_()
        classifier.classifier.bias[2] = 20.0
    image = torch.zeros(3, 64, 64, dtype=torch.uint8)
    (base,), (result,) = box_vote.predict(image), model.predict(image)
    assert sorted(s.score for s in base.segments if s.isthing) == pytest.approx([0.8, 0.9])
    assert np.array_equal(base.id_map, result.id_map)
    assert [s.id for s in base.segments] == [s.id for s in result.segments]
    probability = np.exp(20) / (np.exp(20) + model.labels.num_things - 1)
    for b, r in zip(base.segments, result.segments, strict=True):
        if b.isthing:
            assert r.category_id == model.categories.thing_ids[2]
            assert r.score == pytest.approx(b.score * probability)
        else:
            assert r == b
    # the same classifier with the box classes changes nothing
    box_vote_with_classifier = constant_model(addons={"silhouette": {"relabel": False}})
    box_vote_with_classifier.addons["silhouette"].network.load_state_dict(classifier.state_dict())
    assert box_vote_with_classifier.predict(image)[0].segments == base.segments


@pytest.mark.parametrize("panoptic", ["sognet", "upsnet", "heuristic"])
def test_the_bilateral_refinement_moves_an_instance_boundary_towards_the_images_edge(panoptic):
    # one square instance whose box [0, 40) overhangs a bright square [0, 32) on a black image:
    # its mask logits fill the box, so without refinement it owns the box; refined, pixels of the
    # overhang, black like the stuff around them, go to the stuff. The heuristic merge's masks
    # (sigmoid, 0 outside the box) move all the way; the panoptic head's softmax keeps the
    # instance's zero logits outside the box, so the stuff wins the overhang more slowly
    image = torch.zeros(3, 64, 64, dtype=torch.uint8)
    image[:, :32, :32] = 200
    box, label = BOXES[:1], LABELS[:1]
    options = {"panoptic": panoptic, "unknown_class": False, "relabel_fraction": 1.0, "stuff_area": 0}

    def owned(**changes) -> torch.Tensor:
        model = constant_model(**options, **changes)
        with torch.no_grad():  # the instance's class 4 and one stuff class 3: the stuff wins outside the box
            model.semantic_head.classifier.bias[label] = 4.0
            model.semantic_head.classifier.bias[model.labels.stuff[0]] = 3.0
        return model.merge_given(image, box, label).owner == 0

    in_box, bright = torch.zeros(64, 64, dtype=torch.bool), torch.zeros(64, 64, dtype=torch.bool)
    in_box[:40, :40] = True
    bright[:32, :32] = True
    assert torch.equal(owned(), in_box)
    refined = owned(addons={"bilateral": {"iterations": 10, "radius": 5, "sigma_color": 5.0}})
    assert bool((refined >= bright).all()) and bool((refined <= in_box).all())
    overhang = int(in_box.sum() - bright.sum())
    if panoptic == "heuristic":
        assert torch.equal(refined, bright)
    else:
        assert int(refined.sum() - bright.sum()) < 0.8 * overhang


@pytest.mark.parametrize(
    "changes, addons, key",
    [
        ({"class_vote": "mask"}, {}, "class_vote"),
        ({}, {"silhouette": {"size": 2}}, "silhouette.size"),
        ({}, {"silhouette": {"loss_weight": -1.0}}, "silhouette.loss_weight"),
        ({"class_vote": "silhouette"}, {}, "model.addons.silhouette"),
        ({"silhouette_classifier": False}, {}, "model.addons.silhouette"),
        ({}, {"bilateral": {"iterations": -1}}, "bilateral.iterations"),
        ({"test_pipeline": "released"}, {"bilateral": {"iterations": 2}}, "test_pipeline: panopticlab"),
        ({}, {"bilateral": {"radius": 0}}, "bilateral.radius"),
        ({}, {"bilateral": {"sigma_color": 0.0}}, "bilateral.sigma_color"),
    ],
)
def test_bad_option_values_are_named(changes, addons, key):
    with pytest.raises(InputError, match=key):
        tiny_model(addons=addons, **changes)
