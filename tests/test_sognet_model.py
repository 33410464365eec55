"""SOGNet end to end: config -> model -> losses -> predictions -> PQ, and its post-processing by hand."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from panopticlab.config import Config, from_dict, load_config
from panopticlab.data.coco_panoptic import Categories
from panopticlab.data.synthetic import SHAPES_CATEGORIES, ShapesConfig, generate_sample
from panopticlab.errors import InputError
from panopticlab.evaluation import PanopticEvaluator
from panopticlab.masks import masks_to_boxes
from panopticlab.models import build_model
from panopticlab.models.sognet import panoptic_target
from panopticlab.models.sognet.inference import (
    heuristic_assignment,
    panoptic_assignment,
    remove_small_stuff,
    resample_to_image,
    same_class_removal,
)
from panopticlab.models.sognet.labels import LabelSpace
from panopticlab.models.sognet.semantic_head import box_targets
from panopticlab.models.sognet.settings import InputSizing
from panopticlab.models.sognet.targets import stride4_id_map, training_targets
from panopticlab.structures import PanopticResult, Segment

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "sognet"
CATEGORIES = Categories(SHAPES_CATEGORIES)
CONTIGUOUS = {i: CATEGORIES.to_contiguous(i) for i in CATEGORIES.ids}

# A SOGNet small enough to train for a few dozen steps in a test (64x64 images, no resizing).
TINY = {
    "arch": "sognet",
    "categories": "shapes",
    "sognet": {
        "backbone": "timm:test_resnet",
        "fpn_channels": 32,
        "box_head_channels": 64,
        "mask_head_channels": 16,
        "semantic_num_layers": 1,
        "semantic_channels": 16,
        "relation_category_channels": 16,
        "relation_geometry_channels": 8,
        "anchor_sizes": [8, 16, 32, 64, 128],
        "min_size": 64,
        "max_size": 128,
        "rpn_pre_nms_top_n_train": 200,
        "rpn_post_nms_top_n_train": 100,
        "rpn_pre_nms_top_n_test": 100,
        "rpn_post_nms_top_n_test": 50,
        "rpn_batch_size_per_image": 64,
        "box_batch_size_per_image": 32,
        "stuff_area": 16,
    },
}


def tiny_model(seed: int = 0, addons: dict | None = None, **changes):
    """The tiny SOGNet with ``changes`` to its section and the add-ons of ``addons`` (a ``model.addons`` section)."""
    torch.manual_seed(seed)
    model = {**TINY, "sognet": {**TINY["sognet"], **changes}, "addons": addons or {}}
    return build_model(from_dict(Config, {"model": model}))


def shapes_items(n: int, size: int = 64, seed: int = 0) -> list[dict]:
    """Dataset-like items (image, panoptic, instances with amodal masks and depth) of overlapping shapes."""
    items = []
    for k in range(n):
        s = generate_sample(ShapesConfig(height=size, width=size, crowd=0, void=0, overlap=0.8), seed, k)
        masks = torch.from_numpy(np.stack([i.mask for i in s.instances]))
        items.append(
            {
                "image": torch.from_numpy(s.image.transpose(2, 0, 1).copy()),
                "image_id": k,
                "panoptic": s.panoptic,
                "instances": {
                    "masks": masks,
                    "boxes": masks_to_boxes(masks),
                    "labels": torch.tensor([CONTIGUOUS[i.category_id] for i in s.instances]),
                    "iscrowd": torch.tensor([i.iscrowd for i in s.instances]),
                    "depth": torch.tensor([i.depth for i in s.instances]),
                    "panoptic_segment_ids": torch.tensor([i.panoptic_segment_id or 0 for i in s.instances]),
                },
            }
        )
    return items


def with_targets(model, items: list[dict]) -> list[dict]:
    """The items as the trainer hands them to ``model(batch)``: through ``model.data_transform()``."""
    transform = model.data_transform()
    return [transform(item) for item in items]


def panoptic_quality(model, items) -> dict[str, float]:
    evaluator = PanopticEvaluator(CATEGORIES)
    for item, result in zip(items, model.predict([item["image"] for item in items])):
        evaluator.add(item["panoptic"], result)
    pq = evaluator.evaluate()["panoptic"]
    return {split: 100 * pq[split]["pq"] for split in ("All", "Things", "Stuff")}


def check_result(result: PanopticResult, height: int, width: int) -> None:
    """A valid prediction: the id map's segments are exactly the listed ones, with correct areas."""
    assert result.id_map.shape == (height, width) and result.id_map.dtype == np.int32
    ids, counts = np.unique(result.id_map, return_counts=True)
    areas = {int(i): int(c) for i, c in zip(ids, counts) if i != 0}
    assert {s.id: s.area for s in result.segments} == areas
    for s in result.segments:
        assert s.category_id in CATEGORIES and s.isthing == CATEGORIES.isthing(s.category_id)
        assert (s.score is not None) == s.isthing
        if s.score is not None:
            assert 0.0 <= s.score <= 1.0


