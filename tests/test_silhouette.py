"""The silhouette vote add-on (models/addons/silhouette.py), given to Panoptic-DeepLab."""

import numpy as np
import pytest
import torch

from panopticlab.config import Config, from_dict
from panopticlab.errors import InputError
from panopticlab.models import build_model
from panopticlab.models.addons.silhouette import (
    SilhouetteClassifier,
    SilhouetteTargets,
    instance_index_map,
    roughen_silhouettes,
    silhouette_crops,
)
from panopticlab.models.base import ADDON_TARGETS
from panopticlab.structures import PanopticResult, Segment
from test_pd_model import TINY, shapes_items


def rectangle_map() -> torch.Tensor:
    """A 20x20 index map: instance 1 on rows 5..8 and columns 4..9; instance 2 on the pixel (0, 19)."""
    index_map = torch.zeros(20, 20, dtype=torch.long)
    index_map[5:9, 4:10] = 1
    index_map[0, 19] = 2
    return index_map


def test_a_crop_is_the_square_around_the_box_widened_by_the_margin():
    # instance 1: box rows [5, 9), columns [4, 10): centre (7, 7), side max(4, 6) + 2 x 2 = 10,
    # so the window is [2, 12) on both axes and a 10x10 crop is one image pixel per crop pixel
    crop = silhouette_crops(rectangle_map(), 2, size=10)[0, 0]
    expected = torch.zeros(10, 10)
    expected[3:7, 2:8] = 1
    assert torch.equal(crop, expected)


def test_a_coarser_crop_holds_the_share_of_each_crop_pixel_inside_the_mask():
    # 5x5 over the same 10-pixel window: each crop pixel covers 2x2 image pixels
    crop = silhouette_crops(rectangle_map(), 2, size=5)[0, 0]
    # window rows 2..11 -> crop rows cover image rows (2,3) (4,5) (6,7) (8,9) (10,11); the mask's
    # rows 5..8 give halves in crop rows 1 and 3 and full in row 2; columns (2,3) (4,5) ... (10,11)
    # with the mask's columns 4..9: full in crop columns 1, 2, 3, empty in 0 and 4
    expected = torch.zeros(5, 5)
    expected[1, 1:4] = 0.5
    expected[2, 1:4] = 1.0
    expected[3, 1:4] = 0.5
    assert torch.equal(crop, expected)


def test_outside_the_image_is_outside_the_mask_and_an_absent_instance_is_empty():
    crops = silhouette_crops(rectangle_map(), 3, size=5)
    # instance 2 is the single corner pixel (0, 19): window side 1 + 4 = 5 centred on it,
    # rows -2..2 and columns 17..21; only the centre crop pixel is inside
    expected = torch.zeros(5, 5)
    expected[2, 2] = 1
    assert torch.equal(crops[1, 0], expected)
    assert crops.shape == (3, 1, 5, 5) and crops[2].sum() == 0  # instance 3 has no pixels
    assert silhouette_crops(rectangle_map(), 0, size=8).shape == (0, 1, 8, 8)


def test_the_index_map_numbers_the_listed_segments_in_their_order():
    id_map = torch.tensor([[0, 7, 7], [3, 3, 9], [12, 0, 9]])
    expected = torch.tensor([[0, 2, 2], [0, 0, 1], [0, 0, 1]])  # 9 is first, 7 second; 3 and 12 unlisted
    assert torch.equal(instance_index_map(id_map, [9, 7, 40]), expected)  # 40: absent, above every id
    assert torch.equal(instance_index_map(id_map, []), torch.zeros(3, 3, dtype=torch.long))


def test_roughening_keeps_solid_interiors_and_empty_crops_and_returns_binary_crops():
    torch.manual_seed(0)
    crops = torch.zeros(64, 1, 16, 16)
    crops[:32, :, 4:12, 4:12] = 1
    rough = roughen_silhouettes(crops)
    assert rough.shape == crops.shape and set(rough.unique().tolist()) <= {0.0, 1.0}
    assert rough[:32, :, 6:10, 6:10].eq(1).all()  # two pixels inside: no 5x5 box reaches the outside
    assert rough[32:].eq(0).all()
    changed = (rough[:32] != crops[:32]).flatten(1).any(dim=1)
    assert 0 < int(changed.sum()) < 32  # some crops keep their outline (box 1), others lose corners


