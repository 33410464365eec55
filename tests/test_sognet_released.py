"""The released SOGNet / UPSNet checkpoints: every key of the released definitions maps onto the
model of the matching config, and the conventions of the released network are the released code's.

The key lists come from the released code itself (tools/released_sognet_keys.py builds the released
networks and lists their state dicts); the test checkpoints are random tensors of those shapes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from panopticlab.cli import main
from panopticlab.config import Config, load_config
from panopticlab.errors import InputError
from panopticlab.models import build_model, load_model
from panopticlab.models.sognet.detector import move_stride_to_1x1
from panopticlab.models.sognet.released import convert_released, released_key, semantic_order

ROOT = Path(__file__).resolve().parents[1]
KEYS = ROOT / "tests" / "data" / "released_keys"
RELEASED = {
    "sognet_r50_coco": "configs/sognet/sognet_r50_coco_released.yaml",
    "upsnet_r50_coco": "configs/sognet/upsnet_r50_coco_released.yaml",
    "upsnet_r50_cityscapes": "configs/sognet/upsnet_r50_cityscapes_released.yaml",
}
SMALL_INPUT = ["model.sognet.min_size=96", "model.sognet.max_size=128"]

pytestmark = pytest.mark.usefixtures("one_thread")


def released_checkpoint(name: str, path: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """A checkpoint of the released network's keys and shapes, random values (variances positive)."""
    description = json.loads((KEYS / f"{name}.json").read_text())
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, spec in description["keys"].items():
        if spec["dtype"] == "int64":
            state[key] = torch.zeros(spec["shape"], dtype=torch.int64)
        else:
            tensor = torch.randn(spec["shape"], generator=generator) * 0.02
            state[key] = tensor.abs() + 0.5 if key.endswith("running_var") else tensor
    torch.save(state, path)
    return state


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_every_released_key_maps_and_the_model_runs(name, tmp_path):
    config = ROOT / RELEASED[name]
    state = released_checkpoint(name, tmp_path / f"{name}.pth")
    out = tmp_path / f"{name}.safetensors"
    summary = convert_released(tmp_path / f"{name}.pth", config, out)
    model = load_model(config, out, SMALL_INPUT)
    # every released tensor is in the model, as the released code holds it
    released_params = sum(v.numel() for k, v in state.items() if not k.endswith("num_batches_tracked"))
    assert summary.num_values == sum(v.numel() for v in model.state_dict().values()) == released_params
    body = model.detector.backbone.body
    torch.testing.assert_close(body.layer2[3].conv2.weight, state["resnet_backbone.res3.layers.3.conv2.weight"])
    torch.testing.assert_close(body.layer1[0].bn3.running_var, state["resnet_backbone.res2.layers.0.bn3.running_var"])
    assert body.layer2[0].conv1.stride == (2, 2) and body.layer2[0].conv2.stride == (1, 1)  # caffe-style
    # a full forward pass on an image (small input size: the weights are random)
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 80, 120), dtype=np.uint8))
    with torch.no_grad():
        result = model.predict(image)[0]
    assert result.id_map.shape == (80, 120)


def test_the_semantic_classes_are_reordered_as_the_released_data_orders_them(tmp_path):
    """Released COCO classes: the 53 stuff classes, then the 80 things (init_coco.py); ours: category order
    (things first). Released Cityscapes: trainIds, stuff first, as ours."""
    coco = semantic_order(list(range(80)), list(range(80, 133)))
    assert coco[0] == 53 and coco[79] == 132 and coco[80] == 0 and coco[132] == 52  # person, toothbrush, banner, wall-other-merged
    assert semantic_order(list(range(11, 19)), list(range(11))) == list(range(19))
    state = released_checkpoint("sognet_r50_coco", tmp_path / "s.pth")
    out = tmp_path / "s.safetensors"
    convert_released(tmp_path / "s.pth", ROOT / RELEASED["sognet_r50_coco"], out)
    model = load_model(ROOT / RELEASED["sognet_r50_coco"], out)
    classifier = model.semantic_head.classifier
    torch.testing.assert_close(classifier.weight[0], state["fcn_head.score.weight"][53])  # person
    torch.testing.assert_close(classifier.bias[80], state["fcn_head.score.bias"][0])  # the first stuff class
    # the relation's 1x1 convolutions become linear layers
    torch.testing.assert_close(model.relation.geometry.weight, state["relation_head.W.0.weight"][:, :, 0, 0])


