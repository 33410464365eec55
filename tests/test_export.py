"""ONNX export of Panoptic-DeepLab: the file reproduces the network, predict --onnx reproduces predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from panopticlab.cli import main
from panopticlab.config import Config, from_dict
from panopticlab.errors import InputError
from panopticlab.export import OnnxNetwork, export_onnx
from panopticlab.models import build_model
from panopticlab.weights import save_weights
from test_pd_model import TINY as PD_TINY
from test_sognet_model import TINY as SOGNET_TINY

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny Panoptic-DeepLab, with trained-looking heads (random, larger than at initialisation), exported once."""
    folder = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    model = build_model(from_dict(Config, {"model": PD_TINY})).eval()
    with torch.no_grad():
        for head in (model.network.semantic_head, model.network.center_head, model.network.offset_head):
            for p in head.parameters():
                p.normal_(0, 0.3)
    config = folder / "tiny.yaml"
    config.write_text(yaml.safe_dump({"model": PD_TINY}))
    weights = folder / "tiny.safetensors"
    save_weights(model.state_dict(), weights)
    report = export_onnx(model, folder / "tiny.onnx", sample_size=(64, 96), check_size=(96, 64))
    return model, config, weights, report


def test_the_exported_graph_reproduces_the_network_at_other_sizes(exported):
    model, _, _, report = exported
    assert report.checked_sizes == [(64, 96), (96, 64)] and max(report.max_abs_difference.values()) < 1e-4
    network = OnnxNetwork(report.path)
    for shape in [(1, 3, 128, 160), (3, 3, 32, 64)]:  # neither size was traced; a batch of 3
        images = torch.rand(*shape) * 255
        with torch.no_grad():
            expected = model.network.forward_heads(images)
        got = network.forward_heads(images)
        for name in ("sem_seg", "center", "offset"):
            assert got[name].shape == expected[name].shape
            torch.testing.assert_close(got[name], expected[name], atol=1e-4 * max(1.0, float(expected[name].abs().max())), rtol=0)


def test_predict_through_onnxruntime_gives_the_pytorch_results(exported):
    model, _, _, report = exported
    images = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8)
    expected = model.predict(images)
    onnx_model = build_model(from_dict(Config, {"model": PD_TINY}))
    onnx_model.network = OnnxNetwork(report.path)
    for e, g in zip(expected, onnx_model.predict(images)):
        np.testing.assert_array_equal(g.id_map, e.id_map)
        assert [(s.id, s.category_id, s.area) for s in g.segments] == [(s.id, s.category_id, s.area) for s in e.segments]


def test_cli_export_and_predict_onnx(exported, tmp_path, capsys):
    model, config, weights, _ = exported
    out = tmp_path / "model.onnx"
    assert main(["export", "--config", str(config), "--weights", str(weights), "--format", "onnx", "--output", str(out), "--size", "64", "64"]) == 0
    assert "checked with onnxruntime at 64x64 and" in capsys.readouterr().out and out.stat().st_size > 0
    image = tmp_path / "in" / "a.png"
    image.parent.mkdir()
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(image)
    for flag, path, folder in (("--onnx", out, "via_onnx"), ("--weights", weights, "via_torch")):
        assert main(["predict", "--config", str(config), flag, str(path), str(image), "--output", str(tmp_path / folder)]) == 0
    capsys.readouterr()
    onnx_json = json.loads((tmp_path / "via_onnx" / "panoptic.json").read_text())
    torch_json = json.loads((tmp_path / "via_torch" / "panoptic.json").read_text())
    onnx_segments, torch_segments = onnx_json["annotations"][0]["segments_info"], torch_json["annotations"][0]["segments_info"]
    drop = lambda s: {k: v for k, v in s.items() if k != "score"}  # noqa: E731
    assert [drop(s) for s in onnx_segments] == [drop(s) for s in torch_segments]
    scores = [[s["score"] for s in segments if s.get("score") is not None] for segments in (onnx_segments, torch_segments)]
    assert scores[0] == pytest.approx(scores[1], abs=1e-5)