# -- training ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({}, {"loss_panoptic", "loss_relation"}),
        ({"relation_appearance_channels": 8}, {"loss_panoptic", "loss_relation"}),
        ({"relation_direction_loss_weight": 1.0}, {"loss_panoptic", "loss_relation", "loss_relation_direction"}),
        ({"relation_mask_geometry_channels": 4}, {"loss_panoptic", "loss_relation"}),
        ({"panoptic": "upsnet"}, {"loss_panoptic"}),
        ({"panoptic": "heuristic"}, set()),
    ],
)
def test_forward_returns_finite_named_losses_and_backward_reaches_every_part(changes, expected):
    model = tiny_model(**changes).train()
    items = shapes_items(2)
    assert sum(float(training_targets(i, model.labels, CONTIGUOUS, 0.1)["relation"].sum()) for i in items) > 0
    losses = model(with_targets(model, items))
    detector = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"}
    assert set(losses) == detector | {"loss_sem_seg", "loss_sem_roi"} | expected
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()

    def reached(module: torch.nn.Module) -> list[str]:
        """Trainable parameters of ``module`` that got no gradient."""
        return [n for n, p in module.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]

    d = model.detector
    # every tensor of the heads, the FPN (with its global-context term) and the semantic head
    # (the zero-initialised offset convolutions included); the relation module when there is one
    for part in (d.backbone.fpn, d.rpn, d.roi_heads, model.semantic_head):
        assert reached(part) == []
    assert any(n.endswith("offset.weight") for n, _ in model.semantic_head.named_parameters())
    assert any("context" in n for n, _ in d.backbone.fpn.named_parameters())
    # timm's ResNets zero-initialise each block's last BN: the backbone is reached through the shortcuts
    assert len(reached(d.backbone.body)) < len(list(d.backbone.body.parameters()))
    if "loss_relation" in expected:
        assert reached(model.relation) == []
        assert (model.relation.appearance_channels > 0) == ("relation_appearance_channels" in changes)
    else:
        assert model.relation is None