def test_released_key_names():
    cases = {
        "resnet_backbone.conv1.conv1.weight": "detector.backbone.body.conv1.weight",
        "resnet_backbone.res3.layers.2.conv2.weight": "detector.backbone.body.layer2.2.conv2.weight",
        "resnet_backbone.res5.layers.0.downsample.1.running_mean": "detector.backbone.body.layer4.0.downsample.1.running_mean",
        "fpn.fpn_p2_1x1.weight": "detector.backbone.fpn.inner_blocks.0.0.weight",
        "fpn.fpn_p4.bias": "detector.backbone.fpn.layer_blocks.2.0.bias",
        "rpn.conv_proposal.0.weight": "detector.rpn.head.conv.0.0.weight",
        "rcnn.fc6.0.weight": "detector.roi_heads.box_head.fc6.weight",
        "mask_branch.mask_conv4.0.bias": "detector.roi_heads.mask_head.3.0.bias",
        "mask_branch.mask_deconv1.0.weight": "detector.roi_heads.mask_predictor.conv5_mask.weight",
        "fcn_head.fcn_subnet.conv.1.0.conv_offset.weight": "semantic_head.subnet.1.offset.weight",
        "relation_head.U.0.weight": "relation.category_first.weight",
    }
    for released, ours in cases.items():
        assert released_key(released, global_context=False) == ours
    assert released_key("fpn.fpn_p5_1x1.weight", global_context=True) == "detector.backbone.fpn.inner_blocks.3.lateral.0.weight"
    assert released_key("fpn.fpn_p5_1x1.weight", global_context=False) == "detector.backbone.fpn.inner_blocks.3.0.weight"
    assert released_key("fpn.fpn_gap.bias", global_context=True) == "detector.backbone.fpn.inner_blocks.3.context.bias"
    assert released_key("rcnn.unknown.weight", global_context=False) is None


