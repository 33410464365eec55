"""Panoptic-DeepLab end to end: configs -> model -> losses -> predictions -> PQ."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import panopticlab
from conftest import shared_file
from panopticlab.errors import InputError
from panopticlab.weights import load_weights, save_weights
from panopticlab.config import Config, from_dict, load_config
from panopticlab.data.synthetic import ShapesConfig, generate_sample
from panopticlab.evaluation import PanopticEvaluator
from panopticlab.models import build_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "panoptic_deeplab"
KEYS = Path(__file__).resolve().parents[2] / "shared" / "reference" / "detectron2_keys"

# A model small enough to train for a few steps in a test.
TINY = {
    "categories": "shapes",
    "panoptic_deeplab": {
        "backbone": "timm:resnet10t",
        "aspp_channels": 64,
        "semantic_decoder_channels": 64,
        "instance_decoder_channels": 32,
        "semantic_head_channels": 64,
        "instance_head_channels": 16,
        "semantic_projection_channels": [32, 16],
        "instance_projection_channels": [32, 16],
        "sigma": 3,
        "small_instance_area": 0,
        "stuff_area": 16,
        "nms_kernel": 5,
        "center_threshold": 0.3,
    },
}


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(from_dict(Config, {"model": TINY}))


def shapes_items(n: int, size: int = 64):
    samples = [generate_sample(ShapesConfig(height=size, width=size, crowd=0, void=0), 0, k) for k in range(n)]
    items = [{"image": torch.from_numpy(s.image.transpose(2, 0, 1).copy()), "panoptic": s.panoptic} for s in samples]
    return samples, items


@pytest.mark.parametrize(
    "config_file, keys_file",
    [
        ("r52_dsconv_cityscapes.yaml", "keys_r52_dsconv.json"),
        ("r52_cityscapes.yaml", "keys_panoptic_deeplab_R_52_os16_mg124_poly_90k_bs32_crop_512_1024.json"),
        ("r52_dsconv_coco.yaml", "keys_panoptic_deeplab_R_52_os16_mg124_poly_200k_bs64_crop_640_640_coco_dsconv.json"),
    ],
)
def test_model_zoo_configs_build_detectron2s_architectures(config_file, keys_file):
    expected = json.loads(shared_file(KEYS / keys_file).read_text())["summary"]["num_params"]
    model = build_model(load_config(Config, CONFIGS / config_file))
    assert sum(p.numel() for p in model.parameters()) == expected


def test_training_step_returns_named_weighted_losses_that_backpropagate():
    model = tiny_model()
    _, items = shapes_items(2)
    with pytest.raises(ValueError, match=r"batch item 0 has no 'targets': run model.data_transform\(\)"):
        model(items)  # forward does not make targets behind the trainer's back
    transform = model.data_transform()
    losses = model([transform(item) for item in items])
    assert sorted(losses) == ["loss_center", "loss_offset", "loss_sem_seg"]
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.network.semantic_head.parameters())


def test_predict_accepts_paths_pil_numpy_and_tensors_alike(tmp_path):
    model = tiny_model().eval()
    samples, _ = shapes_items(1)
    image = samples[0].image
    Image.fromarray(image).save(tmp_path / "a.png")
    inputs = [str(tmp_path / "a.png"), Image.fromarray(image), image, torch.from_numpy(image.transpose(2, 0, 1).copy())]
    results = [model.predict(x)[0] for x in inputs]
    for r in results[1:]:
        np.testing.assert_array_equal(r.id_map, results[0].id_map)
    batch = model.predict(torch.from_numpy(np.stack([image, image]).transpose(0, 3, 1, 2).copy()))
    assert len(batch) == 2 and all(s.category_id in model.categories for s in batch[0].segments)


def test_flip_tta_is_equivariant_to_flipping_the_image():
    """With flip TTA, predicting on a mirrored image gives the mirrored heads (x offset negated)."""
    model = tiny_model().eval()
    image = torch.from_numpy(shapes_items(1)[0][0].image.transpose(2, 0, 1).copy()).float()[None]
    with torch.no_grad():
        out = model._heads_with_tta(image, (1.0, 0.75), True)
        mirrored = model._heads_with_tta(image.flip(-1), (1.0, 0.75), True)
    torch.testing.assert_close(mirrored["sem_seg"], out["sem_seg"].flip(-1), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(mirrored["center"], out["center"].flip(-1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mirrored["offset"][:, 0], out["offset"][:, 0].flip(-1), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(mirrored["offset"][:, 1], -out["offset"][:, 1].flip(-1), atol=1e-4, rtol=1e-4)
    # One scale without flip is exactly the plain forward pass.
    with torch.no_grad():
        torch.testing.assert_close(model._heads_with_tta(image, (1.0,), False)["center"], model.forward_heads(image)["center"])


def test_load_model_round_trips_weights(tmp_path):
    model = tiny_model(seed=1).eval()
    (tmp_path / "tiny.yaml").write_text(json.dumps({"model": TINY}))  # JSON is YAML
    save_weights(model, tmp_path / "w.safetensors")
    loaded = panopticlab.load_model(tmp_path / "tiny.yaml", tmp_path / "w.safetensors")
    assert not loaded.training
    image = shapes_items(1)[0][0].image
    with torch.no_grad():
        a = model.forward_heads(torch.from_numpy(image.transpose(2, 0, 1).copy()).float()[None])
        b = loaded.forward_heads(torch.from_numpy(image.transpose(2, 0, 1).copy()).float()[None])
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_a_tiny_model_overfits_a_handful_of_shapes_images():
    torch.set_num_threads(2)
    model = tiny_model()
    samples, items = shapes_items(4)
    items = [model.data_transform()(item) for item in items]
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    first = None
    for _ in range(80):
        losses = model(items)
        total = sum(losses.values())
        first = first if first is not None else {k: v.item() for k, v in losses.items()}
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    last = {k: v.item() for k, v in model(items).items()}
    assert last["loss_sem_seg"] < 0.5 * first["loss_sem_seg"]
    assert last["loss_center"] < 0.5 * first["loss_center"]

    evaluator = PanopticEvaluator(model.categories)
    for k, (sample, prediction) in enumerate(zip(samples, model.predict([it["image"] for it in items]))):
        evaluator.add(sample.panoptic, prediction, image_id=k)
    pq = evaluator.evaluate()["panoptic"]["All"]["pq"]
    assert pq > 0.4, pq  # an untrained model scores about 0


def test_weights_load_into_the_module_they_name(tmp_path):
    """A bare network's file loads into ``model.network``, a model's file into the network with its
    prefix, and a network's file into the whole model is refused, naming the missing keys."""
    model = tiny_model(seed=2).eval()
    save_weights(model.network, tmp_path / "net.safetensors")
    save_weights(model, tmp_path / "model.safetensors")
    other = tiny_model(seed=3)
    load_weights(other.network, tmp_path / "net.safetensors")
    for key, value in model.state_dict().items():
        torch.testing.assert_close(other.state_dict()[key], value)
    network = tiny_model(seed=4).network
    load_weights(network, tmp_path / "model.safetensors", prefix="network.")
    assert all(torch.equal(network.state_dict()[k], v) for k, v in model.network.state_dict().items())
    with pytest.raises(InputError, match=r"net.safetensors: does not fit the model: .*missing keys \(network\."):
        load_weights(tiny_model(), tmp_path / "net.safetensors")
    with pytest.raises(InputError, match="no keys start with 'head.'"):
        load_weights(network, tmp_path / "model.safetensors", prefix="head.")