def test_the_classifier_maps_crops_to_one_logit_per_thing_class():
    net = SilhouetteClassifier(6, width=4)
    assert net(torch.rand(3, 1, 32, 32)).shape == (3, 6)
    with pytest.raises(ValueError, match="at least 1"):
        SilhouetteClassifier(0)


def test_training_targets_are_the_non_crowd_things_with_pixels_in_contiguous_ids():
    id_map = np.zeros((20, 20), dtype=np.int32)
    id_map[5:9, 4:10] = 7  # thing
    id_map[12:15, 12:15] = 8  # crowd thing
    id_map[15:, :] = 9  # stuff
    segments = [
        Segment(7, category_id=3, isthing=True, area=24, bbox=[4, 5, 6, 4]),
        Segment(8, category_id=3, isthing=True, area=9, bbox=[12, 12, 3, 3], iscrowd=True),
        Segment(9, category_id=11, isthing=False, area=100, bbox=[0, 15, 20, 5]),
        Segment(10, category_id=5, isthing=True, area=0, bbox=[0, 0, 0, 0]),  # cropped away
    ]
    item = SilhouetteTargets({3: 2, 5: 4}, size=10)({"panoptic": PanopticResult(id_map, segments)})
    targets = item[ADDON_TARGETS]["silhouette"]
    assert targets["classes"].tolist() == [2]  # thing indices
    expected = torch.zeros(10, 10)
    expected[3:7, 2:8] = 1
    assert torch.equal(targets["crops"][0, 0], expected)


def test_with_instances_the_crops_follow_the_instances_order_once_per_visible_segment():
    id_map = np.zeros((12, 12), dtype=np.int32)
    id_map[0:4, 0:4], id_map[6:9, 6:12] = 7, 8
    segments = [
        Segment(7, category_id=3, isthing=True, area=16, bbox=[0, 0, 4, 4]),
        Segment(8, category_id=5, isthing=True, area=18, bbox=[6, 6, 6, 3]),
    ]
    # instances: 8's, a hidden one (no segment: 0), 7's, and 8's again
    instances = {"panoptic_segment_ids": torch.tensor([8, 0, 7, 8])}
    transform = SilhouetteTargets({3: 0, 5: 1}, size=8)
    with_instances = transform({"panoptic": PanopticResult(id_map, segments), "instances": instances})[ADDON_TARGETS]["silhouette"]
    without = transform({"panoptic": PanopticResult(id_map, segments)})[ADDON_TARGETS]["silhouette"]
    assert with_instances["classes"].tolist() == [1, 0] and without["classes"].tolist() == [0, 1]
    assert torch.equal(with_instances["crops"], without["crops"].flip(0))


def silhouette_model(vote: dict | None = None, seed: int = 0):
    """The tiny test model (grouping vote mean_probability) with a small silhouette vote of these
    settings (None: no silhouette vote); every heatmap value is a centre candidate (threshold -1),
    so that an untrained network still groups things."""
    torch.manual_seed(seed)
    section = {**TINY["panoptic_deeplab"], "class_vote": "mean_probability", "center_threshold": -1.0}
    addons = {} if vote is None else {"silhouette": {"width": 4, "size": 16, **vote}}
    return build_model(from_dict(Config, {"model": {**TINY, "panoptic_deeplab": section, "addons": addons}}))


def test_training_adds_a_silhouette_loss_whose_gradient_reaches_the_classifier_only_through_it():
    model = silhouette_model({})
    _, items = shapes_items(2)
    items = [model.data_transform()(item) for item in items]
    crops = torch.cat([item[ADDON_TARGETS]["silhouette"]["crops"] for item in items])
    classes = torch.cat([item[ADDON_TARGETS]["silhouette"]["classes"] for item in items])
    assert crops.shape[0] == classes.shape[0] > 2
    assert all(0 <= int(c) < len(model.categories.thing_ids) for c in classes)
    losses = model(items)
    assert sorted(losses) == ["loss_center", "loss_offset", "loss_sem_seg", "loss_silhouette"]
    # at initialisation the loss is near the log of the number of thing classes
    assert abs(losses["loss_silhouette"].item() - np.log(6)) < 1.0
    losses["loss_silhouette"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.addons["silhouette"].parameters())
    assert all(p.grad is None for p in model.network.parameters())


