"""One path from config to layer: every schema value reaches the part it configures, once, at
build time; the model contract; the checks that name the file and the key."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from test_pd_model import TINY as PD_TINY
from test_sognet_model import TINY as SOGNET_TINY

from panopticlab.config import Config, Section, from_dict, load_config
from panopticlab.data.transforms import PAD_COLOR
from panopticlab.errors import InputError
from panopticlab.models import build_model, load_model
from panopticlab.models.base import PanopticModel
from panopticlab.models.common import PIXEL_MEAN
from panopticlab.models.panoptic_deeplab.aspp import ImagePooling
from panopticlab.models.panoptic_deeplab.heads import ConvBNReLU, DepthwiseSeparableConv
from panopticlab.models.panoptic_deeplab.network import PAPER_OPTIONS, build_panoptic_deeplab

pytestmark = pytest.mark.usefixtures("one_thread")


def pd_model(crop_size=(64, 64), **changes) -> PanopticModel:
    section = {**PD_TINY["panoptic_deeplab"], **changes}
    return build_model(from_dict(Config, {"model": {**PD_TINY, "panoptic_deeplab": section}, "input": {"crop_size": list(crop_size)}}))


def sognet_model(**changes) -> PanopticModel:
    return build_model(from_dict(Config, {"model": {**SOGNET_TINY, "sognet": {**SOGNET_TINY["sognet"], **changes}}}))


def config_sections(module: torch.nn.Module) -> list[str]:
    """Attributes of ``module`` or its submodules that hold a config section."""
    return [f"{name}.{key}" for name, m in module.named_modules() for key, v in vars(m).items() if isinstance(v, Section)]


def test_the_data_pads_with_the_colour_the_models_normalise_to_zero():
    assert PAD_COLOR == tuple(round(v) for v in PIXEL_MEAN)


def test_models_keep_resolved_settings_not_config_sections():
    for model in (pd_model(), sognet_model(), sognet_model(panoptic="heuristic")):
        assert isinstance(model, PanopticModel) and config_sections(model) == []
    settings = [pd_model().losses, pd_model().inference, *(getattr(sognet_model(), k) for k in ("sizing", "training_settings", "inference"))]
    for s in settings:
        with pytest.raises(dataclasses.FrozenInstanceError):
            s.__setattr__(dataclasses.fields(s)[0].name, None)


def test_panoptic_deeplab_options_reach_their_layers():
    model = pd_model(
        low_level_features=["res3"],
        semantic_projection_channels=[24],
        instance_projection_channels=[8],
        aspp_depthwise_separable=False,
        pixel_mean=[10.0, 20.0, 30.0],
        pixel_std=[2.0, 4.0, 8.0],
        center_rounding="floor",
        offset_to_peak=True,
        semantic_loss_weight=0.5,
        offset_normalizer="elements",
        center_threshold=0.25,
        tta_scales=[0.5, 1.0],
        tta_flip=True,
    )
    net = model.network
    assert list(net.semantic_decoder.stages) == ["res3"] and net.common_stride == 8
    assert net.semantic_decoder.stages["res3"].project.conv.out_channels == 24
    assert net.instance_decoder.stages["res3"].project.conv.out_channels == 8
    assert all(isinstance(branch, ConvBNReLU) for branch in net.semantic_decoder.aspp.atrous)
    assert net.pixel_mean.flatten().tolist() == [10.0, 20.0, 30.0] and net.pixel_std.flatten().tolist() == [2.0, 4.0, 8.0]
    generator = model.target_generator
    assert (generator.center_rounding, generator.offset_to_peak) == ("floor", True)
    assert (model.losses.semantic_weight, model.losses.offset_normalizer) == (0.5, "elements")
    assert (model.inference.center_threshold, model.inference.tta_scales, model.inference.tta_flip) == (0.25, (0.5, 1.0), True)
    # the defaults: detectron2's (DSConv ASPP with the DSConv heads, ImageNet statistics)
    default = pd_model().network
    assert all(isinstance(branch, DepthwiseSeparableConv) for branch in default.semantic_decoder.aspp.atrous)
    assert default.pixel_mean.flatten().tolist() == pytest.approx(PIXEL_MEAN)


def test_an_aspp_on_res4_leaves_the_last_backbone_stage_out():
    model = pd_model(aspp_feature="res4", aspp_dilations=[1, 2, 4])
    backbone = model.network.backbone
    assert set(backbone.feature_channels) == {"res4", "res3", "res2"}
    assert not any(".layer4." in k or k.startswith("body.layer4") for k in backbone.state_dict())
    assert [m.dilation for m in model.network.semantic_decoder.aspp.atrous[0].modules() if isinstance(m, torch.nn.Conv2d)][0] == (1, 1)
    heads = model.network.forward_heads(torch.rand(1, 3, 64, 64) * 255)
    assert heads["sem_seg"].shape == (1, len(model.categories), 64, 64)
    full = pd_model().network.backbone.state_dict()
    assert sum(v.numel() for v in backbone.state_dict().values()) < 0.5 * sum(v.numel() for v in full.values())
    from panopticlab.models.backbones import build_backbone

    resnet = build_backbone("resnet50", out_features=("res2", "res3", "res4"))
    assert not hasattr(resnet, "layer4") and set(resnet(torch.rand(1, 3, 64, 64))) == {"res2", "res3", "res4"}


def test_the_tta_of_the_config_is_what_predict_does(monkeypatch):
    model = pd_model(tta_scales=[0.75, 1.0], tta_flip=True).eval()
    asked = []
    heads = model._heads_with_tta
    monkeypatch.setattr(model, "_heads_with_tta", lambda image, scales, flip: asked.append((scales, flip)) or heads(image, scales, flip))
    image = torch.randint(0, 256, (3, 48, 40), dtype=torch.uint8)
    default = model.predict(image)[0]
    explicit = model.predict(image, tta_scales=(0.75, 1.0), tta_flip=True)[0]
    model.predict(image, tta_scales=[1.0], tta_flip=False)
    assert asked == [((0.75, 1.0), True), ((0.75, 1.0), True), ((1.0,), False)]
    assert (default.id_map == explicit.id_map).all() and default.segments == explicit.segments


def test_crop_pooling_follows_the_training_crop_unless_set():
    def pooling(model):
        return model.network.semantic_decoder.aspp.pooling

    assert pooling(pd_model()).pool_size is None  # global by default: any input size
    stride = pd_model().network.backbone.feature_strides["res5"]
    assert pooling(pd_model(crop_size=(96, 64), aspp_pooling="crop")).pool_size == (96 // stride, 64 // stride)
    explicit = pd_model(crop_size=(96, 64), aspp_pooling="crop", aspp_pooling_crop_size=[32, 32])
    assert isinstance(pooling(explicit), ImagePooling) and pooling(explicit).pool_size == (32 // stride, 32 // stride)


def test_the_papers_network_is_three_config_values():
    model = pd_model(**{k: list(v) if isinstance(v, tuple) else v for k, v in PAPER_OPTIONS.items()})
    section = {**PD_TINY["panoptic_deeplab"]}
    reference = build_panoptic_deeplab(
        len(model.categories),
        backbone=section["backbone"],
        aspp_channels=section["aspp_channels"],
        semantic_decoder_channels=section["semantic_decoder_channels"],
        instance_decoder_channels=section["instance_decoder_channels"],
        semantic_head_channels=section["semantic_head_channels"],
        instance_head_channels=section["instance_head_channels"],
        semantic_projection_channels=section["semantic_projection_channels"],
        **PAPER_OPTIONS,
    )
    ours = {k: tuple(v.shape) for k, v in model.network.state_dict().items()}
    assert ours == {k: tuple(v.shape) for k, v in reference.state_dict().items()}


@pytest.mark.parametrize(
    "method, merge, x2mask, unknown, relation",
    [("sognet", "panoptic_head", True, False, True), ("upsnet", "panoptic_head", False, True, False), ("heuristic", "heuristic", False, False, False)],
)
def test_sognets_method_is_resolved_once_into_its_settings(method, merge, x2mask, unknown, relation):
    model = sognet_model(panoptic=method, score_threshold=0.2, nms_threshold=0.4)
    s = model.inference
    assert (s.merge, s.x2mask, s.unknown_class, s.class_agnostic) == (merge, x2mask, unknown, merge != "heuristic")
    assert (s.score_threshold, s.nms_threshold) == (0.2, 0.4)  # one threshold for every method
    assert model.training_settings.unknown_class == unknown and model.training_settings.panoptic_loss == (method != "heuristic")
    assert (model.relation is not None) == relation and len(model.evaluators()) == int(relation)
    assert model.uses_instances
    # an explicit switch wins over the method's published setting
    assert sognet_model(panoptic=method, test_x2mask=not x2mask).inference.x2mask == (not x2mask)


def test_config_problems_name_the_file_and_the_key(tmp_path):
    cases = [
        ({"model": {"panoptic_deeplab": {"nms_kernel": 4}}}, "'model.panoptic_deeplab.nms_kernel' must be an odd positive integer, got 4"),
        ({"model": {"panoptic_deeplab": {"aspp_pooling_crop_size": [8, 8]}}}, "'model.panoptic_deeplab.aspp_pooling_crop_size' applies with aspp_pooling: crop only"),
        ({"model": {"panoptic_deeplab": {"low_level_features": ["res6"]}}}, "'model.panoptic_deeplab.low_level_features' needs one or more of"),
        ({"model": {"panoptic_deeplab": {"instance_projection_channels": [8]}}}, "'model.panoptic_deeplab.instance_projection_channels' needs one width per low-level feature (2)"),
        ({"model": {"sognet": {"anchor_sizes": [8, 16]}}}, "'model.sognet.anchor_sizes' needs 5 levels P2..P6 of positive sizes, got (8, 16)"),
        ({"model": {"sognet": {"heuristic_score_threshold": 0.2}}}, "unknown key 'model.sognet.heuristic_score_threshold'"),
        ({"solver": {"max_iter": 0}}, "'solver.max_iter' must be at least 1, got 0"),
        ({"test": {"batch_size": 0}}, "'test.batch_size' must be at least 1, got 0"),
        ({"input": {"min_scale": 2.0, "max_scale": 1.0}}, "'input.min_scale' must lie in (0, max_scale = 1.0]"),
    ]
    for k, (data, message) in enumerate(cases):
        path = tmp_path / f"bad{k}.yaml"
        path.write_text(json.dumps(data))
        with pytest.raises(InputError) as e:
            load_config(Config, path)
        assert str(e.value).startswith(f"{path}: ") and message in str(e.value), str(e.value)


def test_load_model_takes_a_config_or_a_file_and_returns_eval_mode(tmp_path):
    from panopticlab.weights import save_weights

    torch.manual_seed(3)
    model = pd_model()
    save_weights(model, tmp_path / "w.safetensors")
    config = from_dict(Config, {"model": PD_TINY})
    (tmp_path / "c.yaml").write_text(json.dumps({"model": PD_TINY}))
    for source in (config, tmp_path / "c.yaml"):
        loaded = load_model(source, tmp_path / "w.safetensors")
        assert not loaded.training and all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="overrides apply to a config file"):
        load_model(config, overrides=["seed=1"])
    assert Path(tmp_path / "c.yaml").is_file()