def test_training_targets_follow_the_visible_segments_on_an_occlusion_scene():
    """A 32x32 scene: circle A (back) partly hidden by square B (front), triangle C fully hidden
    behind B, a crowd clump, VOID, sky elsewhere. Built by hand in 4x4 cells so the stride-4
    target can be read off."""
    sky, circle, square, triangle = 11, 1, 2, 3
    cells = np.zeros((8, 8), dtype=np.int64)  # visible segment id per 4x4 cell
    cells[:] = 1  # sky, segment 1
    amodal_a = np.zeros((8, 8), bool)
    amodal_a[1:5, 1:5] = True
    amodal_b = np.zeros((8, 8), bool)
    amodal_b[3:7, 3:7] = True
    amodal_c = np.zeros((8, 8), bool)
    amodal_c[4:6, 4:6] = True  # inside B: fully hidden
    cells[amodal_a] = 2  # A's visible part...
    cells[amodal_b] = 3  # ...minus what B covers
    cells[0, 6:8] = 4  # a crowd clump of circles
    cells[7, 0] = 0  # VOID
    up = lambda m: np.kron(m, np.ones((4, 4), dtype=m.dtype))
    id_map = up(cells).astype(np.int32)
    segments = [
        Segment(1, sky, False, 0, [0, 0, 0, 0]),
        Segment(2, circle, True, 0, [0, 0, 0, 0]),
        Segment(3, square, True, 0, [0, 0, 0, 0]),
        Segment(4, circle, True, 0, [0, 0, 0, 0], iscrowd=True),
    ]
    masks = torch.from_numpy(np.stack([up(amodal_b), up(amodal_a), up(amodal_c), up(cells == 4)]))
    item = {
        "image": torch.zeros(3, 32, 32, dtype=torch.uint8),
        "panoptic": PanopticResult(id_map, segments),
        "instances": {
            "masks": masks,
            "boxes": masks_to_boxes(masks),
            "labels": torch.tensor([CONTIGUOUS[square], CONTIGUOUS[circle], CONTIGUOUS[triangle], CONTIGUOUS[circle]]),
            "iscrowd": torch.tensor([False, False, False, True]),
            "depth": torch.tensor([0, 2, 1, 3]),
            "panoptic_segment_ids": torch.tensor([3, 2, 0, 4]),
        },
    }
    model = tiny_model(min_size=32, max_size=64)  # no resizing
    prepared = model.data_transform()(item)
    t = prepared["targets"]
    labels = LabelSpace(CATEGORIES)
    # the hidden triangle and the crowd clump are not training instances; B and A keep their amodal masks
    assert t["segment_ids"].tolist() == [3, 2]
    assert t["labels"].tolist() == [labels.things.index(CONTIGUOUS[square]), labels.things.index(CONTIGUOUS[circle])]
    assert torch.equal(t["masks"][1], masks[1]) and int(t["masks"][1].sum()) == 16 * 16
    assert t["boxes"].tolist() == [[12.0, 12.0, 28.0, 28.0], [4.0, 4.0, 20.0, 20.0]]
    # A and B overlap on 4 of 16 cells (>= 10 % of the smaller): related both ways
    assert t["relation"].tolist() == [[0.0, 1.0], [1.0, 0.0]]
    # semantic target: the crowd region keeps its class, VOID is 255
    semantic = t["semantic"].numpy()
    assert semantic[0, 0] == CONTIGUOUS[sky] and semantic[0, 31] == CONTIGUOUS[circle] and semantic[31, 0] == 255

    # the panoptic target at stride 4 (one pixel per cell): A only where it is visible
    target = panoptic_target(stride4_id_map(t["id_map"], 32, 32), t["segment_labels"], labels.stuff_channel, t["segment_ids"])
    s = labels.num_stuff
    expected = np.full((8, 8), labels.stuff_channel[CONTIGUOUS[sky]])
    expected[amodal_a] = s + 1
    expected[amodal_b] = s + 0
    expected[0, 6:8] = 255  # crowd: ignored
    expected[7, 0] = 255  # VOID
    assert target.numpy().tolist() == expected.tolist()
    # UPSNet's unknown class: with only B kept, A's and the crowd's pixels are the unknown target
    upsnet = tiny_model(panoptic="upsnet")
    assert sorted(upsnet._unknown_segments(t, torch.tensor([0]))) == [2, 4]

    # without an instances file the visible thing segments are the instances: they never overlap
    del item["instances"]
    t = model.data_transform()(item)["targets"]
    assert t["segment_ids"].tolist() == [2, 3]
    assert torch.equal(t["masks"][0], torch.from_numpy(id_map == 2)) and not bool(t["relation"].any())


