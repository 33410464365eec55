"""The add-on protocol (models/base.py): the hooks each family calls, the config's one place for the
add-ons, and the former family keys that now name it."""

from __future__ import annotations

import pickle
from dataclasses import replace

import pytest
import torch

from panopticlab.config import Config, from_dict
from panopticlab.config.addons import KEYS_MOVED_TO_ADDONS
from panopticlab.errors import InputError
from panopticlab.models import build_model
from panopticlab.models.base import ADDON_TARGETS, AddOn, addon_targets
from test_pd_model import TINY as PD_TINY
from test_pd_model import shapes_items as pd_shapes_items
from test_sognet_model import TINY as SOGNET_TINY
from test_sognet_model import shapes_items as sognet_shapes_items
from test_sognet_model import tiny_model as sognet_tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


class Probe(AddOn):
    """An add-on that uses every hook and records what the family handed it."""

    name = "probe"

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))
        self.refined_maps: list[dict[str, tuple[int, ...]]] = []
        self.dense: list[dict[str, tuple[int, ...]]] = []

    def data_transform(self):
        return MarkItem()

    def loss(self, batch, outputs):
        marks = addon_targets(batch, self.name)
        return {"loss_probe": self.weight * float(sum(marks)) * outputs["sem_seg"].float().mean() * 0}

    @property
    def refines(self) -> bool:
        return True

    def refine(self, images, maps):
        self.refined_maps.append({"images": tuple(images.shape), **{k: tuple(v.shape) for k, v in maps.items()}})
        return maps

    def relabel(self, result, dense):
        self.dense.append({k: tuple(v.shape) for k, v in dense.items()})
        return replace(result, segments=[replace(s, score=-1.0) if s.isthing else s for s in result.segments])


class MarkItem:
    """The probe's data transform: it sees the item after the family's transform (targets made)."""

    def __call__(self, item):
        assert "targets" in item
        return {**item, ADDON_TARGETS: {**item.get(ADDON_TARGETS, {}), "probe": 1}}


def pd_model():
    torch.manual_seed(0)
    section = {**PD_TINY["panoptic_deeplab"], "center_threshold": -1.0}
    return build_model(from_dict(Config, {"model": {**PD_TINY, "panoptic_deeplab": section}}))


def test_panoptic_deeplab_calls_every_hook_at_its_point():
    model, probe = pd_model(), Probe()
    model.set_addons([probe])
    _, items = pd_shapes_items(2)
    transform = pickle.loads(pickle.dumps(model.data_transform()))  # it runs in loader workers
    batch = [transform(item) for item in items]
    assert all(item[ADDON_TARGETS] == {"probe": 1} and "targets" in item for item in batch)
    losses = model(batch)
    assert list(losses) == ["loss_sem_seg", "loss_center", "loss_offset", "loss_probe"]  # the family's first
    images = [item["image"] for item in items]
    results = model.predict(images)
    height, width = images[0].shape[-2:]
    classes = len(model.categories)
    # one call for the batch of two equal-sized images: probabilities and the centres offsets point to
    assert probe.refined_maps == [{"images": (2, 3, height, width), "semantic": (2, classes, height, width), "centres": (2, 2, height, width)}]
    assert probe.dense == [{"sem_seg": (classes, height, width)}] * 2
    assert any(s.isthing for r in results for s in r.segments)
    assert all(s.score == -1.0 for r in results for s in r.segments if s.isthing)


