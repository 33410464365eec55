"""UPSNet/SOGNet parameter-free panoptic head: paste, crop, logits, unknown class, target, loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from panopticlab.masks import overlap_graph
from panopticlab.models.sognet import (
    RelationModule,
    box_support,
    crop_to_boxes,
    panoptic_logits,
    panoptic_loss,
    panoptic_target,
    paste_mask_logits,
    relation_loss,
    remove_overlaps,
    unknown_logits,
)

pytestmark = pytest.mark.usefixtures("one_thread")

IGNORE = 255


def sig(z: float) -> float:
    return 1 / (1 + math.exp(-z))


# ---------------------------------------------------------------------------------------
# Paste and crop
# ---------------------------------------------------------------------------------------


def test_paste_constant_fills_exactly_the_box():
    mask = torch.full((1, 28, 28), 1.7)
    pasted = paste_mask_logits(mask, torch.tensor([[3.0, 2.0, 9.0, 7.0]]), 10, 12)
    assert pasted.shape == (1, 10, 12)
    inside = torch.zeros(10, 12, dtype=torch.bool)
    inside[2:7, 3:9] = True  # rows y0..y1-1, columns x0..x1-1: no 1-pixel expansion
    torch.testing.assert_close(pasted[0][inside], torch.full((int(inside.sum()),), 1.7))
    assert torch.all(pasted[0][~inside] == 0)


def test_paste_fractional_box_covers_the_pixels_it_touches():
    mask = torch.full((1, 28, 28), -2.5)
    pasted = paste_mask_logits(mask, torch.tensor([[2.5, 1.2, 6.3, 4.0]]), 6, 8)
    inside = torch.zeros(6, 8, dtype=torch.bool)
    inside[1:4, 2:7] = True  # rows 1..3 (y < 4, y + 1 > 1.2), columns 2..6 (x < 6.3, x + 1 > 2.5)
    assert torch.equal(pasted[0] != 0, inside)
    torch.testing.assert_close(pasted[0][inside], torch.full((15,), -2.5))


def test_paste_at_mask_size_is_the_identity_and_at_half_size_averages():
    g = torch.Generator().manual_seed(0)
    mask = torch.randn(1, 28, 28, generator=g)
    same = paste_mask_logits(mask, torch.tensor([[5.0, 3.0, 33.0, 31.0]]), 40, 40)
    torch.testing.assert_close(same[0, 3:31, 5:33], mask[0])  # pixel centres on cell centres
    half = paste_mask_logits(mask, torch.tensor([[1.0, 2.0, 15.0, 16.0]]), 20, 20)
    # align_corners=False at a factor 2: each pixel centre sits between four cells.
    torch.testing.assert_close(half[0, 2:16, 1:15], F.avg_pool2d(mask[None], 2)[0, 0])


def test_paste_gradients_flow_to_the_mask_logits():
    mask = torch.randn(2, 28, 28, requires_grad=True)
    boxes = torch.tensor([[1.0, 1.0, 7.0, 5.0], [0.3, 2.7, 3.1, 9.9]])
    pasted = paste_mask_logits(mask, boxes, 12, 9)
    pasted.sum().backward()
    # Bilinear weights sum to 1 per output pixel, so each instance's gradient sums to its pixel count.
    counts = box_support(boxes, 12, 9).flatten(1).sum(1).float()
    torch.testing.assert_close(mask.grad.flatten(1).sum(1), counts)
    assert torch.count_nonzero(mask.grad[0]) > 0


def test_paste_empty_box_and_no_instances():
    mask = torch.randn(1, 28, 28, requires_grad=True)
    pasted = paste_mask_logits(mask, torch.tensor([[4.0, 4.0, 4.0, 9.0]]), 10, 10)  # zero width
    assert torch.all(pasted == 0)
    pasted.sum().backward()
    assert torch.all(mask.grad == 0)  # finite: no NaN from the zero-width division
    assert paste_mask_logits(torch.zeros(0, 28, 28), torch.zeros(0, 4), 5, 6).shape == (0, 5, 6)


def test_crop_and_paste_agree_on_the_support():
    g = torch.Generator().manual_seed(1)
    corner = torch.rand(20, 2, generator=g) * 30 - 3  # some boxes stick out of the canvas
    boxes = torch.cat([corner, corner + torch.rand(20, 2, generator=g) * 12 + 0.1], dim=1)
    pasted = paste_mask_logits(torch.ones(20, 28, 28), boxes, 25, 31)
    cropped = crop_to_boxes(torch.ones(20, 25, 31), boxes)
    assert torch.equal(pasted != 0, cropped != 0)  # no seam between the two terms of an instance
    logits = torch.randn(20, 25, 31, generator=g)
    inside = crop_to_boxes(logits, boxes)
    assert torch.equal(inside[cropped != 0], logits[cropped != 0])
    assert torch.all(inside[cropped == 0] == 0)


# ---------------------------------------------------------------------------------------
# Logits and the unknown class
# ---------------------------------------------------------------------------------------


def test_panoptic_logits_training_and_x2mask_forms():
    stuff = torch.tensor([[[0.5, -1.0]]])  # S = 1, on a 1 x 2 canvas
    semantic = torch.tensor([[[2.0, 0.0]], [[1.0, 3.0]]])  # Y, N = 2
    masks = torch.tensor([[[1.0, 4.0]], [[0.0, -2.0]]])  # X~
    train = panoptic_logits(stuff, semantic, masks)
    torch.testing.assert_close(train, torch.tensor([[[0.5, -1.0]], [[3.0, 4.0]], [[1.0, 1.0]]]))
    test = panoptic_logits(stuff, semantic, masks, x2mask=True)
    expected = [[0.5, -1.0], [1 + 4 * sig(1), 4.0], [0 + 2 * sig(0), -2 + 6 * sig(-2)]]
    torch.testing.assert_close(test, torch.tensor(expected).unsqueeze(1))
    with_unknown = panoptic_logits(stuff, semantic, masks, unknown_logits=torch.tensor([[7.0, 8.0]]))
    assert with_unknown.shape == (4, 1, 2)
    torch.testing.assert_close(with_unknown[3], torch.tensor([[7.0, 8.0]]))
    assert panoptic_logits(stuff, semantic[:0], masks[:0]).shape == (1, 1, 2)


def test_unknown_logits_by_hand():
    things = torch.tensor([[[1.0, 5.0, -1.0]], [[2.0, 0.0, -3.0]]])  # T = 2 thing classes, 1 x 3 canvas
    cropped = torch.tensor([[[0.5, 0.0, 0.0]], [[1.5, 4.0, 0.0]]])  # Y, 0 outside each box
    # max over things: (2, 5, -1); max over instances: (1.5, 4, 0)
    torch.testing.assert_close(unknown_logits(things, cropped), torch.tensor([[0.5, 1.0, -1.0]]))
    torch.testing.assert_close(unknown_logits(things, cropped[:0]), torch.tensor([[2.0, 5.0, -1.0]]))


# ---------------------------------------------------------------------------------------
# Target and loss
# ---------------------------------------------------------------------------------------


def occlusion_scene() -> tuple[torch.Tensor, dict[int, int], dict[int, int]]:
    """A 6 x 8 canvas: sky (id 1) above grass (id 2); car A (id 10) in front of car B (id 11),
    a crowd of cars (id 12), a thing segment no instance is matched to (id 13), a person left
    out of training (id 14, UPSNet's unknown) and VOID (0).

    Contiguous categories: 0 sky, 1 grass (stuff); 2 car, 3 person (things).
    """
    id_map = torch.tensor(
        [
            [1, 1, 1, 1, 1, 1, 1, 1],
            [1, 11, 11, 11, 1, 1, 14, 1],
            [2, 11, 10, 10, 10, 2, 14, 2],
            [2, 11, 10, 10, 10, 2, 2, 2],
            [12, 12, 2, 2, 2, 0, 13, 13],
            [12, 12, 2, 2, 2, 0, 13, 13],
        ],
        dtype=torch.int32,
    )
    segment_labels = {1: 0, 2: 1, 10: 2, 11: 2, 12: 2, 13: 2, 14: 3}
    stuff_channel = {0: 0, 1: 1}
    return id_map, segment_labels, stuff_channel


def test_panoptic_target_on_an_occlusion_scene():
    id_map, segment_labels, stuff_channel = occlusion_scene()
    # Instance channels: 0 = car B (behind), 1 = car A (front), 2 = a fully hidden car (no segment).
    target = panoptic_target(id_map, segment_labels, stuff_channel, torch.tensor([11, 10, 0]),
                             unknown_segment_ids=[14])
    x = IGNORE
    expected = torch.tensor(
        [
            [0, 0, 0, 0, 0, 0, 0, 0],
            [0, 2, 2, 2, 0, 0, 5, 0],
            [1, 2, 3, 3, 3, 1, 5, 1],
            [1, 2, 3, 3, 3, 1, 1, 1],
            [x, x, 1, 1, 1, x, x, x],
            [x, x, 1, 1, 1, x, x, x],
        ]
    )
    assert target.dtype == torch.int64
    assert torch.equal(target, expected)
    # B's target is only its visible pixels, though its amodal box covers A's.
    assert int((target == 2).sum()) == 5
    assert not torch.any(target == 4)  # the hidden car owns nothing

    # Without the unknown channel the left-out person is ignored like any unmatched thing.
    plain = panoptic_target(id_map, segment_labels, stuff_channel, torch.tensor([11, 10, 0]))
    assert torch.all(plain[id_map == 14] == IGNORE)


def test_panoptic_target_rejects_inconsistent_matches():
    id_map, segment_labels, stuff_channel = occlusion_scene()
    with pytest.raises(ValueError, match="stuff"):
        panoptic_target(id_map, segment_labels, stuff_channel, torch.tensor([2]))
    with pytest.raises(ValueError, match="more than one"):
        panoptic_target(id_map, segment_labels, stuff_channel, torch.tensor([10, 10]))
    with pytest.raises(ValueError, match="ignore_index"):
        panoptic_target(id_map, segment_labels, stuff_channel, torch.tensor([10, 11]), ignore_index=3)


def test_panoptic_loss_by_hand():
    logits = torch.zeros(3, 2, 2, requires_grad=True)
    target = torch.tensor([[0, 2], [IGNORE, 1]])
    loss = panoptic_loss(logits, target)
    assert loss.item() == pytest.approx(math.log(3))  # uniform over 3 channels, mean over 3 pixels
    logits2 = torch.tensor([[[2.0]], [[0.0]]])
    assert panoptic_loss(logits2, torch.tensor([[1]])).item() == pytest.approx(math.log(1 + math.e**2))
    nothing = panoptic_loss(logits, torch.full((2, 2), IGNORE))
    assert nothing.item() == 0
    nothing.backward()
    assert logits.grad is not None and torch.all(logits.grad == 0)


def test_head_end_to_end_learns_the_direction_from_the_panoptic_loss():
    """Paste -> relation -> removal -> logits -> CE: the visible target alone turns O towards the
    front instance, from a start where O points the wrong way."""
    torch.manual_seed(0)
    id_map, segment_labels, stuff_channel = occlusion_scene()
    target = panoptic_target(id_map, segment_labels, stuff_channel, torch.tensor([11, 10]))
    boxes = torch.tensor([[1.0, 1.0, 4.0, 4.0], [2.0, 2.0, 5.0, 4.0]])  # car B's box overlaps car A's
    labels = torch.tensor([0, 0])
    module = RelationModule(2, category_channels=8, geometry_channels=8)
    assert module(labels, boxes)[1, 0] > 0  # this seed starts with "B in front of A"
    optimizer = torch.optim.SGD(module.parameters(), lr=2.0)
    mask_logits = torch.full((2, 28, 28), 4.0, requires_grad=True)  # both confident over their box
    stuff = torch.zeros(2, 6, 8)
    semantic = crop_to_boxes(torch.zeros(2, 6, 8), boxes)
    for _ in range(40):
        relation = module(labels, boxes)
        resolved = remove_overlaps(paste_mask_logits(mask_logits, boxes, 6, 8), relation)
        loss = panoptic_loss(panoptic_logits(stuff, semantic, resolved), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert mask_logits.grad is not None and torch.count_nonzero(mask_logits.grad) > 0
    relation = module(labels, boxes).detach()
    assert relation[0, 1] > 0.2 and relation[1, 0] == 0  # instance 1 (car A) is now in front of 0
    # The symmetric relation loss on its own has no say in the direction: it only fits O + O^T to G.
    gt = overlap_graph(box_support(boxes, 6, 8))
    assert gt[0, 1] == 1
    assert relation_loss(relation, gt).item() == pytest.approx(relation_loss(relation.T, gt).item())
