"""The relation's direction target (which instance of an overlapping pair is in front, read from the
visible segments) and its loss: hand-worked cases, agreement with the shapes data's exact depth
order, and a relation module that learns a size rule from it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from panopticlab.data.synthetic import ShapesConfig, generate_sample
from panopticlab.evaluation.overlap import front_from_depth
from panopticlab.masks import overlap_graph
from panopticlab.models.sognet import RelationModule
from panopticlab.models.sognet.relation import direction_loss, direction_target, mask_geometry_encoding
from test_sognet_relation import strips

pytestmark = pytest.mark.usefixtures("one_thread")


def target_of(amodal: list[tuple[int, int]], visible: list[tuple[int, int]]) -> torch.Tensor:
    masks = strips(amodal)
    return direction_target(masks, strips(visible), overlap_graph(masks, 0.1))


def test_the_front_instance_is_the_one_whose_segment_covers_the_overlap():
    # 0 on columns 0-59, 1 on 40-99: they share 40-59, which 0 shows: 0 is in front of 1
    target = target_of([(0, 60), (40, 100)], [(0, 60), (60, 100)])
    assert target.tolist() == [[0, -1], [1, 0]]
    assert target.dtype == torch.int8
    # the same scene the other way round
    assert target_of([(0, 60), (40, 100)], [(0, 40), (40, 100)]).tolist() == [[0, 1], [-1, 0]]


def test_a_split_overlap_or_one_nobody_shows_gives_no_target():
    # split: 0 shows 40-49, 1 shows 50-59
    assert not target_of([(0, 60), (40, 100)], [(0, 50), (50, 100)]).any()
    # the back one shows 1 of the 20 shown pixels (under a tenth): a target...
    assert target_of([(0, 60), (40, 100)], [(0, 40), (41, 100)]).tolist() == [[0, 1], [-1, 0]]
    # ...but 2 of 20 (a tenth, not less) is too many
    assert not target_of([(0, 60), (40, 100)], [(0, 42), (42, 100)]).any()
    # VOID over the overlap (no visible segment shows it)
    assert not target_of([(0, 60), (40, 100)], [(0, 40), (60, 100)]).any()


def test_a_third_instance_in_front_leaves_the_pair_what_it_does_not_hide():
    # 2 (on 35-64) in front of 0 and 1 hides all of their overlap (40-59): no target for that pair,
    # 2 in front of each
    target = target_of([(0, 60), (40, 100), (35, 65)], [(0, 35), (65, 100), (35, 65)])
    assert target[0, 1] == target[1, 0] == 0
    assert target[0, 2] == target[1, 2] == 1 and target[2, 0] == target[2, 1] == -1
    # 2 (on 44-59) hides 16 of the 20: 1 shows the other 4 (a fifth, >= a tenth): 1 is in front of 0
    target = target_of([(0, 60), (40, 100), (44, 60)], [(0, 40), (40, 44), (44, 60)])
    assert target[0, 1] == 1 and target[1, 0] == -1
    # 2 (on 42-59) hides 18 of the 20: the 2 shown (a tenth) are enough; on 41-59, 1 of 20 is not
    assert target_of([(0, 60), (40, 100), (42, 60)], [(0, 40), (40, 42), (42, 60)])[0, 1] == 1
    assert target_of([(0, 60), (40, 100), (41, 60)], [(0, 40), (40, 41), (41, 60)])[0, 1] == 0


def test_pairs_that_do_not_overlap_get_no_target():
    # they share 3 columns, under a tenth of the smaller (50): not in G
    target = target_of([(0, 50), (47, 100)], [(0, 50), (50, 100)])
    assert not target.any()
    # no instance at all (an image of stuff only)
    empty = torch.zeros(0, 4, 5, dtype=torch.bool)
    assert direction_target(empty, empty, torch.zeros(0, 0)).shape == (0, 0)


def test_on_the_shapes_data_the_target_is_the_exact_depth_order():
    """Every pair that gets a target is ordered as the scene's depth says, and most overlapping
    pairs get one (the others: a third instance in front of both, or hidden entirely)."""
    agreed = targeted = overlapping = 0
    for k in range(40):
        sample = generate_sample(ShapesConfig(height=96, width=96, crowd=0, void=0, overlap=0.8), 3, k)
        masks = torch.from_numpy(np.stack([i.mask for i in sample.instances]))
        segment_ids = torch.tensor([i.panoptic_segment_id or 0 for i in sample.instances])
        id_map = torch.from_numpy(sample.panoptic.id_map.astype(np.int64))
        visible = (id_map[None] == segment_ids[:, None, None]) & (segment_ids[:, None, None] != 0)
        overlap = overlap_graph(masks, 0.1)
        target = direction_target(masks, visible, overlap)
        assert torch.equal(target, -target.T)
        front = front_from_depth(torch.tensor([i.depth for i in sample.instances]))
        has = target != 0
        agreed += int(((target == 1) == front)[has].sum())
        targeted += int(has.sum())
        overlapping += int((overlap > 0).sum())
    assert overlapping > 100
    assert agreed == targeted
    assert targeted >= 0.9 * overlapping


def test_the_loss_is_the_cross_entropy_of_the_front_probability():
    # O_01 = 0.6, O_10 = 0: P(1 in front of 0) = (1 + 0.6) / 2 = 0.8
    relation = torch.tensor([[0.0, 0.6], [0.0, 0.0]])
    one_in_front = torch.tensor([[0, 1], [-1, 0]], dtype=torch.int8)
    assert math.isclose(float(direction_loss(relation, one_in_front)), -math.log(0.8), rel_tol=1e-6)
    assert math.isclose(float(direction_loss(relation, -one_in_front)), -math.log(0.2), rel_tol=1e-6)
    # the transposed scene is the same loss
    assert math.isclose(float(direction_loss(relation.T, -one_in_front)), -math.log(0.8), rel_tol=1e-6)
    # two pairs, one of them without a target: the mean over the targeted one only
    relation3 = torch.tensor([[0.0, 0.6, 0.0], [0.0, 0.0, 0.0], [0.3, 0.0, 0.0]])
    target3 = torch.zeros(3, 3, dtype=torch.int8)
    target3[0, 1], target3[1, 0] = 1, -1
    assert math.isclose(float(direction_loss(relation3, target3)), -math.log(0.8), rel_tol=1e-6)
    # no target: a zero that still backpropagates
    relation.requires_grad_(True)
    none = direction_loss(relation, torch.zeros(2, 2, dtype=torch.int8))
    none.backward()
    assert float(none.detach()) == 0.0 and relation.grad is not None


def test_a_relation_module_learns_the_size_rule_from_the_direction_loss_alone():
    """Random pairs of overlapping boxes of one class, the smaller in front: 200 Adam steps of the
    direction loss give the right sign on >= 95 % of fresh pairs."""
    generator = torch.Generator().manual_seed(0)

    def scene(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
        centre = torch.rand(n, 2, generator=generator) * 20 + 40
        size = torch.rand(n, 1, generator=generator) * 40 + 10
        boxes = torch.cat([centre - size / 2, centre + size / 2], dim=1)
        area = size[:, 0]
        target = torch.where(area[None, :] < area[:, None], 1, -1).to(torch.int8)  # the smaller in front
        target.fill_diagonal_(0)
        return boxes, target

    def accuracy(module: RelationModule) -> float:
        right = total = 0
        with torch.no_grad():
            for _ in range(50):
                boxes, target = scene()
                relation = module(torch.zeros(6, dtype=torch.int64), boxes)
                sign = torch.sign(relation - relation.T)
                pairs = target != 0
                right += int((sign[pairs] == target[pairs].float()).sum())
                total += int(pairs.sum())
        return right / total

    torch.manual_seed(0)
    module = RelationModule(1, category_channels=8, geometry_channels=16)
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)
    for _ in range(200):
        boxes, target = scene()
        loss = direction_loss(module(torch.zeros(6, dtype=torch.int64), boxes), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert accuracy(module) >= 0.95


def test_the_mask_geometry_encoding_by_hand():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 25.0, 15.0]])  # 100 and 200 px
    fill = torch.tensor([1.0, 0.25])  # areas 100 and 50
    encoding = mask_geometry_encoding(boxes, fill)
    assert encoding.shape == (2, 2, 3)
    assert torch.allclose(encoding[0, 1], torch.tensor([math.log(0.5), 1.0, 0.25]))
    assert torch.allclose(encoding[1, 0], torch.tensor([math.log(2.0), 0.25, 1.0]))
    assert torch.allclose(encoding[0, 0], torch.tensor([0.0, 1.0, 1.0]))


def test_the_mask_geometry_term_orders_what_the_boxes_cannot():
    """Pairs of equal boxes whose masks differ (a triangle fills half its box, a square all of it),
    the smaller mask in front: the released features see two identical boxes of one class, the
    mask geometry term the areas."""
    generator = torch.Generator().manual_seed(0)

    def scene(n: int = 6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        centre = torch.rand(n, 2, generator=generator) * 20 + 40
        boxes = torch.cat([centre - 15, centre + 15], dim=1)  # all 30 x 30
        fill = torch.rand(n, generator=generator) * 0.6 + 0.3
        target = torch.where(fill[None, :] < fill[:, None], 1, -1).to(torch.int8)
        target.fill_diagonal_(0)
        return boxes, fill, target

    def trained(channels: int) -> float:
        torch.manual_seed(0)
        module = RelationModule(1, category_channels=8, geometry_channels=16, mask_geometry_channels=channels)
        optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)
        for _ in range(200):
            boxes, fill, target = scene()
            loss = direction_loss(module(torch.zeros(6, dtype=torch.int64), boxes, mask_fill=fill), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        right = total = 0
        with torch.no_grad():
            for _ in range(50):
                boxes, fill, target = scene()
                relation = module(torch.zeros(6, dtype=torch.int64), boxes, mask_fill=fill)
                pairs = target != 0
                right += int((torch.sign(relation - relation.T)[pairs] == target[pairs].float()).sum())
                total += int(pairs.sum())
        return right / total

    assert trained(8) >= 0.95
    assert trained(0) <= 0.65  # the boxes alone: near chance
