"""The test-time joint bilateral refinement add-on (models/addons/bilateral.py), given to Panoptic-DeepLab."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from panopticlab.config import Config, from_dict
from panopticlab.errors import InputError
from panopticlab.models import build_model
from panopticlab.models.addons.bilateral import BilateralRefinement, bilateral_filter, bilateral_weights
from panopticlab.models.panoptic_deeplab.model import refined_heads
from panopticlab.models.panoptic_deeplab.postprocess import panoptic_deeplab_inference
from test_pd_model import TINY, shapes_items


def unfold_weights(image: torch.Tensor, radius: int, sigma_color: float, sigma_space: float) -> torch.Tensor:
    """The weights written another way: every window at once with ``F.unfold`` (neighbours in row order)."""
    batch, channels, height, width = image.shape
    side = 2 * radius + 1
    neighbours = F.unfold(image, side, padding=radius).view(batch, channels, side * side, height, width)
    colour = (neighbours - image[:, :, None]).square().sum(dim=1)
    steps = torch.arange(-radius, radius + 1.0)
    space = (steps[:, None] ** 2 + steps[None, :] ** 2).flatten().view(1, -1, 1, 1)
    inside = F.unfold(torch.ones(1, 1, height, width), side, padding=radius).view(1, side * side, height, width)
    logits = -colour / (2 * sigma_color**2) - space / (2 * sigma_space**2)
    return torch.softmax(logits.masked_fill(inside == 0, float("-inf")), dim=1)


def test_the_weights_and_one_pass_equal_an_unfold_computation():
    torch.manual_seed(0)
    image, values = torch.rand(2, 3, 10, 13) * 255, torch.rand(2, 4, 10, 13)
    weights = bilateral_weights(image, 2, 40.0, 1.5)
    reference = unfold_weights(image, 2, 40.0, 1.5)
    assert torch.allclose(weights, reference, atol=1e-6)
    neighbours = F.unfold(values, 5, padding=2).view(2, 4, 25, 10, 13)
    assert torch.allclose(bilateral_filter(values, weights, 1), (neighbours * reference[:, None]).sum(dim=2), atol=1e-6)


def test_on_a_uniform_image_the_weights_are_the_spatial_gaussian_over_the_neighbours_inside():
    weights = bilateral_weights(torch.full((1, 3, 6, 6), 80.0), 1, 30.0, 1.0)
    gaussian = torch.tensor([[np.exp(-(dy * dy + dx * dx) / 2) for dx in (-1, 0, 1)] for dy in (-1, 0, 1)], dtype=torch.float32)
    assert torch.allclose(weights[0, :, 3, 3], (gaussian / gaussian.sum()).flatten())
    # the top-left corner has only its lower-right 2x2 neighbours in the image
    corner = torch.zeros(3, 3)
    corner[1:, 1:] = gaussian[1:, 1:] / gaussian[1:, 1:].sum()
    assert torch.allclose(weights[0, :, 0, 0], corner.flatten())
    # a constant map stays constant, and the weights sum to 1 everywhere
    assert torch.allclose(weights.sum(dim=1), torch.ones(1, 6, 6))
    assert torch.allclose(bilateral_filter(torch.full((1, 2, 6, 6), 0.25), weights, 3), torch.full((1, 2, 6, 6), 0.25))


def test_a_boundary_predicted_off_the_colour_edge_moves_onto_it():
    # image: columns 0..7 black, 8..15 grey 200; the map's class-1 probability crosses 0.5 between
    # columns 4 and 5, so columns 5..7 are on the wrong side of the edge. A 200-level step is
    # 200 levels in each channel: exp(-3 x 200^2 / (2 x 30^2)), about 1e-29 of a same-colour weight.
    image = torch.zeros(1, 3, 4, 16)
    image[..., 8:] = 200.0
    columns = torch.arange(16.0).expand(4, 16)
    second = torch.sigmoid((columns - 4.5) / 1.5)
    probability = torch.stack((1 - second, second))[None]
    assert probability.argmax(dim=1)[0, 0].tolist() == [0] * 5 + [1] * 11
    filtered = bilateral_filter(probability, bilateral_weights(image, 3, 30.0, 3.0), 10)
    assert filtered.argmax(dim=1)[0].tolist() == [[0] * 8 + [1] * 8] * 4
    assert torch.allclose(filtered.sum(dim=1), torch.ones(1, 4, 16))


def test_refined_heads_are_log_probabilities_and_keep_an_instances_centre():
    # one grey square on black; inside it the offsets point to its centre (5.5, 5.5) exactly
    image = torch.zeros(1, 3, 12, 12)
    image[..., 3:9, 3:9] = 150.0
    ys, xs = torch.meshgrid(torch.arange(12.0), torch.arange(12.0), indexing="ij")
    offset = torch.stack((5.5 - ys, 5.5 - xs))[None]
    torch.manual_seed(1)
    sem_seg = torch.randn(1, 3, 12, 12)
    refinement = BilateralRefinement(iterations=4, radius=2, sigma_color=20.0, sigma_space=2.0)
    center = torch.rand(1, 1, 12, 12)
    refined = refined_heads(image, {"sem_seg": sem_seg, "center": center, "offset": offset}, refinement.refine)
    refined_sem_seg, refined_offset = refined["sem_seg"], refined["offset"]
    assert refined["center"] is center
    assert refined_sem_seg.shape == sem_seg.shape and refined_offset.shape == offset.shape
    weights = bilateral_weights(image, 2, 20.0, 2.0)
    assert torch.allclose(refined_sem_seg.exp(), bilateral_filter(torch.softmax(sem_seg, dim=1), weights, 4), atol=1e-6)
    assert torch.allclose(refined_sem_seg.exp().sum(dim=1), torch.ones(1, 12, 12), atol=1e-5)
    assert torch.allclose(refined_offset[..., 3:9, 3:9], offset[..., 3:9, 3:9], atol=1e-4)


def bilateral_model(**options):
    """The tiny model, given the bilateral refinement with these settings (none: not given)."""
    torch.manual_seed(0)
    section = {**TINY["panoptic_deeplab"], "center_threshold": -1.0}
    addons = {"bilateral": options} if options else {}
    return build_model(from_dict(Config, {"model": {**TINY, "panoptic_deeplab": section, "addons": addons}}))


def test_predict_groups_the_refined_heads():
    model = bilateral_model(iterations=2, radius=3, sigma_color=25.0, sigma_space=2.0)
    samples, _ = shapes_items(2)
    image = torch.stack([torch.from_numpy(s.image.transpose(2, 0, 1).copy()) for s in samples])
    with torch.no_grad():
        heads = model.eval().forward_heads(image.float())
        refinement = BilateralRefinement(iterations=2, radius=3, sigma_color=25.0, sigma_space=2.0)
        refined = refined_heads(image.float(), heads, refinement.refine)
        sem_seg, offset = refined["sem_seg"], refined["offset"]
        s = model.inference
        expected = panoptic_deeplab_inference(
            sem_seg, heads["center"], offset, thing_ids=model.thing_ids, stuff_area=s.stuff_area, threshold=s.center_threshold,
            nms_kernel=s.nms_kernel, top_k=s.top_k, category_ids=model.categories.ids, class_vote=s.class_vote,
        )  # fmt: skip
        plain = bilateral_model().predict(list(image))
    results = model.predict(list(image))
    for result, wanted in zip(results, expected, strict=True):
        assert np.array_equal(result.id_map, wanted.id_map)
        assert result.segments == wanted.segments
    assert any(not np.array_equal(r.id_map, p.id_map) for r, p in zip(results, plain))


@pytest.mark.parametrize(
    "key, value",
    [("iterations", -1), ("radius", 0), ("sigma_color", 0.0), ("sigma_space", -2.0)],
)
def test_bad_bilateral_values_are_named(key, value):
    with pytest.raises(InputError, match=f"bilateral.{key}"):
        bilateral_model(**{key: value})


def test_torchscript_export_refuses_the_bilateral_refinement(tmp_path):
    from panopticlab.export import export_torchscript

    with pytest.raises(InputError, match="add-ons .model.addons: bilateral"):
        export_torchscript(bilateral_model(iterations=1), tmp_path / "model.pt")
    assert not (tmp_path / "model.pt").exists()