def test_tiny_sognet_overfits_a_few_shapes_images():
    items = shapes_items(3)
    model = tiny_model()
    before = panoptic_quality(model, items)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    first = last = None
    model.train()
    batch = with_targets(model, items)
    for _ in range(60):
        total = sum(model(batch).values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        first = float(total.detach()) if first is None else first
        last = float(total.detach())
    assert last < 0.4 * first
    after = panoptic_quality(model, items)
    assert after["All"] > before["All"] + 25 and after["Things"] > 10, (before, after)
    for item, result in zip(items, model.predict([item["image"] for item in items])):
        check_result(result, 64, 64)
    # the released code's pairwise inference is an option; other image sizes work
    joint = model.inference
    model.inference = dataclasses.replace(joint, pairwise_relation=True)
    check_result(model.predict(items[0]["image"])[0], 64, 64)
    model.inference = joint
    odd = F.interpolate(items[0]["image"][None].float(), size=(48, 80), mode="bilinear")[0]
    check_result(model.predict(odd)[0], 48, 80)


@pytest.mark.parametrize("pan", ["upsnet", "heuristic"])
def test_baselines_predict_valid_results(pan):
    model = tiny_model(panoptic=pan, score_threshold=0.0, stuff_area=0)
    torch.nn.init.constant_(model.detector.roi_heads.mask_predictor.mask_fcn_logits.bias, 3.0)  # masks survive
    results = model.predict(torch.randint(0, 256, (2, 3, 40, 56), dtype=torch.uint8))
    assert len(results) == 2 and any(s.isthing for s in results[0].segments)
    for result in results:
        check_result(result, 40, 56)


def test_predict_and_relations_take_any_image_input_and_have_no_tta():
    model = tiny_model(score_threshold=0.0)
    torch.nn.init.constant_(model.detector.roi_heads.mask_predictor.mask_fcn_logits.bias, 3.0)  # masks survive
    images = torch.randint(0, 256, (2, 3, 40, 56), dtype=torch.uint8)
    results = model.predict(images)
    assert len(results) == 2
    for result in results:
        check_result(result, 40, 56)
    check_result(model.predict(images[0].permute(1, 2, 0).numpy())[0], 40, 56)
    assert list(inspect.signature(model.predict).parameters) == ["images"]  # no options it would refuse

    boxes = torch.tensor([[0.0, 0.0, 20.0, 20.0], [10.0, 5.0, 40.0, 30.0], [30.0, 20.0, 56.0, 40.0]])
    relation = model.predict_relations(images[0], boxes, torch.tensor([0, 1, 0]))
    assert relation.shape == (3, 3) and bool((relation >= 0).all())
    assert bool(((relation > 0) & (relation.T > 0)).sum() == 0) and bool((relation.diagonal() == 0).all())
    with pytest.raises(ValueError, match="not thing classes"):
        model.predict_relations(images[0], boxes, torch.tensor([0, 1, CONTIGUOUS[11]]))
    # the relation is scored through the evaluator the model contributes; a baseline has none
    (evaluator,) = model.evaluators()
    assert evaluator.relation_of == model.predict_relations
    upsnet = tiny_model(panoptic="upsnet")
    assert upsnet.evaluators() == []
    with pytest.raises(ValueError, match="no relation module"):
        upsnet.predict_relations(images[0], boxes, torch.tensor([0, 1, 0]))


# -- configs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("backbone", "vgg16", "backbone"),
        ("anchor_sizes", [8, 16, 32], "anchor_sizes"),
        ("score_threshold", 1.5, "score_threshold"),
        ("max_size", 32, "max_size"),
        ("size_divisibility", 48, "size_divisibility"),
        ("semantic_num_layers", 0, "semantic_num_layers"),
        ("panoptic", "panoptic_fpn", "panoptic"),
        ("relation_inference", "sequential", "relation_inference"),
    ],
)
def test_bad_config_values_raise_input_error_naming_the_key(key, value, words):
    with pytest.raises(InputError, match=words):
        tiny_model(**{key: value})


def test_categories_without_stuff_are_refused(tmp_path):
    things_only = tmp_path / "things.json"
    things_only.write_text('[{"id": 1, "name": "circle", "isthing": 1}]')
    config = from_dict(Config, {"model": {**TINY, "categories": str(things_only)}})
    with pytest.raises(InputError, match="stuff"):
        build_model(config)