def test_cli_export_refuses_bad_requests_with_one_line_and_no_file(exported, tmp_path, capsys):
    _, config, weights, report = exported
    sognet_config = tmp_path / "sognet.yaml"
    sognet_config.write_text(yaml.safe_dump({"model": SOGNET_TINY}))
    sognet_weights = tmp_path / "sognet.safetensors"
    save_weights(build_model(from_dict(Config, {"model": SOGNET_TINY})).state_dict(), sognet_weights)
    cases = [
        (["--config", str(config), "--weights", str(weights), "--format", "tensorrt"], "unsupported"),
        (["--config", str(config), "--weights", str(sognet_weights), "--format", "onnx"], "sognet.safetensors"),
        (["--config", str(sognet_config), "--weights", str(sognet_weights), "--format", "onnx"], "Panoptic-DeepLab only"),
    ]
    for k, (arguments, words) in enumerate(cases):
        out = tmp_path / f"bad{k}.onnx"
        assert main(["export", *arguments, "--output", str(out), "--size", "64", "64"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
        assert not out.exists() and not list(tmp_path.glob(".export-*"))
    # an existing file is kept
    existing = tmp_path / "existing.onnx"
    existing.write_bytes(b"keep me")
    assert main(["export", "--config", str(config), "--weights", str(weights), "--format", "onnx", "--output", str(existing)]) == 2
    assert "already exists" in capsys.readouterr().err and existing.read_bytes() == b"keep me"
    with pytest.raises(InputError, match="not a readable ONNX file"):
        OnnxNetwork(existing)


def test_the_gpu_suite_runs_on_a_cpu_in_quick_mode(tmp_path):
    """benchmarks/gpu_suite.py is ready before a GPU is lent: every path at small sizes on the CPU."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "suite.json"
    subprocess.run(
        [sys.executable, str(root / "benchmarks" / "gpu_suite.py"), "--device", "cpu", "--quick", "--output", str(out)],
        check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    report = json.loads(out.read_text())
    rows = report["panoptic_deeplab_latency"]
    assert {(r["variant"], r["batch"], r["what"]) for r in rows} == {
        (v, b, w) for v in ("fp32", "bf16", "channels_last") for b in (1, 2) for w in ("network", "end_to_end")
    }
    assert all(r["median_s"] > 0 for r in rows)
    assert report["panoptic_deeplab_training"]["images_per_s"] > 0 and report["sognet_latency"]["median_s"] > 0


def test_frozen_network_reproduces_the_eager_one(exported):
    """``FrozenNetwork`` (traced, frozen, optimised for inference): the eager head outputs to float
    rounding at two sizes and a batch (one graph each), and ``predict`` through it equal to eager's."""
    from panopticlab.models.panoptic_deeplab.frozen import FrozenNetwork

    model, _, _, _ = exported
    frozen = FrozenNetwork(model.network)
    for shape in [(1, 3, 64, 96), (2, 3, 96, 64), (1, 3, 64, 96)]:
        images = torch.rand(*shape) * 255
        with torch.no_grad():
            expected = model.network.forward_heads(images)
        got = frozen.forward_heads(images)
        for name in ("sem_seg", "center", "offset"):
            torch.testing.assert_close(got[name], expected[name], atol=1e-4 * max(1.0, float(expected[name].abs().max())), rtol=0)
    assert len(frozen._graphs) == 2
    images = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8)
    expected = model.predict(images)
    for e, g in zip(expected, _with_network(model, FrozenNetwork).predict(images)):
        np.testing.assert_array_equal(g.id_map, e.id_map)


def test_cli_predict_frozen(exported, tmp_path, capsys):
    _, config, weights, report = exported
    image = tmp_path / "in" / "a.png"
    image.parent.mkdir()
    from PIL import Image

    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(image)
    for extra, folder in ((["--frozen"], "frozen"), ([], "eager")):
        assert main(["predict", "--config", str(config), "--weights", str(weights), str(image), "--output", str(tmp_path / folder), *extra]) == 0
    frozen, eager = (json.loads((tmp_path / f / "panoptic.json").read_text())["annotations"][0]["segments_info"] for f in ("frozen", "eager"))
    assert [s["area"] for s in frozen] == [s["area"] for s in eager]
    assert main(["predict", "--config", str(config), "--onnx", str(report.path), str(image), "--output", str(tmp_path / "x"), "--frozen"]) == 2
    assert "--frozen applies to a Panoptic-DeepLab model run by PyTorch" in capsys.readouterr().err


def test_bf16_network_runs_the_convolutions_in_bf16_and_hands_on_float32(exported):
    """``Bf16Network``: the convolutions see bfloat16, the heads come out float32 and within
    bfloat16's rounding of fp32; ``predict`` through it gives nearly the same panoptic map."""
    from panopticlab.models.panoptic_deeplab.bf16 import Bf16Network

    model, _, _, _ = exported
    seen = []
    conv = next(m for m in model.network.modules() if isinstance(m, torch.nn.Conv2d))
    hook = conv.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    images = torch.rand(2, 3, 64, 96) * 255
    try:
        got = Bf16Network(model.network).forward_heads(images)
        with torch.no_grad():
            expected = model.network.forward_heads(images)
    finally:
        hook.remove()
    assert seen == [torch.bfloat16, torch.float32]
    for name in ("sem_seg", "center", "offset"):
        assert got[name].dtype == torch.float32
        scale = float(expected[name].abs().max())
        assert 0 < float((got[name] - expected[name]).abs().max()) < 0.05 * scale
    uint8_images = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8)
    eager = model.predict(uint8_images)
    for e, g in zip(eager, _with_network(model, Bf16Network).predict(uint8_images)):
        assert np.mean(_category_map(g) == _category_map(e)) > 0.9 and (_category_map(g) > 0).any()


def _with_network(model, wrapper):
    """A copy of the tiny ``model`` whose network is ``wrapper(network)`` (frozen, bf16)."""
    copy = build_model(from_dict(Config, {"model": PD_TINY}))
    copy.load_state_dict(model.state_dict())
    copy.network = wrapper(copy.network)
    return copy


def _category_map(result) -> np.ndarray:
    """int [H, W]: each pixel's category id (0 = VOID), whatever its segment's id."""
    lookup = np.zeros(int(result.id_map.max()) + 1, dtype=np.int64)
    for segment in result.segments:
        lookup[segment.id] = segment.category_id
    return lookup[result.id_map]


def test_cli_predict_bf16(exported, tmp_path, capsys):
    _, config, weights, _ = exported
    image = tmp_path / "in" / "a.png"
    image.parent.mkdir()
    from PIL import Image

    Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(image)
    base = ["predict", "--config", str(config), "--weights", str(weights), str(image)]
    assert main([*base, "--output", str(tmp_path / "bf16"), "--bf16"]) == 0
    segments = json.loads((tmp_path / "bf16" / "panoptic.json").read_text())["annotations"][0]["segments_info"]
    assert sum(s["area"] for s in segments) > 0
    assert main([*base, "--output", str(tmp_path / "x"), "--bf16", "--frozen"]) == 2
    assert "--frozen and --bf16 exclude each other" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
