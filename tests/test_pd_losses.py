"""Panoptic-DeepLab losses on tiny examples worked out by hand (detectron2's normalisers)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from panopticlab.models.panoptic_deeplab.losses import (
    DeepLabCE,
    center_loss,
    deeplab_cross_entropy,
    offset_loss,
    panoptic_deeplab_losses,
)
from panopticlab.models.panoptic_deeplab.targets import PanopticDeepLabTargetGenerator, collate_targets


def softplus(z: float) -> float:
    return math.log1p(math.exp(z))


def two_class_batch(z: list[float], labels: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [1, 2, 1, N] = (0, z_i): with label 0 a pixel's cross-entropy is softplus(z_i)."""
    zs = torch.tensor(z, dtype=torch.float32)
    logits = torch.stack([torch.zeros_like(zs), zs]).reshape(1, 2, 1, -1)
    return logits, torch.tensor(labels).reshape(1, 1, -1)


# Pixel losses softplus(0..3); the last pixel is ignored (its loss would be the largest).
Z = [0.0, 1.0, 2.0, 3.0, 10.0]
LABELS = [0, 0, 0, 0, 255]


def test_plain_mean_divides_by_all_pixels_including_ignored():
    logits, labels = two_class_batch(Z, LABELS)
    expected = sum(softplus(z) for z in Z[:4]) / 5
    assert deeplab_cross_entropy(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_top_k_counts_ignored_pixels_in_numel():
    logits, labels = two_class_batch(Z, LABELS)
    # k = int(0.4 * 5) = 2 hardest: softplus(3), softplus(2)  (with 4 valid pixels k would be 1)
    loss = deeplab_cross_entropy(logits, labels, top_k_percent_pixels=0.4)
    assert loss.item() == pytest.approx((softplus(3) + softplus(2)) / 2, rel=1e-6)


def test_pixel_weights_apply_before_top_k():
    logits, labels = two_class_batch(Z, LABELS)
    weights = torch.tensor([1.0, 3.0, 1.0, 1.0, 1.0]).reshape(1, 1, 5)  # 3 * softplus(1) = 3.94 > softplus(3)
    loss = DeepLabCE(top_k_percent_pixels=0.4)(logits, labels, weights)
    assert loss.item() == pytest.approx((3 * softplus(1) + softplus(3)) / 2, rel=1e-6)


def test_top_k_is_taken_over_the_whole_batch_not_per_image():
    hard, labels = two_class_batch([4.0, 5.0], [0, 0])
    easy, _ = two_class_batch([-4.0, -5.0], [0, 0])
    loss = deeplab_cross_entropy(torch.cat([hard, easy]), labels.repeat(2, 1, 1), top_k_percent_pixels=0.5)
    assert loss.item() == pytest.approx((softplus(4) + softplus(5)) / 2, rel=1e-6)


def test_class_weight_is_a_buffer_and_scales_pixel_losses():
    logits, labels = two_class_batch([1.0, 2.0], [0, 1])
    ce = DeepLabCE(weight=torch.tensor([2.0, 0.5]))
    assert "weight" in dict(ce.named_buffers())
    expected = (2 * softplus(1.0) + 0.5 * softplus(-2.0)) / 2
    assert ce(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_center_loss_is_weighted_mse_over_the_sum_of_weights():
    prediction = torch.tensor([1.0, 2.0, 3.0]).reshape(1, 1, 1, 3)
    target = torch.tensor([0.0, 0.0, 1.0]).reshape(1, 1, 1, 3)
    weights = torch.tensor([1.0, 0.0, 1.0]).reshape(1, 1, 1, 3)
    assert center_loss(prediction, target, weights).item() == pytest.approx((1 + 4) / 2)


def test_losses_are_zero_without_weights_and_still_backpropagate():
    prediction = torch.ones(1, 2, 2, 2, requires_grad=True)
    weights = torch.zeros(1, 1, 2, 2)
    loss = center_loss(prediction[:, :1], torch.zeros(1, 1, 2, 2), weights) + offset_loss(
        prediction, torch.zeros(1, 2, 2, 2), weights
    )
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(prediction.grad, torch.zeros(1, 2, 2, 2))


def test_offset_loss_normalisers_d2_pixels_vs_bc_elements():
    # pixel 0 (weighted): |dy| + |dx| = 1 + 2 ; pixel 1 (weight 0): 5 + 7
    prediction = torch.tensor([[1.0, 5.0], [2.0, 7.0]]).reshape(1, 2, 1, 2)
    weights = torch.tensor([1.0, 0.0]).reshape(1, 1, 1, 2)
    target = torch.zeros(1, 2, 1, 2)
    assert offset_loss(prediction, target, weights).item() == pytest.approx(3.0)
    assert offset_loss(prediction, target, weights, normalizer="elements").item() == pytest.approx(1.5)


def test_mismatched_shapes_raise_instead_of_broadcasting():
    with pytest.raises(ValueError, match="center"):
        center_loss(torch.zeros(2, 1, 3, 3), torch.zeros(2, 3, 3), torch.ones(2, 1, 3, 3))
    with pytest.raises(ValueError, match="weights"):
        offset_loss(torch.zeros(2, 2, 3, 3), torch.zeros(2, 2, 3, 3), torch.ones(2, 3, 3))


def test_combined_losses_are_named_and_weighted():
    logits, labels = two_class_batch(Z, LABELS)
    center_pred = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0]).reshape(1, 1, 1, 5)
    offset_pred = torch.tensor([[1.0, 5.0, 0, 0, 0], [2.0, 7.0, 0, 0, 0]]).reshape(1, 2, 1, 5)
    weights = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0]).reshape(1, 1, 1, 5)
    outputs = {"sem_seg": logits, "center": center_pred, "offset": offset_pred}
    targets = {
        "sem_seg": labels,
        "center": torch.zeros(1, 1, 1, 5),
        "offset": torch.zeros(1, 2, 1, 5),
        "center_weights": weights,
        "offset_weights": weights,
    }
    losses = panoptic_deeplab_losses(outputs, targets, top_k_percent=0.4)
    assert set(losses) == {"loss_sem_seg", "loss_center", "loss_offset"}
    assert losses["loss_sem_seg"].item() == pytest.approx((softplus(3) + softplus(2)) / 2, rel=1e-6)
    assert losses["loss_center"].item() == pytest.approx(200 * (1 + 9) / 2)
    assert losses["loss_offset"].item() == pytest.approx(0.01 * 3 / 2)

    bc = panoptic_deeplab_losses(outputs, targets, semantic_weight=2.0, top_k_percent=1.0, offset_normalizer="elements")
    assert bc["loss_sem_seg"].item() == pytest.approx(2 * sum(softplus(z) for z in Z[:4]) / 5, rel=1e-6)
    assert bc["loss_offset"].item() == pytest.approx(0.01 * 3 / 4)