@pytest.mark.parametrize("name", ["shapes.yaml", "r50_coco.yaml", "upsnet_r50_coco.yaml"])
def test_shipped_configs_load_and_build(name):
    config = load_config(Config, CONFIGS / name)
    assert config.model.arch == "sognet"
    model = build_model(config)
    assert (model.relation is not None) == (config.model.sognet.panoptic == "sognet")
    if name == "r50_coco.yaml":
        c = config.model.sognet
        assert (c.semantic_loss_weight, c.semantic_roi_loss_weight, c.panoptic_loss_weight, c.relation_loss_weight) == (
            0.2,
            0.04,
            0.1,
            1.0,
        )
        assert c.use_x2mask_at_test and not c.use_unknown_class and c.score_threshold == 0.6
        # ResNet-50 with frozen BN and conv1 + res2 frozen
        frozen = [n for n, p in model.detector.backbone.body.named_parameters() if not p.requires_grad]
        assert frozen and all(n.startswith(("conv1", "bn1", "layer1")) for n in frozen)
    if name == "upsnet_r50_coco.yaml":
        assert config.model.sognet.use_unknown_class and not config.model.sognet.use_x2mask_at_test


# -- pieces, by hand -------------------------------------------------------------------------------


def test_input_size_follows_torchvisions_rule():
    assert InputSizing(800, 1333).input_size(480, 640) == (800, 1067)
    assert InputSizing(800, 1333).input_size(400, 1200) == (444, 1333)  # the long side limits
    assert InputSizing(128, 256).input_size(128, 128) == (128, 128)


def test_resample_to_image_equals_upsample_crop_resize():
    torch.manual_seed(0)
    logits = torch.randn(3, 8, 12)  # stride 4 of a 32x48 padded input holding a 30x41 image
    reference = F.interpolate(logits[None], scale_factor=4, mode="bilinear", align_corners=False)[0, :, :30, :41]
    assert torch.allclose(resample_to_image(logits, (30, 41), (30, 41)), reference, atol=1e-5)
    # to another size: the same as sampling the x4 map's continuous extension at the image's pixel centres
    out = resample_to_image(logits, (32, 48), (16, 24))
    halved = F.interpolate(logits[None], scale_factor=2, mode="bilinear", align_corners=False)[0]
    assert torch.allclose(out, halved, atol=1e-5)


def test_box_targets_take_the_label_under_each_cell_centre():
    target = torch.arange(64).view(8, 8)
    crops = box_targets(target, torch.tensor([[2.0, 4.0, 6.0, 8.0]]), 2)
    # cell centres at x = 2 + (0.5, 1.5) * 2 = 3, 5 and y = 4 + (0.5, 1.5) * 2 = 5, 7
    assert crops.tolist() == [[[5 * 8 + 3, 5 * 8 + 5], [7 * 8 + 3, 7 * 8 + 5]]]


def test_same_class_removal_drops_empty_masks_and_same_class_duplicates():
    masks = torch.zeros(5, 4, 10, dtype=torch.bool)
    masks[0, :, 0:5] = True  # class 0, 20 px
    masks[1, :, 3:8] = True  # class 0: 8 of 20 px on mask 0 (40 % > 30 %): dropped
    masks[2, :, 3:8] = True  # class 1: same pixels, other class: kept
    masks[3, :, 4:10] = True  # class 0: 4 of 24 px on mask 0 (17 %): kept
    # mask 4 empty: dropped
    keep = same_class_removal(masks, torch.tensor([0, 0, 1, 0, 0]), 0.3)
    assert keep.tolist() == [0, 2, 3]


