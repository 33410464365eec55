"""Panoptic-DeepLab network: sizes against detectron2's dumps, output contract, hand-worked layers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from conftest import shared_file

from panopticlab.errors import InputError
from panopticlab.models.backbones import ResNetBackbone, build_backbone
from panopticlab.models.panoptic_deeplab.aspp import ImagePooling
from panopticlab.models.panoptic_deeplab.heads import DepthwiseSeparableConv
from panopticlab.models.panoptic_deeplab.network import (
    PAPER_OPTIONS,
    build_panoptic_deeplab,
    convert_sync_batchnorm_if_distributed,
)

KEYS_DIR = Path(__file__).resolve().parents[2] / "shared" / "reference" / "detectron2_keys"
D2_CONFIGS = {  # file -> (num_classes, head_variant)
    "keys_r52_dsconv.json": (19, "dsconv"),
    "keys_panoptic_deeplab_R_52_os16_mg124_poly_90k_bs32_crop_512_1024.json": (19, "conv"),
    "keys_panoptic_deeplab_R_52_os16_mg124_poly_200k_bs64_crop_640_640_coco_dsconv.json": (133, "dsconv"),
}


@pytest.fixture(scope="module")
def r52() -> nn.Module:
    torch.manual_seed(0)
    return build_panoptic_deeplab(19).eval()


@pytest.mark.parametrize("filename", sorted(D2_CONFIGS))
def test_parameter_counts_equal_detectron2(filename: str) -> None:
    summary = json.loads(shared_file(KEYS_DIR / filename).read_text())["summary"]
    num_classes, head_variant = D2_CONFIGS[filename]
    with torch.device("meta"):
        model = build_panoptic_deeplab(num_classes, head_variant=head_variant)
    counts = model.parameter_counts()
    assert counts == {
        "backbone": summary["backbone"],
        "semantic": summary["sem_seg_head"],
        "instance": summary["ins_embed_head"],
        "total": summary["num_params"],
    }
    assert len(model.state_dict()) == summary["num_state_dict_entries"]


@pytest.mark.parametrize(("head_variant", "d2_macs"), [("dsconv", 419e9), ("conv", 1042e9)])
def test_multiply_adds_at_1024x2048_match_detectron2(head_variant: str, d2_macs: float) -> None:
    # FlopCounterMode counts convolutions only (2 FLOPs per MAC); fvcore's 419 G / 1042 G also
    # count BatchNorm, bilinear resizes and pooling, about 1 % more. Meta tensors: no compute.
    with torch.device("meta"):
        model = build_panoptic_deeplab(19, head_variant=head_variant).eval()
        images = torch.empty(1, 3, 1024, 2048)
    with FlopCounterMode(display=False) as counter:
        model.forward_heads(images)
    macs = counter.get_total_flops() / 2
    assert 0.98 * d2_macs < macs <= d2_macs


def test_forward_heads_shapes_at_any_size(r52: nn.Module) -> None:
    with torch.no_grad():
        for height, width in [(64, 128), (50, 70)]:
            out = r52.forward_heads(torch.rand(2, 3, height, width) * 255)
            assert {k: tuple(v.shape) for k, v in out.items()} == {
                "sem_seg": (2, 19, height, width),
                "center": (2, 1, height, width),
                "offset": (2, 2, height, width),
            }


def test_center_is_raw_and_offsets_are_scaled_by_four(r52: nn.Module) -> None:
    # zero predictor weights: each output is its bias, upsampled (constant) then scaled
    with torch.no_grad():
        for head, bias in [(r52.center_head, [-0.5]), (r52.offset_head, [1.0, -2.0])]:
            head.predictor.weight.zero_()
            head.predictor.bias.copy_(torch.tensor(bias))
        out = r52.forward_heads(torch.rand(1, 3, 64, 64) * 255)
    assert torch.allclose(out["center"], torch.full_like(out["center"], -0.5))  # no sigmoid
    assert torch.allclose(out["offset"][:, 0], torch.full_like(out["offset"][:, 0], 4.0))  # dy * 4
    assert torch.allclose(out["offset"][:, 1], torch.full_like(out["offset"][:, 1], -8.0))  # dx * 4


def test_pixel_statistics_are_non_persistent_buffers(r52: nn.Module) -> None:
    state = r52.state_dict()
    assert "pixel_mean" not in state and "pixel_std" not in state
    assert r52.pixel_mean.flatten().tolist() == pytest.approx([123.675, 116.28, 103.53])


def test_image_pooling_fixed_kernel_tiles_like_detectron2() -> None:
    # 2x4 map, kernel (2, 2) stride 1 -> averages [0, 2, 4], resized (align_corners=False) to width 4
    pooling = ImagePooling(1, 1, pool_size=(2, 2))
    global_pooling = ImagePooling(1, 1, pool_size=None)
    for p in (pooling, global_pooling):
        nn.init.ones_(p.conv.weight)
    x = torch.tensor([[0.0, 0.0, 4.0, 4.0]] * 2).view(1, 1, 2, 4)
    with torch.no_grad():
        assert pooling(x)[0, 0].tolist() == [[0.0, 1.25, 2.75, 4.0]] * 2
        assert global_pooling(x)[0, 0].tolist() == [[2.0] * 4] * 2
        with pytest.raises(InputError, match="multiple"):
            pooling(torch.zeros(1, 1, 3, 4))


def test_crop_sized_pooling_from_the_builder() -> None:
    with torch.device("meta"):
        model = build_panoptic_deeplab(19, aspp_pooling_crop_size=(512, 1024))
    assert model.semantic_decoder.aspp.pooling.pool_size == (32, 64)
    assert model.instance_decoder.aspp.pooling.pool_size == (32, 64)


def test_paper_options_change_instance_branch_only() -> None:
    with torch.device("meta"):
        d2 = build_panoptic_deeplab(19)
        paper = build_panoptic_deeplab(19, **PAPER_OPTIONS)
    stages = paper.instance_decoder.stages
    assert stages["res3"].project.conv.out_channels == 32 and stages["res2"].project.conv.out_channels == 16
    assert stages["res3"].fuse.depthwise.conv.in_channels == 32 + 256
    assert stages["res2"].fuse.depthwise.conv.in_channels == 16 + 128
    assert isinstance(paper.center_head.tower, DepthwiseSeparableConv)
    assert isinstance(d2.center_head.tower, nn.Sequential)
    assert paper.semantic_decoder.aspp.atrous[0].conv.kernel_size == (3, 3)  # regular-conv ASPP
    assert paper.parameter_counts()["backbone"] == d2.parameter_counts()["backbone"]


def test_r52_res5_is_dilated_with_multi_grid() -> None:
    with torch.device("meta"):
        r52 = build_backbone("r52_dc5")
        resnet = build_backbone("resnet50")
    assert isinstance(r52, ResNetBackbone)
    assert [b.conv2.dilation[0] for b in r52.layer4] == [2, 4, 8]
    assert [b.conv2.stride[0] for b in r52.layer4] == [1, 1, 1]
    assert [b.conv2.dilation[0] for b in resnet.layer4] == [2, 2, 2]
    assert [c.out_channels for c in (r52.stem.conv1, r52.stem.conv2, r52.stem.conv3)] == [64, 64, 128]
    assert r52.feature_strides == {"res2": 4, "res3": 8, "res5": 16}


def test_torchvision_resnet_at_output_stride_32() -> None:
    backbone = build_backbone("resnet101", output_stride=32, out_features=("res2", "res3", "res4", "res5")).eval()
    with torch.no_grad():
        features = backbone(torch.zeros(1, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in features.items()} == {
        "res2": (1, 256, 16, 16),
        "res3": (1, 512, 8, 8),
        "res4": (1, 1024, 4, 4),
        "res5": (1, 2048, 2, 2),
    }


@pytest.mark.parametrize(
    ("name", "output_stride", "channels"),
    [
        ("timm:xception65", 16, {"res2": 256, "res3": 728, "res5": 2048}),
        ("timm:hrnet_w48", 32, {"res2": 128, "res3": 256, "res4": 512, "res5": 1024}),
    ],
)
def test_timm_backbones_name_features_by_stride(name: str, output_stride: int, channels: dict) -> None:
    with torch.device("meta"):
        backbone = build_backbone(name, output_stride=output_stride, out_features=tuple(channels))
    assert backbone.feature_channels == channels
    strides = {"res2": 4, "res3": 8, "res4": 16, "res5": output_stride}
    assert backbone.feature_strides == {k: strides[k] for k in channels}


@pytest.mark.parametrize("output_stride", [32, 16, 8])
def test_timm_features_keep_their_names_when_dilated(output_stride: int) -> None:
    """At output stride 8 res4 and res5 both have stride 8: they are named by position, not stride."""
    backbone = build_backbone("timm:resnet10t", output_stride=output_stride, out_features=("res5", "res4", "res3", "res2"))
    assert backbone.feature_channels == {"res5": 512, "res4": 256, "res3": 128, "res2": 64}
    expected = {"res2": 4, "res3": 8, "res4": min(16, output_stride), "res5": output_stride}
    assert backbone.feature_strides == expected
    with torch.no_grad():
        features = backbone(torch.zeros(1, 3, 64, 64))
    assert {k: v.shape[-1] for k, v in features.items()} == {k: 64 // s for k, s in expected.items()}


def test_timm_mobilenetv3_network_forward() -> None:
    model = build_panoptic_deeplab(7, backbone="timm:mobilenetv3_large_100").eval()
    assert model.backbone.feature_channels == {"res5": 960, "res3": 40, "res2": 24}
    with torch.no_grad():
        out = model.forward_heads(torch.rand(1, 3, 64, 96) * 255)
    assert out["sem_seg"].shape == (1, 7, 64, 96) and out["offset"].shape == (1, 2, 64, 96)


def test_hrnet_style_four_features_use_stride_32_aspp_rates() -> None:
    with torch.device("meta"):
        model = build_panoptic_deeplab(
            19,
            backbone="resnet50",
            output_stride=32,
            low_level_features=("res4", "res3", "res2"),
            semantic_projection_channels=(128, 64, 32),
            instance_projection_channels=(64, 32, 16),
        )
    assert [conv.depthwise.conv.dilation[0] for conv in model.semantic_decoder.aspp.atrous] == [3, 6, 9]
    assert list(model.instance_decoder.stages) == ["res4", "res3", "res2"]


def test_sync_batchnorm_only_under_a_process_group() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    assert convert_sync_batchnorm_if_distributed(model) is model
    assert isinstance(model[1], nn.BatchNorm2d) and not isinstance(model[1], nn.SyncBatchNorm)


def test_predictors_initialised_as_detectron2() -> None:
    fresh = build_panoptic_deeplab(19)
    weight = fresh.semantic_head.predictor.weight
    assert 0.0005 < weight.std().item() < 0.002
    assert fresh.semantic_head.predictor.bias.abs().max().item() == 0.0


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"head_variant": "conv"},
        {"backbone": "seed:xception65"},
        {"backbone": "seed:hrnet_w18", "low_level_features": ("res4", "res3", "res2"),
         "semantic_projection_channels": (128, 64, 32), "instance_projection_channels": (128, 64, 32)},
    ],
)  # fmt: skip
def test_folding_batchnorm_keeps_the_outputs(options) -> None:
    from panopticlab.models.norm import fold_batchnorm

    torch.manual_seed(0)
    network = build_panoptic_deeplab(19, **options).eval()
    with torch.no_grad():  # statistics far from the identity, so a missed or wrong fold shows
        for m in network.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3), m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.2, 0.2)
    images = torch.rand(1, 3, 64, 96) * 255
    with torch.no_grad():
        expected = network(images)
    batchnorms = sum(isinstance(m, nn.BatchNorm2d) for m in network.modules())
    assert fold_batchnorm(network) == batchnorms and not any(isinstance(m, nn.BatchNorm2d) for m in network.modules())
    with torch.no_grad():
        got = network(images)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=2e-5 * float(value.abs().max()))
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(network.train())


def test_a_timm_stem_feature_res1_brings_the_heads_to_stride_2() -> None:
    backbone = build_backbone("timm:resnet10t", output_stride=32, out_features=("res4", "res1"))
    assert backbone.feature_strides == {"res4": 16, "res1": 2}
    model = build_panoptic_deeplab(
        7,
        backbone="timm:resnet10t",
        aspp_feature="res4",
        low_level_features=("res3", "res2", "res1"),
        semantic_projection_channels=(32, 16, 16),
        instance_projection_channels=(32, 16, 16),
    ).eval()
    assert model.common_stride == 2
    raw = {}
    model.semantic_head.register_forward_hook(lambda module, args, out: raw.update(sem=out))
    with torch.no_grad():
        out = model.forward_heads(torch.rand(1, 3, 64, 96) * 255)
    assert raw["sem"].shape[-2:] == (32, 48) and out["sem_seg"].shape == (1, 7, 64, 96)
