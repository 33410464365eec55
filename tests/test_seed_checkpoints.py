"""The Panoptic-DeepLab seed's Xception-65 and HRNet models: architecture, configs and checkpoints.

The key lists under ``tests/data/seed_keys/`` were written by ``tools/seed_reference_check.py``
from the seed's own module definitions (bowenc0221/panoptic-deeplab ``segmentation/model/backbone``),
not from panopticlab; the same tool loads the seed modules' random weights into ours and finds
the outputs equal (``benchmarks/results/seed_backbones_reference.json``).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import shared_file
from panopticlab import load_model
from panopticlab.config import Config, load_config
from panopticlab.errors import InputError
from panopticlab.models import build_model
from panopticlab.models.backbone_weights import load_backbone_weights
from panopticlab.models.panoptic_deeplab.detectron2 import checkpoint_architecture, convert_detectron2, detectron2_key
from panopticlab.models.seed_backbones import build_seed_backbone
from panopticlab.weights import save_weights

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
SEED_KEYS = Path(__file__).resolve().parent / "data" / "seed_keys"
CONFIGS = ROOT / "configs" / "panoptic_deeplab"
D2_KEYS = ROOT.parent / "shared" / "reference" / "detectron2_keys"
STATISTICS = ("running_mean", "running_var", "num_batches_tracked")
ALL = ("res2", "res3", "res4", "res5")


def seed_keys(name: str) -> list[tuple[str, list[int]]]:
    return [(k, shape) for k, shape in json.loads((SEED_KEYS / f"seed_{name}.json").read_text())["keys"]]


@pytest.mark.parametrize("name", ["xception65", "hrnet_w18", "hrnet_w32", "hrnet_w48"])
def test_seed_backbones_have_the_seeds_keys_and_shapes(name):
    with torch.device("meta"):
        backbone = build_seed_backbone(name, out_features=ALL)
    assert [(k, list(v.shape)) for k, v in backbone.state_dict().items()] == seed_keys(name)


def test_seed_backbone_features_strides_and_channels():
    image = torch.randn(1, 3, 64, 96)
    x65 = build_seed_backbone("xception65", out_features=ALL).eval()
    with torch.no_grad():
        out = x65(image)
    assert x65.feature_strides == {"res2": 4, "res3": 8, "res4": 16, "res5": 16}
    assert {k: tuple(v.shape[1:]) for k, v in out.items()} == {
        "res2": (256, 16, 24), "res3": (728, 8, 12), "res4": (728, 4, 6), "res5": (2048, 4, 6),
    }  # fmt: skip
    # res2 and res3 are taken inside blocks 2 and 3: before their striding third conv
    with torch.no_grad():
        x = x65.relu(x65.bn2(x65.conv2(x65.relu(x65.bn1(x65.conv1(image))))))
        x, _ = x65.block1(x)
        _, inner = x65.block2(x)
    torch.testing.assert_close(out["res2"], inner)
    h48 = build_seed_backbone("hrnet_w48", out_features=ALL).eval()
    with torch.no_grad():
        out = h48(image)
    assert {k: tuple(v.shape[1:]) for k, v in out.items()} == {
        "res2": (48, 16, 24), "res3": (96, 8, 12), "res4": (192, 4, 6), "res5": (384, 2, 3),
    }  # fmt: skip
    with pytest.raises(ValueError, match="unknown seed backbone"):
        build_seed_backbone("hrnet_w40")


D2_HEAD_KEY_LISTS = {"dsconv": "keys_r52_dsconv.json", "conv": "keys_panoptic_deeplab_R_52_os16_mg124_poly_90k_bs32_crop_512_1024.json"}


def d2_head_keys(stages: tuple[str, ...], head_variant: str) -> list[str]:
    """detectron2's head key names (from its R52 lists), with a res4 stage named as its res3 one."""
    listed = json.loads(shared_file(D2_KEYS / D2_HEAD_KEY_LISTS[head_variant]).read_text())["keys"]
    names = [k for k, _, _ in listed if not k.startswith("backbone.")]
    if "res4" in stages:
        names += [k.replace(".res3.", ".res4.") for k in names if ".decoder.res3." in k]
    return names