def test_a_checkpoint_that_does_not_fit_is_refused_with_the_keys_named(tmp_path, capsys):
    config = ROOT / RELEASED["upsnet_r50_cityscapes"]
    state = released_checkpoint("upsnet_r50_cityscapes", tmp_path / "ok.pth")
    broken = {
        "extra": {**state, "rcnn.fc8.weight": torch.zeros(1)},
        "missing": {k: v for k, v in state.items() if k != "rpn.cls_score.bias"},
        "shape": {**state, "rcnn.cls_score.weight": torch.zeros(81, 1024)},
    }
    words = {"extra": "rcnn.fc8.weight", "missing": "rpn.head.cls_logits.bias", "shape": "box_predictor.cls_score.weight"}
    for case, tensors in broken.items():
        path = tmp_path / f"{case}.pth"
        torch.save(tensors, path)
        out = tmp_path / f"{case}.safetensors"
        with pytest.raises(InputError, match=words[case]):
            convert_released(path, config, out)
        assert main(["convert", "upsnet", str(path), str(out), "--config", str(config)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{case}.pth" in err[0] and not out.exists()
    # a pickle that would run code is refused by torch.load(weights_only=True)
    class Exploit:
        def __reduce__(self):
            return (print, ("ran",))

    torch.save({"x": Exploit()}, tmp_path / "evil.pth")
    assert main(["convert", "sognet", str(tmp_path / "evil.pth"), str(tmp_path / "e.safetensors"), "--config", str(config)]) == 2
    assert "ran" not in capsys.readouterr().out
    assert main(["convert", "sognet", str(tmp_path / "ok.pth"), str(tmp_path / "e.safetensors")]) == 2
    assert "needs --config" in capsys.readouterr().err


def test_caffe_style_bottleneck_strides_its_first_1x1_conv():
    """The released Bottleneck: conv1 (1x1, stride s) -> BN -> ReLU -> conv2 (3x3, stride 1) -> BN -> ReLU -> conv3
    (1x1) -> BN, + downsample (1x1 stride s, BN); then ReLU. Computed here with F.conv2d as the released code
    runs it, against torchvision's block after move_stride_to_1x1."""
    import torchvision

    torch.manual_seed(0)
    body = torchvision.models.resnet50(weights=None).eval()
    move_stride_to_1x1(body)
    block = body.layer3[0]
    x = torch.randn(1, 512, 14, 18)

    def bn(y, m):
        return F.batch_norm(y, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    with torch.no_grad():
        y = F.relu(bn(F.conv2d(x, block.conv1.weight, stride=2), block.bn1))
        y = F.relu(bn(F.conv2d(y, block.conv2.weight, stride=1, padding=1), block.bn2))
        y = bn(F.conv2d(y, block.conv3.weight), block.bn3)
        shortcut = bn(F.conv2d(x, block.downsample[0].weight, stride=2), block.downsample[1])
        expected = F.relu(y + shortcut)
        torch.testing.assert_close(block(x), expected)
    assert block(x).shape == (1, 1024, 7, 9)


def test_bgr_input_minus_the_released_pixel_means():
    """The released input: BGR, minus (102.9801, 115.9465, 122.7717), not divided (config.network.pixel_means)."""
    config = load_config(Config, ROOT / RELEASED["sognet_r50_coco"], SMALL_INPUT)
    with torch.device("meta"):
        assert build_model(config).sizing.bgr
    model = build_model(load_config(Config, ROOT / RELEASED["upsnet_r50_cityscapes"], SMALL_INPUT))
    image = torch.zeros(3, 4, 4)
    image[0], image[1], image[2] = 10.0, 20.0, 30.0  # R, G, B
    batch = model._preprocess([image]).tensors
    assert batch[0, :, 0, 0].tolist() == pytest.approx([30 - 102.9801, 20 - 115.9465, 10 - 122.7717])


def test_released_fpn_rpn_and_heads_compute_what_the_released_modules_compute(tmp_path):
    """The network parts whose maths is the same, with the converted weights: the released FPN
    (fpn.py: lateral 1x1 convs with bias, + Linear(GAP(C5)) on P5's lateral, nearest x2 top-down,
    3x3 outputs, P6 = 1x1 max-pool with stride 2), the RPN head (rpn.py: 3x3 conv + ReLU, 1x1 scores
    and deltas), the box head (rcnn.py: fc6, fc7 with ReLU, scores and deltas) and the mask head
    (mask_conv1..4 3x3 + ReLU, 2x2 deconvolution + ReLU, 1x1 scores), written out here from the released
    code with F operations, against panopticlab's modules."""
    state = released_checkpoint("sognet_r50_coco", tmp_path / "s.pth", seed=3)
    w = {k: v * 10 if k.endswith("weight") and v.dim() > 1 else v for k, v in state.items()}  # larger signals
    torch.save(w, tmp_path / "s.pth")
    convert_released(tmp_path / "s.pth", ROOT / RELEASED["sognet_r50_coco"], tmp_path / "s.safetensors")
    model = load_model(ROOT / RELEASED["sognet_r50_coco"], tmp_path / "s.safetensors")
    generator = torch.Generator().manual_seed(0)
    c = {n: torch.randn(1, ch, 32 // 2**i, 48 // 2**i, generator=generator) for i, (n, ch) in enumerate(zip("2345", (256, 512, 1024, 2048)))}

    def conv(x, name, padding=0):
        return F.conv2d(x, w[f"{name}.weight"], w[f"{name}.bias"], padding=padding)

    with torch.no_grad():
        lateral = {n: conv(c[n], f"fpn.fpn_p{n}_1x1") for n in "2345"}
        gap = F.linear(F.adaptive_avg_pool2d(c["5"], (1, 1)).flatten(1), w["fpn.fpn_gap.weight"], w["fpn.fpn_gap.bias"])
        lateral["5"] = lateral["5"] + gap.view(1, 256, 1, 1)
        up = lambda x: F.interpolate(x, scale_factor=2, mode="nearest")  # noqa: E731
        plus = {"5": lateral["5"]}
        for n, deeper in (("4", "5"), ("3", "4"), ("2", "3")):
            plus[n] = up(plus[deeper]) + lateral[n]
        expected = [conv(plus[n], f"fpn.fpn_p{n}", padding=1) for n in "2345"]
        expected.append(F.max_pool2d(expected[-1], kernel_size=1, stride=2))
        fpn = model.detector.backbone.fpn
        got = list(fpn({str(i): c[n] for i, n in enumerate("2345")}).values())
        for e, g in zip(expected, got, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)

        p3 = expected[1]
        hidden = F.relu(conv(p3, "rpn.conv_proposal.0", padding=1))
        scores, deltas = model.detector.rpn.head([p3])
        torch.testing.assert_close(scores[0], conv(hidden, "rpn.cls_score"), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(deltas[0], conv(hidden, "rpn.bbox_pred"), rtol=1e-4, atol=1e-4)

        pooled = torch.randn(3, 256, 7, 7, generator=generator)
        fc = F.relu(F.linear(F.relu(F.linear(pooled.flatten(1), w["rcnn.fc6.0.weight"], w["rcnn.fc6.0.bias"])), w["rcnn.fc7.0.weight"], w["rcnn.fc7.0.bias"]))
        heads = model.detector.roi_heads
        cls_score, bbox_pred = heads.box_predictor(heads.box_head(pooled))
        torch.testing.assert_close(cls_score, F.linear(fc, w["rcnn.cls_score.weight"], w["rcnn.cls_score.bias"]), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(bbox_pred, F.linear(fc, w["rcnn.bbox_pred.weight"], w["rcnn.bbox_pred.bias"]), rtol=1e-4, atol=1e-4)

        x = torch.randn(2, 256, 14, 14, generator=generator)
        hidden = x
        for k in range(1, 5):
            hidden = F.relu(conv(hidden, f"mask_branch.mask_conv{k}.0", padding=1))
        deconv = F.relu(F.conv_transpose2d(hidden, w["mask_branch.mask_deconv1.0.weight"], w["mask_branch.mask_deconv1.0.bias"], stride=2))
        got = heads.mask_predictor(heads.mask_head(x))
        torch.testing.assert_close(got, conv(deconv, "mask_branch.mask_score"), rtol=1e-4, atol=1e-4)


def test_released_semantic_head_and_relation_compute_what_the_released_modules_compute(tmp_path):
    """With converted weights: the released FCN head (fcn.py: the deformable subnet shared by
    P2..P5, each DeformConvWithOffset's offsets from its own 3x3 conv, ReLU; P3..P5 upsampled x2/x4/x8
    bilinearly, concatenated, 1x1 score, released class order) and the released relation head
    (relation.py: U/V one-hot embeddings multiplied, W on the box position matrix with +1 widths,
    P, R = sigmoid, O = relu(R - R^T), then mask - sum_j mask sigmoid(mask) sigmoid(mask_j) O_ij),
    written out with F operations (the deformable convolution is torchvision's, shown equal to the
    released kernel in test_detectron_boxes.py), against panopticlab's modules."""
    from torchvision.ops import deform_conv2d

    from panopticlab.models.sognet.overlap_removal import remove_overlaps

    state = released_checkpoint("sognet_r50_coco", tmp_path / "s.pth", seed=4)
    w = {k: v * 10 if k.endswith("weight") and v.dim() > 1 else v for k, v in state.items()}
    torch.save(w, tmp_path / "s.pth")
    convert_released(tmp_path / "s.pth", ROOT / RELEASED["sognet_r50_coco"], tmp_path / "s.safetensors")
    model = load_model(ROOT / RELEASED["sognet_r50_coco"], tmp_path / "s.safetensors")
    generator = torch.Generator().manual_seed(1)
    p = [torch.randn(1, 256, 16 // 2**i, 24 // 2**i, generator=generator) for i in range(4)]

    def subnet(x):
        for i in range(3):
            name = f"fcn_head.fcn_subnet.conv.{i}.0"
            offset = F.conv2d(x, w[f"{name}.conv_offset.weight"], w[f"{name}.conv_offset.bias"], padding=1)
            x = F.relu(deform_conv2d(x, offset, w[f"{name}.conv.weight"], w[f"{name}.conv.bias"], padding=1))
        return x

    with torch.no_grad():
        levels = [subnet(x) for x in p]
        levels = [levels[0]] + [F.interpolate(y, None, 2 ** (i + 1), mode="bilinear", align_corners=False) for i, y in enumerate(levels[1:])]
        released_score = F.conv2d(torch.cat(levels, 1), w["fcn_head.score.weight"], w["fcn_head.score.bias"])
        ours, _ = model.semantic_head(p)
        rows = semantic_order(model.labels.things, model.labels.stuff)
        torch.testing.assert_close(ours, released_score[:, rows], rtol=1e-4, atol=1e-3)

        # relation: three instances, released class indices 1..80 (= thing index + 1), inclusive boxes
        things = torch.tensor([0, 16, 2])
        inclusive = torch.tensor([[10.0, 12.0, 60.0, 70.0], [30.0, 20.0, 90.0, 55.0], [5.0, 40.0, 44.0, 99.0]])
        onehot = F.one_hot(things, 80).float()
        cls_relation = F.relu(onehot @ w["relation_head.U.0.weight"].T)[:, None, :] * F.relu(onehot @ w["relation_head.V.0.weight"].T)
        bw, bh = inclusive[:, 2] - inclusive[:, 0] + 1, inclusive[:, 3] - inclusive[:, 1] + 1
        cx, cy = inclusive[:, 0] + 0.5 * bw, inclusive[:, 1] + 0.5 * bh
        position = torch.stack([-(cx[:, None] - cx) / bw[:, None], -(cy[:, None] - cy) / bh[:, None],
                                torch.log(bw / bw[:, None]), torch.log(bh / bh[:, None])], dim=2)  # fmt: skip
        box_feat = F.relu(F.conv2d(position.permute(2, 0, 1)[None], w["relation_head.W.0.weight"]))[0].permute(1, 2, 0)
        feat = torch.cat([cls_relation, box_feat], dim=2)
        r = torch.sigmoid(F.conv2d(feat.permute(2, 0, 1)[None], w["relation_head.P.0.weight"]))[0, 0]
        released_o = F.relu(r - r.T)
        masks = torch.randn(1, 3, 20, 30, generator=generator) * 3
        s = torch.sigmoid(masks)
        released_masks = masks - (((masks * s)[:, :, None] * s) * released_o[..., None, None]).sum(dim=2)
        ours_o = model.relation(things, inclusive + torch.tensor([0.0, 0.0, 1.0, 1.0]))
        torch.testing.assert_close(ours_o, released_o, rtol=1e-4, atol=1e-5)
        assert (ours_o > 0.01).any()
        torch.testing.assert_close(remove_overlaps(masks[0], ours_o), released_masks[0], rtol=1e-4, atol=1e-4)