def test_the_silhouette_vote_gives_every_thing_the_classifier_class_and_keeps_the_grouping():
    plain, model = silhouette_model(), silhouette_model({})
    model.network.load_state_dict(plain.network.state_dict())
    classifier = model.addons["silhouette"].network.classifier
    with torch.no_grad():  # a classifier that always says the fourth thing class
        classifier.weight.zero_()
        classifier.bias.copy_(torch.tensor([0.0, 0, 0, 20, 0, 0]))
    samples, _ = shapes_items(3)
    images = [s.image for s in samples]
    predictions = list(zip(plain.predict(images), model.predict(images)))
    assert sum(s.isthing for base, _ in predictions for s in base.segments) >= 3
    for base, result in predictions:
        assert np.array_equal(base.id_map, result.id_map)
        assert [s.id for s in base.segments] == [s.id for s in result.segments]
        fourth = model.categories.ids[model.thing_ids[3]]
        for b, r in zip(base.segments, result.segments):
            if b.isthing:
                assert r.category_id == fourth
                assert r.score == pytest.approx(b.score * (np.exp(20) / (np.exp(20) + 5)))
            else:
                assert r == b


def test_the_product_vote_with_an_uninformed_classifier_equals_the_mean_probability_vote():
    plain, model = silhouette_model(), silhouette_model({"semantic_prior": True})
    model.network.load_state_dict(plain.network.state_dict())
    classifier = model.addons["silhouette"].network.classifier
    with torch.no_grad():  # uniform silhouette probabilities
        classifier.weight.zero_()
        classifier.bias.zero_()
    samples, _ = shapes_items(3)
    images = [s.image for s in samples]
    base, result = plain.predict(images), model.predict(images)
    things = [(b, r) for bb, rr in zip(base, result) for b, r in zip(bb.segments, rr.segments) if b.isthing]
    assert things  # the untrained tiny model still groups some things
    assert all(b.category_id == r.category_id for b, r in things)


def test_the_product_vote_follows_a_confident_classifier_against_a_split_semantic_vote():
    # semantic probabilities of the thing split 0.6 / 0.4 between two classes; a classifier at
    # 0.2 / 0.8 for them turns the product (0.12 against 0.32) to the second class
    model = silhouette_model({"semantic_prior": True})
    ids = model.categories.ids
    first, second = model.thing_ids[0], model.thing_ids[1]
    logits = torch.full((len(ids), 8, 8), -30.0)
    logits[first, 2:6, 2:6] = np.log(0.6)
    logits[second, 2:6, 2:6] = np.log(0.4)
    id_map = np.zeros((8, 8), dtype=np.int32)
    id_map[2:6, 2:6] = 1
    result = PanopticResult(id_map, [Segment(1, category_id=ids[first], isthing=True, area=16, bbox=[2, 2, 4, 4], score=0.5)])
    vote = model.addons["silhouette"]
    with torch.no_grad():
        vote.network.classifier.weight.zero_()
        bias = torch.full((6,), -30.0)
        bias[0], bias[1] = np.log(0.2), np.log(0.8)
        vote.network.classifier.bias.copy_(bias)
    model.eval()
    with torch.no_grad():
        relabelled = vote.relabel(result, {"sem_seg": logits})
    (segment,) = relabelled.segments
    assert segment.category_id == ids[second]
    assert segment.score == pytest.approx(0.5 * 0.32 / 0.44, rel=1e-4)


def test_config_values_of_the_classifier_are_checked_and_other_votes_build_none():
    assert len(build_model(from_dict(Config, {"model": TINY})).addons) == 0
    for key, value in (("width", 0), ("size", 3), ("loss_weight", -1.0)):
        with pytest.raises(InputError, match=f"silhouette.{key}"):
            silhouette_model({key: value})


def test_torchscript_export_refuses_a_silhouette_vote(tmp_path):
    from panopticlab.export import export_torchscript

    with pytest.raises(InputError, match="add-ons .model.addons: silhouette"):
        export_torchscript(silhouette_model({}), tmp_path / "model.pt", sample_size=(64, 64))
    assert not (tmp_path / "model.pt").exists()