@pytest.mark.parametrize("panoptic, maps", [("sognet", ["panoptic"]), ("heuristic", ["semantic", "masks"])])
def test_sognet_calls_every_hook_at_its_point(panoptic, maps):
    model, probe = sognet_tiny_model(panoptic=panoptic, score_threshold=0.0), Probe()
    model.set_addons([probe])
    items = sognet_shapes_items(2)
    batch = [model.data_transform()(item) for item in items]
    assert list(model(batch))[-1] == "loss_probe"
    model.eval()
    (result,) = model.predict(items[0]["image"])
    height, width = items[0]["image"].shape[-2:]
    (seen,) = probe.refined_maps
    assert list(seen) == ["images", *maps] and seen["images"] == (1, 3, height, width)
    assert all(shape[0] == 1 and shape[-2:] == (height, width) for name, shape in seen.items() if name != "images")
    assert probe.dense == [{"sem_seg": (len(model.categories), height, width)}]
    assert all(s.score == -1.0 for s in result.segments if s.isthing)
    # merge_given's classes are given: no add-on relabels them (the refinement still runs)
    instances = items[0]["instances"]
    given = model.merge_given(items[0]["image"], instances["boxes"][:1].float(), instances["labels"][:1])
    assert len(probe.dense) == 1 and len(probe.refined_maps) == 2
    assert all(s.score != -1.0 for s in given.result.segments if s.isthing)


def test_a_batch_without_an_addons_targets_is_a_clear_error():
    model = pd_model()
    model.set_addons([Probe()])
    _, items = pd_shapes_items(1)
    with pytest.raises(ValueError, match="no 'addon_targets' of add-on 'probe'"):
        model([model.targets_transform()(item) for item in items])


def test_addons_come_after_the_familys_parameters_which_keep_their_initial_values():
    # same seed, with and without add-ons: the family's tensors are the same, in the same order, first
    plain = sognet_tiny_model()
    given = sognet_tiny_model(addons={"silhouette": {}, "bilateral": {}})
    names = [name for name, _ in plain.named_parameters()]
    assert [name for name, _ in given.named_parameters()][: len(names)] == names
    assert all(name.startswith("addons.silhouette.") for name, _ in list(given.named_parameters())[len(names) :])
    given_state = given.state_dict()
    assert all(torch.equal(value, given_state[key]) for key, value in plain.state_dict().items())
    assert list(given.addons) == ["silhouette", "bilateral"]


def test_two_addons_of_one_name_are_refused():
    with pytest.raises(ValueError, match="distinct"):
        pd_model().set_addons([Probe(), Probe()])


@pytest.mark.parametrize("section", ["panoptic_deeplab", "sognet"])
@pytest.mark.parametrize("key", sorted(KEYS_MOVED_TO_ADDONS))
def test_a_former_family_key_names_its_new_place(section, key):
    tiny = PD_TINY if section == "panoptic_deeplab" else SOGNET_TINY
    config = {"model": {**tiny, section: {**tiny[section], key: 1}}}
    with pytest.raises(InputError, match=f"'model.{section}.{key}' has moved to {KEYS_MOVED_TO_ADDONS[key]}$"):
        from_dict(Config, config)


@pytest.mark.parametrize(
    "section, key, value, place",
    [
        ("panoptic_deeplab", "class_vote", "silhouette", "model.addons.silhouette"),
        ("panoptic_deeplab", "class_vote", "silhouette_mean_probability", "model.addons.silhouette with semantic_prior: true"),
        ("sognet", "class_vote", "silhouette", "model.addons.silhouette"),
        ("sognet", "silhouette_classifier", True, "model.addons.silhouette"),
    ],
)
def test_a_former_family_value_names_its_new_place(section, key, value, place):
    tiny = PD_TINY if section == "panoptic_deeplab" else SOGNET_TINY
    with pytest.raises(InputError, match=f"'model.{section}.{key}.*' has moved to {place}"):
        from_dict(Config, {"model": {**tiny, section: {**tiny[section], key: value}}})


def test_the_addons_section_reads_each_addon_and_its_defaults():
    config = from_dict(Config, {"model": {"addons": {"bilateral": {}, "silhouette": {"size": 16}}}})
    assert config.model.addons.bilateral.iterations == 5 and config.model.addons.silhouette.size == 16
    assert config.model.addons.silhouette.width == 16 and config.model.addons.silhouette.relabel
    default = from_dict(Config, {}).model.addons
    assert default.silhouette is None and default.bilateral is None
    with pytest.raises(InputError, match="unknown key 'model.addons.crf'"):
        from_dict(Config, {"model": {"addons": {"crf": {}}}})
