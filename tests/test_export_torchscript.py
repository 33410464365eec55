"""TorchScript export of Panoptic-DeepLab: one file, network + test-time augmentation + post-processing,
that gives predict's panoptic map and segment table."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import yaml

from panopticlab.cli import main
from panopticlab.config import Config, from_dict
from panopticlab.errors import InputError
from panopticlab.export import _check_script_equals_predict, export_torchscript
from panopticlab.models import build_model
from panopticlab.models.panoptic_deeplab.postprocess import image_segment_table
from panopticlab.weights import save_weights
from test_pd_model import TINY as PD_TINY

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(seed: int, **settings):
    """A tiny Panoptic-DeepLab whose heads give trained-looking outputs (random, larger than at initialisation)."""
    torch.manual_seed(seed)
    section = {**PD_TINY, "panoptic_deeplab": {**PD_TINY["panoptic_deeplab"], **settings}}
    model = build_model(from_dict(Config, {"model": section})).eval()
    with torch.no_grad():
        for head in (model.network.semantic_head, model.network.center_head, model.network.offset_head):
            for p in head.parameters():
                p.normal_(0, 0.3)
    return model, section


def _as_table(result):
    return [[s.id, s.category_id, int(s.isthing), s.area, *s.bbox] for s in result.segments]


def _assert_equal(outputs, expected):
    id_map, segments, scores = outputs
    assert id_map.dtype == torch.int32 and segments.dtype == torch.int64 and scores.dtype == torch.float64
    np.testing.assert_array_equal(id_map.numpy(), expected.id_map)
    assert segments.tolist() == _as_table(expected)
    want = [s.score if s.isthing else float("nan") for s in expected.segments]
    np.testing.assert_allclose(scores.numpy(), want, rtol=1e-6, atol=1e-9, equal_nan=True)


@pytest.mark.parametrize(
    "settings",
    [{}, {"tta_flip": True, "tta_scales": [0.75, 1.0], "class_vote": "mean_probability", "center_threshold": 0.1}],
    ids=["single_pass", "tta_and_mean_probability"],
)
def test_the_scripted_file_gives_predicts_results_at_sizes_it_was_not_traced_at(tmp_path, settings):
    model, _ = _model(0, **settings)
    report = export_torchscript(model, tmp_path / "model.pt", sample_size=(64, 96), check_size=(96, 64))
    assert report.checked_sizes == [(64, 96), (96, 64)] and report.size_bytes > 0
    script = torch.jit.load(report.path)
    thing_segments = 0
    for k, size in enumerate([(80, 112), (32, 64), (64, 96)]):
        image = torch.from_numpy(np.random.default_rng(k).integers(0, 256, (3, *size), dtype=np.uint8))
        expected = model.predict(image)[0]
        with torch.no_grad():
            _assert_equal(script(image), expected)
        thing_segments += sum(s.isthing for s in expected.segments)
    assert thing_segments > 3  # the comparison covered instances, not only stuff


def test_the_scripted_post_processing_equals_the_eager_one_with_many_centres_and_ties():
    """TorchScript compiles the post-processing's own functions; on integer-valued offsets (ties between
    centres) and a heatmap with plateaus, including >= 24 centres (the tiled candidate path)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(image_segment_table)
    generator = torch.Generator().manual_seed(0)
    instances = []
    for k in range(6):
        height, width = 48 + 8 * k, 64
        logits = torch.randn(5, height, width, generator=generator) * 3
        heatmap = torch.randint(0, 200, (height, width), generator=generator).float() / 199  # some plateaus
        offsets = torch.randint(-20, 21, (2, height, width), generator=generator).float()
        arguments = (logits, heatmap, offsets, [0, 2, 3], 10, 0.1, 3 if k % 2 else 7, 200 if k < 4 else 5, k % 3 == 0)
        eager, compiled = image_segment_table(*arguments), scripted(*arguments)
        assert torch.equal(eager.id_map, compiled.id_map) and torch.equal(eager.stats, compiled.stats)
        torch.testing.assert_close(eager.score, compiled.score, rtol=0, atol=0)
        assert eager.num_instances == compiled.num_instances
        instances.append(eager.num_instances)
    assert max(instances) >= 24 and min(instances) == 0, instances  # the tiled path, and top_k leaving no centre


def test_a_file_that_does_not_reproduce_predict_is_refused(tmp_path):
    model, _ = _model(0)
    other, _ = _model(1)
    report = export_torchscript(model, tmp_path / "model.pt", sample_size=(64, 64))
    with pytest.raises(InputError, match="does not reproduce predict"):
        _check_script_equals_predict(torch.jit.load(report.path), other, (64, 64), tmp_path / "x.pt")


def test_cli_export_torchscript(tmp_path, capsys):
    model, section = _model(0)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"model": section}))
    weights = tmp_path / "tiny.safetensors"
    save_weights(model.state_dict(), weights)
    out = tmp_path / "model.pt"
    command = ["export", "--config", str(config), "--weights", str(weights), "--format", "torchscript", "--output", str(out), "--size", "64", "64"]
    assert main(command) == 0
    assert "equal to predict at 64x64 and 32x32" in capsys.readouterr().out
    image = torch.randint(0, 256, (3, 48, 80), dtype=torch.uint8)
    with torch.no_grad():
        _assert_equal(torch.jit.load(str(out))(image), model.predict(image)[0])
    # an existing file is kept; an unknown format is one line
    assert main(command) == 2 and "already exists" in capsys.readouterr().err
    command[command.index("torchscript")] = "tensorrt"
    assert main(command) == 2 and "unsupported" in capsys.readouterr().err
    assert not list(tmp_path.glob(".export-*"))


def test_sognets_backbone_and_fpn_script_and_give_the_eager_features():
    """What of SOGNet / UPSNet TorchScript compiles today (docs/export.md): the backbone + FPN."""
    from test_sognet_model import TINY as SOGNET_TINY

    torch.manual_seed(0)
    model = build_model(from_dict(Config, {"model": SOGNET_TINY})).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(model.detector.backbone)
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected, got = model.detector.backbone(images), scripted(images)
    assert list(got) == list(expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name])
