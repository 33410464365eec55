"""Weights: safetensors round trip, detectron2 conversion, safe unpickling, backbone-only weights."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from conftest import shared_file

from panopticlab.errors import InputError
from panopticlab.models.backbone_weights import load_backbone_weights
from panopticlab.models.backbones import build_backbone
from panopticlab.models.panoptic_deeplab.detectron2 import convert_detectron2, detectron2_key
from panopticlab.models.panoptic_deeplab.network import build_panoptic_deeplab
from panopticlab.weights import load_weights, read_detectron2_pickle, read_weights, save_weights

KEYS_DIR = Path(__file__).resolve().parents[2] / "shared" / "reference" / "detectron2_keys"
DSCONV_KEYS = "keys_r52_dsconv.json"
OTHER_CONFIGS = {  # key file -> (num_classes, head_variant)
    "keys_panoptic_deeplab_R_52_os16_mg124_poly_90k_bs32_crop_512_1024.json": (19, "conv"),
    "keys_panoptic_deeplab_R_52_os16_mg124_poly_200k_bs64_crop_640_640_coco_dsconv.json": (133, "dsconv"),
}


def _d2_keys(filename: str) -> list[tuple[str, list[int], str]]:
    return [tuple(entry) for entry in json.loads(shared_file(KEYS_DIR / filename).read_text())["keys"]]


def _random_arrays(keys: list[tuple[str, list[int], str]]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        name: rng.standard_normal(shape, dtype=np.float32) if dtype == "torch.float32" else np.full(shape, 7, np.int64)
        for name, shape, dtype in keys
    }


def _write_pickle(path: Path, arrays: dict[str, np.ndarray], protocol: int = pickle.DEFAULT_PROTOCOL) -> Path:
    with open(path, "wb") as f:
        pickle.dump({"model": arrays, "__author__": "Detectron2 Model Zoo"}, f, protocol=protocol)
    return path


@pytest.fixture(scope="module")
def d2_arrays() -> dict[str, np.ndarray]:
    return _random_arrays(_d2_keys(DSCONV_KEYS))


def test_detectron2_conversion_round_trip(tmp_path: Path, d2_arrays: dict[str, np.ndarray]) -> None:
    pkl = _write_pickle(tmp_path / "model_final.pkl", d2_arrays, protocol=2)  # protocol 2: bytes via _codecs
    report = convert_detectron2(pkl, tmp_path / "out.safetensors")
    assert (report.num_classes, report.head_variant, report.num_parameters) == (19, "dsconv", 30_271_350)
    assert report.num_tensors == len(d2_arrays) == 544 and report.filled == []

    model = build_panoptic_deeplab(19)
    loaded = load_weights(model, tmp_path / "out.safetensors", prefix="network.")
    assert loaded.missing == [] and loaded.ignored == [] and loaded.loaded == 544
    state = model.state_dict()
    for key, array in d2_arrays.items():
        assert np.array_equal(state[detectron2_key(key)].numpy(), array), key
    _, metadata = read_weights(tmp_path / "out.safetensors")
    assert metadata["source"] == "detectron2" and metadata["num_classes"] == "19"


def test_explicit_key_mapping_examples() -> None:
    assert detectron2_key("backbone.stem.conv3.norm.running_var") == "backbone.stem.bn3.running_var"
    assert detectron2_key("backbone.res2.0.shortcut.weight") == "backbone.layer1.0.downsample.0.weight"
    assert detectron2_key("backbone.res5.2.conv2.norm.bias") == "backbone.layer4.2.bn2.bias"
    assert (
        detectron2_key("sem_seg_head.decoder.res5.project_conv.convs.2.depthwise.weight")
        == "semantic_decoder.aspp.atrous.1.depthwise.conv.weight"
    )
    assert (
        detectron2_key("ins_embed_head.decoder.res5.project_conv.convs.4.1.bias")
        == "instance_decoder.aspp.pooling.conv.bias"
    )
    assert detectron2_key("ins_embed_head.decoder.res2.fuse_conv.1.norm.weight") == (
        "instance_decoder.stages.res2.fuse.1.norm.weight"
    )
    assert detectron2_key("ins_embed_head.center_head.0.weight") == "center_head.tower.0.conv.weight"
    assert detectron2_key("ins_embed_head.offset_predictor.bias") == "offset_head.predictor.bias"
    assert detectron2_key("pixel_mean") is None


@pytest.mark.parametrize("filename", sorted(OTHER_CONFIGS))
def test_every_detectron2_key_maps_to_a_model_key_of_the_same_shape(filename: str) -> None:
    keys = _d2_keys(filename)
    num_classes, head_variant = OTHER_CONFIGS[filename]
    with torch.device("meta"):
        state = build_panoptic_deeplab(num_classes, head_variant=head_variant).state_dict()
    mapped = {detectron2_key(name): shape for name, shape, _ in keys}
    assert set(mapped) == set(state)
    assert all(list(state[k].shape) == shape for k, shape in mapped.items())


def test_conversion_reports_missing_unexpected_and_mismatched_keys(
    tmp_path: Path, d2_arrays: dict[str, np.ndarray]
) -> None:
    missing = dict(d2_arrays)
    del missing["ins_embed_head.offset_predictor.bias"]
    unexpected = {**d2_arrays, "sem_seg_head.loss.weight": np.zeros(3, np.float32)}
    mismatched = {**d2_arrays, "backbone.stem.conv1.weight": np.zeros((64, 3, 7, 7), np.float32)}
    cases = [
        (missing, r"1 missing keys \(offset_head.predictor.bias\)"),
        (unexpected, r"no counterpart in the model \(sem_seg_head.loss.weight\)"),
        (mismatched, r"backbone.stem.conv1.weight: file \(64, 3, 7, 7\) vs model \(64, 3, 3, 3\)"),
    ]
    for i, (arrays, message) in enumerate(cases):
        pkl = _write_pickle(tmp_path / f"bad{i}.pkl", arrays)
        with pytest.raises(InputError, match=f"bad{i}.pkl.*{message}"):
            convert_detectron2(pkl, tmp_path / f"bad{i}.safetensors")
        assert not (tmp_path / f"bad{i}.safetensors").exists()


def test_absent_batch_counters_are_filled_with_zero(tmp_path: Path, d2_arrays: dict[str, np.ndarray]) -> None:
    arrays = {k: v for k, v in d2_arrays.items() if not k.endswith("num_batches_tracked")}
    report = convert_detectron2(_write_pickle(tmp_path / "m.pkl", arrays), tmp_path / "m.safetensors")
    assert len(report.filled) == len(d2_arrays) - len(arrays) == 89
    assert "backbone.stem.bn1.num_batches_tracked" in report.filled
    state, _ = read_weights(tmp_path / "m.safetensors")
    assert state["network.backbone.stem.bn1.num_batches_tracked"].item() == 0 and len(state) == 544


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # pickling this stores a call to os.system
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": np.zeros(2)}, "__author__": _Exploit(marker)}, f)
    with pytest.raises(InputError, match=r"evil.pkl: refusing to load the global '(posix|nt|os)\.system'"):
        read_detectron2_pickle(path)
    assert not marker.exists()


def test_restricted_unpickler_reads_arrays_and_ordered_dicts(tmp_path: Path) -> None:
    from collections import OrderedDict

    arrays = OrderedDict([("module.a", np.arange(6, dtype=np.float64).reshape(2, 3).T), ("b", np.int64(5))])
    path = tmp_path / "ok.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": arrays, "__author__": "x", "matching_heuristics": True}, f, protocol=2)
    read, extras = read_detectron2_pickle(path)
    assert list(read) == ["a", "b"] and np.array_equal(read["a"], arrays["module.a"]) and read["b"].shape == ()
    assert extras == {"__author__": "x", "matching_heuristics": True}


def test_save_and_load_weights_round_trip(tmp_path: Path) -> None:
    source = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    save_weights(source, tmp_path / "w.safetensors", metadata={"step": 3})
    target = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    report = load_weights(target, tmp_path / "w.safetensors")
    assert report.loaded == 7 and torch.equal(target[0].weight, source[0].weight)
    assert read_weights(tmp_path / "w.safetensors")[1] == {"step": "3"}
    with pytest.raises(InputError, match="already exists"):
        save_weights(source, tmp_path / "w.safetensors", overwrite=False)

    bigger = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 1, 1))
    with pytest.raises(InputError, match=r"w.safetensors: .*2 missing keys \(2.weight, 2.bias\)"):
        load_weights(bigger, tmp_path / "w.safetensors")
    assert load_weights(bigger, tmp_path / "w.safetensors", strict=False).missing == ["2.weight", "2.bias"]
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="junk.safetensors: not a readable safetensors file"):
        load_weights(target, tmp_path / "junk.safetensors")
    with pytest.raises(InputError, match="absent.safetensors: weights file not found"):
        load_weights(target, tmp_path / "absent.safetensors")


def test_torchvision_resnet_weights_load_into_resnet_backbones(tmp_path: Path) -> None:
    classifier = torchvision.models.resnet50(weights=None)
    torch.save(classifier.state_dict(), tmp_path / "resnet50.pth")
    backbone = build_backbone("resnet50")
    report = load_backbone_weights(backbone, tmp_path / "resnet50.pth")
    assert report.missing == [] and report.loaded == len(backbone.state_dict())
    assert torch.equal(backbone.stem.conv1.weight, classifier.conv1.weight)
    assert torch.equal(backbone.layer4[2].bn3.running_var, classifier.layer4[2].bn3.running_var)
    # the 7x7 stem does not fit detectron2's DeepLab stem
    with pytest.raises(InputError, match=r"resnet50.pth: .*stem.conv1.weight: file \(64, 3, 7, 7\)"):
        load_backbone_weights(build_backbone("r52_dc5"), tmp_path / "resnet50.pth")


def test_the_same_door_loads_torchvisions_frozen_bn_resnet(tmp_path: Path, d2_arrays: dict[str, np.ndarray]) -> None:
    """SOGNet's detector body is torchvision's own ResNet with frozen BN (no batch counters)."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    classifier = torchvision.models.resnet50(weights=None)
    torch.save(classifier.state_dict(), tmp_path / "resnet50.pth")
    body = torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    report = load_backbone_weights(body, tmp_path / "resnet50.pth")
    assert report.missing == [] and report.ignored == [] and report.loaded == len(body.state_dict()) - 2  # no fc
    assert torch.equal(body.conv1.weight, classifier.conv1.weight) and torch.equal(body.bn1.running_var, classifier.bn1.running_var)
    assert torch.equal(body.layer3[5].bn2.weight, classifier.layer3[5].bn2.weight)
    # detectron2's names reach torchvision's too (its R-50 stem is the 7x7 one: only R52's does not fit)
    d2_names = {"stem.conv1.weight": classifier.conv1.weight, "stem.conv1.norm.bias": classifier.bn1.bias}
    d2_names.update({f"res2.0.conv{k}.weight": getattr(classifier.layer1[0], f"conv{k}").weight for k in (1, 2, 3)})
    pkl = _write_pickle(tmp_path / "R-50-part.pkl", {k: v.detach().numpy() for k, v in d2_names.items()})
    fresh = torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    report = load_backbone_weights(fresh, pkl, strict=False)
    assert report.loaded == 5 and torch.equal(fresh.layer1[0].conv2.weight, classifier.layer1[0].conv2.weight)
    assert torch.equal(fresh.bn1.bias, classifier.bn1.bias)
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "partial.pth")
    with pytest.raises(InputError, match=r"partial.pth: does not fit the model: .* missing keys"):
        load_backbone_weights(fresh, tmp_path / "partial.pth")