def test_predict_batches_images_of_one_size_and_results_do_not_depend_on_the_batch():
    from panopticlab.models.panoptic_deeplab import model as pd_model

    model = tiny_model().eval()
    with torch.no_grad():  # heads that find things, so the comparison has instances in it
        for p in model.network.center_head.parameters():
            p.normal_(0, 0.3)
        model.network.center_head.predictor.bias.fill_(1.0)  # above the 0.3 threshold: peaks become centres
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, 64, 96), generator=g, dtype=torch.uint8) for _ in range(3)]
    images.insert(2, torch.randint(0, 256, (3, 48, 64), generator=g, dtype=torch.uint8))
    calls = []
    forward = model.forward_heads
    model.forward_heads = lambda x: calls.append(tuple(x.shape)) or forward(x)
    together = model.predict(images)
    assert calls == [(2, 3, 64, 96), (1, 3, 48, 64), (1, 3, 64, 96)]  # runs of one size, in order
    alone = [model.predict(image)[0] for image in images]
    assert any(s.isthing for r in alone for s in r.segments)
    for a, b in zip(together, alone):
        np.testing.assert_array_equal(a.id_map, b.id_map)
        assert [(s.id, s.category_id, s.area) for s in a.segments] == [(s.id, s.category_id, s.area) for s in b.segments]
    assert pd_model._same_size_runs([]) == []


def test_res1_is_a_decoder_stage_for_timm_backbones_only():
    section = {**TINY["panoptic_deeplab"], "low_level_features": ["res3", "res2", "res1"],
               "semantic_projection_channels": [32, 16, 16], "instance_projection_channels": [32, 16, 16]}  # fmt: skip
    assert from_dict(Config, {"model": {**TINY, "panoptic_deeplab": section}}).model.panoptic_deeplab.problems() == []
    with pytest.raises(InputError, match="res1: timm backbones"):
        build_model(from_dict(Config, {"model": {**TINY, "panoptic_deeplab": {**section, "backbone": "r52_dc5"}}}))