def seed_checkpoint(config_file: str, backbone: str, tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """A detectron2 pickle of the seed's model: backbone keys from the seed's list, head keys by
    detectron2's names (shapes from the config's network), random values."""
    config = load_config(Config, CONFIGS / config_file)
    network = build_model(config).network
    ours = network.state_dict()
    rng = np.random.default_rng(0)
    arrays = {}
    for key, shape in seed_keys(backbone):
        arrays["backbone." + key] = rng.standard_normal(shape).astype(np.float32) if not key.endswith("num_batches_tracked") else np.array(3)
    section = config.model.panoptic_deeplab
    head_names = d2_head_keys(section.low_level_features, section.head_variant)
    for key in head_names:
        shape = tuple(ours[detectron2_key(key)].shape)
        arrays[key] = rng.standard_normal(shape).astype(np.float32) if not key.endswith("num_batches_tracked") else np.array(0)
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": arrays, "__author__": "third_party"}, f)
    return path, arrays


@pytest.mark.parametrize(
    "config_file, backbone, stages, head_variant",
    [
        ("x65_dsconv_cityscapes.yaml", "xception65", ("res3", "res2"), "dsconv"),
        ("x65_cityscapes.yaml", "xception65", ("res3", "res2"), "conv"),
        ("h48_dsconv_cityscapes.yaml", "hrnet_w48", ("res4", "res3", "res2"), "dsconv"),
        ("h48_cityscapes.yaml", "hrnet_w48", ("res4", "res3", "res2"), "conv"),
    ],
)
def test_seed_checkpoints_convert_load_and_run(config_file, backbone, stages, head_variant, tmp_path):
    pkl, arrays = seed_checkpoint(config_file, backbone, tmp_path)
    report = convert_detectron2(pkl, tmp_path / "out.safetensors")
    assert (report.backbone, report.low_level_features, report.head_variant) == (f"seed:{backbone}", stages, head_variant)
    assert report.filled == [] and report.num_tensors == len(arrays)
    model = load_model(CONFIGS / config_file, tmp_path / "out.safetensors")
    state = model.network.state_dict()
    for key in ("backbone.conv1.weight", "sem_seg_head.predictor.weight", f"sem_seg_head.decoder.{stages[0]}.project_conv.weight"):
        np.testing.assert_array_equal(state[detectron2_key(key, backbone=report.backbone)].numpy(), arrays[key])
    result = model.predict(torch.randint(0, 256, (3, 64, 128), dtype=torch.uint8))[0]
    assert result.id_map.shape == (64, 128)


def test_seed_configs_carry_the_seeds_pixel_statistics_and_decoder():
    x65 = build_model(load_config(Config, CONFIGS / "x65_dsconv_coco.yaml")).network
    assert x65.pixel_mean.flatten().tolist() == [128.0] * 3 and x65.pixel_std.flatten().tolist() == [128.0] * 3
    h48 = load_config(Config, CONFIGS / "h48_cityscapes.yaml").model.panoptic_deeplab
    assert (h48.low_level_features, h48.semantic_projection_channels, h48.aspp_dilations) == (
        ("res4", "res3", "res2"), (128, 64, 32), (3, 6, 9),
    )  # fmt: skip
    for name in ("x65_cityscapes.yaml", "h48_dsconv_coco.yaml"):
        network = build_model(load_config(Config, CONFIGS / name)).network
        expected = sum(int(np.prod(s)) for k, s in seed_keys(name[:3].replace("x65", "xception65").replace("h48", "hrnet_w48")) if not k.endswith(STATISTICS))
        assert sum(p.numel() for p in network.backbone.parameters()) == expected


def test_unknown_backbone_keys_are_refused(tmp_path):
    arrays = {"sem_seg_head.predictor.weight": np.zeros((19, 256, 1, 1), np.float32), "backbone.foo.weight": np.zeros(3, np.float32)}
    with pytest.raises(InputError, match="unknown backbone"):
        checkpoint_architecture(arrays, "x.pkl")


def test_seed_imagenet_weights_load_into_the_seed_backbones(tmp_path):
    """The seed's ImageNet files: the backbone's keys plus classifier parts, which are ignored."""
    backbone = build_seed_backbone("hrnet_w18", out_features=ALL)
    state = {k: torch.randn(v.shape) if v.is_floating_point() else v for k, v in backbone.state_dict().items()}
    state["classifier.weight"] = torch.zeros(1000, 2048)
    save_weights(state, tmp_path / "hrnet_w18_imagenet.safetensors")
    fresh = build_seed_backbone("hrnet_w18", out_features=ALL)
    report = load_backbone_weights(fresh, tmp_path / "hrnet_w18_imagenet.safetensors")
    assert report.ignored == ["classifier.weight"] and report.missing == []
    torch.testing.assert_close(fresh.state_dict()["stage4.2.fuse_layers.3.0.0.0.weight"], state["stage4.2.fuse_layers.3.0.0.0.weight"])