def test_panoptic_assignment_relabels_instances_by_majority_class():
    labels = LabelSpace(CATEGORIES)
    sky, grass, circle, square = (CONTIGUOUS[i] for i in (11, 12, 1, 2))
    s = labels.num_stuff
    logits = torch.full((s + 3, 2, 6), -5.0)
    logits[labels.stuff_channel[sky], 0, :] = 1.0  # row 0: sky
    logits[s + 0, 1, 0:2] = 2.0  # instance 0 (circle), semantic says circle: kept
    logits[s + 1, 1, 2:4] = 2.0  # instance 1 (square), semantic says grass on both pixels: -> grass
    logits[s + 2, 1, 4:6] = 2.0  # instance 2 (square), semantic says grass on one of two: stays
    semantic = torch.tensor([[sky] * 6, [circle, circle, grass, grass, grass, square]])
    instance, category = panoptic_assignment(
        logits, semantic, torch.tensor([circle, square, square]), labels, relabel_fraction=0.6, has_unknown=False
    )
    assert instance.tolist() == [[-1] * 6, [0, 0, -1, -1, 2, 2]]
    assert category.tolist() == [[sky] * 6, [-1, -1, grass, grass, -1, -1]]
    # the unknown channel wins -> VOID
    with_unknown = torch.cat([logits, torch.full((1, 2, 6), -9.0)])
    with_unknown[-1, 0, 0] = 9.0
    instance, category = panoptic_assignment(
        with_unknown, semantic, torch.tensor([circle, square, square]), labels, relabel_fraction=0.6, has_unknown=True
    )
    assert instance[0, 0] == -1 and category[0, 0] == -1


def test_heuristic_assignment_and_stuff_area_limit():
    labels = LabelSpace(CATEGORIES)
    sky, grass, circle = CONTIGUOUS[11], CONTIGUOUS[12], CONTIGUOUS[1]
    masks = torch.zeros(3, 2, 8, dtype=torch.bool)
    masks[0, :, 0:4] = True  # first instance: 8 px
    masks[1, :, 2:6] = True  # half on the first: 4 of 8 free (< 70 %): dropped
    masks[2, 0, 3:7] = True  # 3 of 4 free (75 %): takes the 3 free pixels
    semantic = torch.tensor([[sky] * 6 + [circle, grass], [sky] * 5 + [circle, circle, grass]])
    instance, category = heuristic_assignment(masks, semantic, labels, min_unoccupied=0.7)
    assert instance.tolist() == [[0, 0, 0, 0, 2, 2, 2, -1], [0, 0, 0, 0, -1, -1, -1, -1]]
    # free pixels: semantic stuff -> that stuff; semantic thing without instance -> VOID
    assert category.tolist() == [[-1] * 7 + [grass], [-1] * 4 + [sky, -1, -1, grass]]
    assert remove_small_stuff(instance, category, 2).tolist() == [[-1] * 7 + [grass], [-1] * 7 + [grass]]


def test_backbone_weights_load_when_the_model_is_built(tmp_path):
    import timm

    torch.manual_seed(1)
    source = timm.create_model("test_resnet", pretrained=False)
    torch.save(source.state_dict(), tmp_path / "timm.pth")
    model = tiny_model(backbone_weights=str(tmp_path / "timm.pth"))
    ours = model.detector.backbone.body.body.state_dict()
    assert ours and all(torch.equal(v, source.state_dict()[k]) for k, v in ours.items())
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "partial.pth")
    with pytest.raises(InputError, match="partial.pth"):
        tiny_model(backbone="resnet50", backbone_weights=str(tmp_path / "partial.pth"))


def test_relation_lr_scale_puts_the_relation_module_in_its_own_group_at_that_scale():
    from panopticlab.engine.schedule import set_learning_rate
    from panopticlab.engine.trainer import build_optimizer

    config = load_config(Config, CONFIGS / "shapes.yaml")
    model = tiny_model(relation_lr_scale=10.0)
    groups = model.parameter_groups()
    relation = {id(p) for p in model.relation.parameters()}
    assert [g["lr_scale"] for g in groups] == [1.0, 10.0]
    assert {id(p) for p in groups[1]["params"]} == relation
    assert not relation & {id(p) for p in groups[0]["params"]}
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len([p for p in model.parameters() if p.requires_grad])
    optimizer = build_optimizer(model, config)
    set_learning_rate(optimizer, 1e-3)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, 1e-2]
    # the released training: one group, in the parameters' order
    plain_model = tiny_model()
    plain = plain_model.parameter_groups()
    assert len(plain) == 1 and [id(p) for p in plain[0]["params"]] == [id(p) for p in plain_model.parameters() if p.requires_grad]