def test_generated_targets_give_zero_instance_losses_for_a_perfect_prediction():
    panoptic = np.zeros((8, 10), dtype=np.int64)
    panoptic[1:4, 1:5] = 1
    panoptic[5:8, 2:9] = 2
    panoptic[:, 9] = 3
    generator = PanopticDeepLabTargetGenerator(255, [1], sigma=2, ignore_stuff_in_offset=True)
    segments = [{"id": i, "category_id": c, "iscrowd": 0} for i, c in [(1, 1), (2, 1), (3, 0)]]
    batch = collate_targets([generator(panoptic, segments)] * 2)
    logits = torch.nn.functional.one_hot(batch["sem_seg"].clamp(max=1), 2).permute(0, 3, 1, 2).float() * 50
    outputs = {"sem_seg": logits, "center": batch["center"].clone(), "offset": batch["offset"].clone()}
    losses = panoptic_deeplab_losses(outputs, batch)
    assert losses["loss_center"].item() == 0.0 and losses["loss_offset"].item() == 0.0
    assert losses["loss_sem_seg"].item() < 1e-6
    outputs["offset"] = outputs["offset"] + 1.0  # |dy| + |dx| = 2 on the 33 thing pixels only
    assert panoptic_deeplab_losses(outputs, batch)["loss_offset"].item() == pytest.approx(0.01 * 2)