def test_detectron2_imagenet_pickle_loads_into_r52(tmp_path: Path, d2_arrays: dict[str, np.ndarray]) -> None:
    backbone_arrays = {k[len("backbone.") :]: v for k, v in d2_arrays.items() if k.startswith("backbone.")}
    pkl = _write_pickle(tmp_path / "R-52.pkl", backbone_arrays)
    backbone = build_backbone("r52_dc5")
    report = load_backbone_weights(backbone, pkl)
    assert report.loaded == len(backbone.state_dict()) == len(backbone_arrays)
    running_mean = backbone.layer1[0].downsample[1].running_mean.numpy()
    assert np.array_equal(running_mean, backbone_arrays["res2.0.shortcut.norm.running_mean"])


def test_timm_weights_load_into_timm_backbone(tmp_path: Path) -> None:
    import timm

    classifier = timm.create_model("mobilenetv3_large_100", pretrained=False)
    save_weights(classifier, tmp_path / "mnv3.safetensors")
    backbone = build_backbone("timm:mobilenetv3_large_100")
    report = load_backbone_weights(backbone, tmp_path / "mnv3.safetensors")
    assert report.missing == [] and report.loaded == len(backbone.state_dict())
    head = {"body.conv_head.weight", "body.conv_head.bias", "body.classifier.weight", "body.classifier.bias"}
    assert set(report.ignored) == head
    assert torch.equal(backbone.body.conv_stem.weight, classifier.conv_stem.weight)


