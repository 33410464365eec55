"""The detector's options: several anchor sizes per level, the samplers' IoU thresholds, crowd
regions ignored by the samplers, float32 box maths under autocast, the plain semantic head."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import DeformConv2d

from panopticlab.data.synthetic import ShapesConfig, generate_sample
from panopticlab.errors import InputError
from panopticlab.models.sognet.detector import FPN_LEVELS, crowd_covered, detect
from panopticlab.models.sognet.targets import training_targets

from test_sognet_model import CONTIGUOUS, shapes_items, tiny_model, with_targets

TWO_SIZES = [[8, 12], [16, 24], [32, 48], [64, 96], [128, 192]]


def test_two_anchor_sizes_per_level_give_twice_the_anchors_and_train():
    one, two = tiny_model(), tiny_model(anchor_sizes=TWO_SIZES)
    assert one.detector.rpn.head.cls_logits.out_channels == 3  # 1 size x 3 ratios
    assert two.detector.rpn.head.cls_logits.out_channels == 6
    assert two.detector.rpn.head.bbox_pred.out_channels == 24
    images = ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)])
    features = two.detector.backbone(images.tensors)
    anchors = two.detector.rpn.anchor_generator(images, list(features.values()))[0]
    locations = sum(f.shape[-2] * f.shape[-1] for f in features.values())
    assert anchors.shape == (6 * locations, 4)
    # the first level's anchors of ratio 1 are 8 and 12 px squares
    sides = (anchors[:, 2:] - anchors[:, :2]).round()
    assert {(8.0, 8.0), (12.0, 12.0)} <= {tuple(s.tolist()) for s in sides[:6]}
    losses = two.train()(with_targets(two, shapes_items(2)))
    assert all(torch.isfinite(v) for v in losses.values())


def test_sampler_thresholds_reach_torchvisions_matchers():
    model = tiny_model(rpn_fg_iou_threshold=0.6, rpn_bg_iou_threshold=0.2, box_fg_iou_threshold=0.55, box_bg_iou_threshold=0.45)
    rpn, heads = model.detector.rpn.proposal_matcher, model.detector.roi_heads.proposal_matcher
    assert (rpn.high_threshold, rpn.low_threshold) == (0.6, 0.2)
    assert (heads.high_threshold, heads.low_threshold) == (0.55, 0.45)


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"anchor_sizes": [[8, 12], [16], [32], [64], [128]]}, "same number of sizes"),
        ({"anchor_sizes": [[8, 12], [16, 24], [32, 48], [64, 96]]}, "5 levels"),
        ({"rpn_bg_iou_threshold": 0.8}, "rpn_bg_iou_threshold"),
        ({"box_bg_iou_threshold": 0.6}, "box_bg_iou_threshold"),
        ({"crowd_ignore_iof": 0.0}, "crowd_ignore_iof"),
        ({"semantic_conv": "dcn"}, "semantic_conv"),
        ({"box_head_conv_layers": -1}, "box_head_conv_layers"),
        ({"box_roi_resolution": 0}, "box_roi_resolution"),
    ],
)
def test_bad_detector_options_name_the_key(changes, words):
    with pytest.raises(InputError, match=words):
        tiny_model(**changes)


def test_crowd_cover_is_intersection_over_the_boxs_own_area():
    boxes = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]])
    crowd = torch.tensor([[0.0, 0, 10, 8], [25, 20, 40, 40]])  # covers 80 % of box 0 and 50 % of box 1
    assert crowd_covered(boxes, crowd, 0.7).tolist() == [True, False, True]
    assert crowd_covered(boxes, crowd, 0.85).tolist() == [False, False, False]
    assert crowd_covered(boxes, crowd[:0], 0.7).tolist() == [False, False, False]


def test_rpn_ignores_background_anchors_under_a_crowd_and_keeps_its_positives():
    anchors = [torch.tensor([[0.0, 0, 10, 10], [40, 40, 50, 50], [60, 0, 70, 10]])]
    targets = [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "crowd_boxes": torch.tensor([[0.0, 0, 64, 64]])}]
    plain = tiny_model().detector.rpn
    labels, _ = plain.assign_targets_to_anchors(anchors, targets)
    assert labels[0].tolist() == [1.0, 0.0, 0.0]  # the box's own anchor, then two background ones
    aware = tiny_model(crowd_ignore_iof=0.7).detector.rpn
    labels, _ = aware.assign_targets_to_anchors(anchors, targets)
    # the positive stays positive under the crowd; the second lies under it; the third only 40 %
    assert labels[0].tolist() == [1.0, -1.0, 0.0]


def test_roi_sampling_leaves_out_proposals_under_a_crowd():
    heads = tiny_model(crowd_ignore_iof=0.7).detector.roi_heads
    proposals = [torch.tensor([[40.0, 40, 50, 50], [0, 0, 10, 10], [55, 40, 70, 50]])]
    targets = [
        {
            "boxes": torch.tensor([[0.0, 0, 10, 10]]),
            "labels": torch.tensor([1]),
            "masks": torch.zeros(1, 64, 64, dtype=torch.bool),
            "crowd_boxes": torch.tensor([[32.0, 32, 64, 64]]),
        }
    ]
    sampled, _, labels, _ = heads.select_training_samples(proposals, targets)
    kept = {tuple(b.tolist()) for b in sampled[0]}
    assert (40.0, 40.0, 50.0, 50.0) not in kept  # inside the crowd box
    assert (55.0, 40.0, 70.0, 50.0) in kept  # 60 % inside: still a background sample
    assert (0.0, 0.0, 10.0, 10.0) in kept and 1 in labels[0].tolist()


def test_training_targets_carry_the_boxes_of_crowd_segments():
    samples = (generate_sample(ShapesConfig(height=64, width=64, crowd=1.0), 0, k) for k in range(50))
    sample = next(s for s in samples if any(segment.iscrowd for segment in s.panoptic.segments))
    item = shapes_items(1)[0] | {"panoptic": sample.panoptic}
    item.pop("instances")
    targets = training_targets(item, tiny_model().labels, CONTIGUOUS, 0.1)
    crowd = [s for s in sample.panoptic.segments if s.iscrowd]
    expected = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (s.bbox for s in crowd)], dtype=torch.float32)
    assert torch.equal(targets["crowd_boxes"], expected)


def test_box_maths_run_in_float32_under_bfloat16_autocast():
    model = tiny_model().eval()
    images = ImageList(torch.randn(1, 3, 64, 64), [(64, 64)])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        features = model.detector.backbone(images.tensors)
        assert features[FPN_LEVELS[0]].dtype == torch.bfloat16  # the convolutions do run in bf16
        anchors = model.detector.rpn.anchor_generator(images, list(features.values()))
        proposals, _ = model.detector.rpn(images, features)
        detections = detect(model.detector, images, features, score_threshold=0.0, nms_threshold=0.5, max_detections=10, class_agnostic=True)
    assert anchors[0].dtype == proposals[0].dtype == detections[0]["boxes"].dtype == detections[0]["scores"].dtype == torch.float32


def test_plain_semantic_head_has_no_deformable_convolution_and_trains():
    model = tiny_model(semantic_conv="plain").train()
    assert not any(isinstance(m, DeformConv2d) for m in model.semantic_head.modules())
    assert any(isinstance(m, DeformConv2d) for m in tiny_model().semantic_head.modules())
    losses = model(with_targets(model, shapes_items(2)))
    assert torch.isfinite(losses["loss_sem_seg"])


def test_conv_box_head_has_the_asked_convolutions_and_its_classifier_learns():
    model = tiny_model(box_head_conv_layers=2).train()
    head = model.detector.roi_heads.box_head
    convs = [m for m in head.modules() if isinstance(m, torch.nn.Conv2d)]
    channels = model.detector.backbone.out_channels
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(channels, channels, (3, 3))] * 2
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in head.modules()) == 2
    assert not any(isinstance(m, torch.nn.Conv2d) for m in tiny_model().detector.roi_heads.box_head.modules())
    batch = with_targets(model, shapes_items(2))
    losses = model(batch)
    losses["loss_classifier"].backward()
    assert all(c.weight.grad is not None and c.weight.grad.abs().sum() > 0 for c in convs)


def test_box_roi_resolution_sizes_the_pooled_grid_and_the_head():
    model = tiny_model(box_roi_resolution=14).train()
    heads = model.detector.roi_heads
    channels = model.detector.backbone.out_channels
    assert heads.box_roi_pool.output_size == (14, 14)
    assert heads.box_head.fc6.in_features == channels * 14 * 14
    assert heads.mask_roi_pool.output_size == (14, 14)  # the mask head's grid is its own
    assert tiny_model().detector.roi_heads.box_head.fc6.in_features == channels * 7 * 7
    losses = model(with_targets(model, shapes_items(2)))
    assert all(torch.isfinite(v) for v in losses.values())


def test_relation_box_options_reach_the_settings_and_the_model_still_trains_and_predicts():
    model = tiny_model(removal_within_box=True, test_outside_box="excluded")
    assert model.training_settings.removal_within_box and model.inference.removal_within_box
    assert model.inference.exclude_outside_box
    assert not tiny_model().inference.exclude_outside_box and not tiny_model().training_settings.removal_within_box
    items = shapes_items(2)
    losses = model.train()(with_targets(model, items))
    assert torch.isfinite(losses["loss_panoptic"])
    results = model.eval().predict([item["image"] for item in items])
    assert [r.id_map.shape for r in results] == [(64, 64), (64, 64)]