def test_cli_converts_and_load_model_reads_the_result(d2_arrays, tmp_path, capsys):
    from panopticlab import load_model
    from panopticlab.cli import main

    pkl = _write_pickle(tmp_path / "model_final.pkl", d2_arrays)
    out = tmp_path / "converted.safetensors"
    assert main(["convert", "detectron2", str(pkl), str(out)]) == 0
    assert "30,271,350 parameters" in capsys.readouterr().out
    config = Path(__file__).resolve().parents[1] / "configs" / "panoptic_deeplab" / "r52_dsconv_cityscapes.yaml"
    model = load_model(config, out)
    state = model.state_dict()
    for d2_name in ("sem_seg_head.predictor.weight", "backbone.res5.2.conv3.weight", "ins_embed_head.offset_predictor.bias"):
        np.testing.assert_array_equal(state["network." + detectron2_key(d2_name)].numpy(), d2_arrays[d2_name])
    # A second conversion to the same file is refused; a missing input is a one-line error.
    assert main(["convert", "detectron2", str(pkl), str(out)]) == 2
    assert main(["convert", "detectron2", str(tmp_path / "missing.pkl"), str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "already exists" in err[0] and "missing.pkl" in err[1]


def _bin_unicode(text: str) -> bytes:
    data = text.encode()
    return b"X" + len(data).to_bytes(4, "little") + data


def _crafted_pickles(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Malformed-but-harmless pickles, each with the words its one-line error must contain."""
    cases: dict[str, tuple[bytes, str]] = {}
    cases["object_array"] = (pickle.dumps({"model": {"w": np.array([1, "a"], dtype=object)}}), "dtype object")
    structured = np.zeros(2, dtype=[("a", np.float32), ("b", np.int8)])
    cases["structured_array"] = (pickle.dumps({"model": {"w": structured}}), "expected numbers")
    cases["text_array"] = (pickle.dumps({"model": {"w": np.array(["abc"])}}), "expected numbers")
    cases["non_string_key"] = (pickle.dumps({"model": {7: np.zeros(2, np.float32)}}), "a key of 'model' is a int")
    cases["list_model"] = (pickle.dumps({"model": [np.zeros(2)]}), "'model' is a list")
    cases["not_a_dict"] = (pickle.dumps([1, 2, 3]), "expected a pickled dict, got list")
    buffers: list = []
    out_of_band = pickle.dumps({"model": {"w": np.zeros(4, np.float32)}}, protocol=5, buffer_callback=buffers.append)
    cases["out_of_band"] = (out_of_band, "out-of-band buffers")
    good = pickle.dumps({"model": {"w": np.zeros(64, np.float32)}})
    cases["truncated"] = (good[: len(good) // 2], "truncated")
    paths = {}
    for name, (data, words) in cases.items():
        path = tmp_path / f"{name}.pkl"
        path.write_bytes(data)
        paths[name] = (path, words)
    return paths


def test_crafted_pickles_give_one_clear_error(tmp_path: Path) -> None:
    for name, (path, words) in _crafted_pickles(tmp_path).items():
        with pytest.raises(InputError) as error:
            read_detectron2_pickle(path)
        message = str(error.value)
        assert message.startswith(str(path)) and words in message and "\n" not in message, (name, message)


def test_crafted_pickles_exit_2_in_the_cli_and_write_nothing(tmp_path: Path, capsys) -> None:
    from panopticlab.cli import main

    for name, (path, words) in _crafted_pickles(tmp_path).items():
        out = tmp_path / f"{name}.safetensors"
        assert main(["convert", "detectron2", str(path), str(out)]) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], (name, err)
        assert not out.exists()


def test_deeply_nested_extras_are_described_not_kept(tmp_path: Path) -> None:
    """A 100,000-deep tuple (written opcode by opcode: pickle itself cannot write it) as the author."""
    depth = 100_000
    stream = (
        b"\x80\x02}(" + _bin_unicode("model") + b"}" + _bin_unicode("__author__") + b"(" * depth + b"t" * depth + b"u."
    )
    path = tmp_path / "deep.pkl"
    path.write_bytes(stream)
    arrays, extras = read_detectron2_pickle(path)
    assert arrays == {} and extras == {"__author__": "<tuple>"}
    with pytest.raises(InputError, match="deep.pkl: no 'sem_seg_head.predictor.weight'"):
        convert_detectron2(path, tmp_path / "deep.safetensors")


def test_protocol_5_pickles_with_in_band_buffers_are_read(tmp_path: Path) -> None:
    arrays = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.array([True, False])}
    path = tmp_path / "p5.pkl"
    path.write_bytes(pickle.dumps({"model": arrays, "__author__": ["not", "plain"]}, protocol=5))
    read, extras = read_detectron2_pickle(path)
    assert all(np.array_equal(read[k], v) for k, v in arrays.items()) and extras == {"__author__": "<list>"}
