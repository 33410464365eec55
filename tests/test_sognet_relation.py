"""SOGNet's relation module, relation ground truth and loss, and overlap removal, on hand-worked cases."""

from __future__ import annotations

import math

import pytest
import torch

from oracles.overlap_removal_naive import remove_overlaps_naive
from panopticlab.masks import overlap_graph
from panopticlab.models.sognet import (
    RelationModule,
    overlapping_order,
    panoptic_logits,
    relation_loss,
    relative_box_encoding,
    remove_overlaps,
    remove_overlaps_pairwise,
)
from panopticlab.models.sognet.relation import intersection_boxes

pytestmark = pytest.mark.usefixtures("one_thread")


def sig(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def random_boxes(n: int, generator: torch.Generator) -> torch.Tensor:
    corner = torch.rand(n, 2, generator=generator) * 200
    size = torch.rand(n, 2, generator=generator) * 80 + 0.5
    return torch.cat([corner, corner + size], dim=1)


def strips(ranges: list[tuple[int, int]], length: int = 100) -> torch.Tensor:
    """Masks [N, 1, length], mask k set on columns ranges[k][0] .. ranges[k][1] - 1."""
    masks = torch.zeros(len(ranges), 1, length, dtype=torch.bool)
    for k, (a, b) in enumerate(ranges):
        masks[k, 0, a:b] = True
    return masks


# ---------------------------------------------------------------------------------------
# Relation module
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("appearance_channels", [0, 16])
def test_relation_is_antisymmetric_by_construction(appearance_channels):
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    module = RelationModule(7, category_channels=32, geometry_channels=16, appearance_channels=appearance_channels,
                            appearance_in_channels=8)
    for n in (2, 5, 30):
        labels = torch.randint(0, 7, (n,), generator=g)
        features = torch.randn(n, 8, generator=g) if appearance_channels else None
        relation = module(labels, random_boxes(n, g), features)
        assert relation.shape == (n, n)
        assert torch.all(relation.diagonal() == 0)
        assert torch.all((relation >= 0) & (relation < 1))
        assert not torch.any((relation > 0) & (relation.T > 0))  # O_ij > 0 => O_ji = 0
        assert torch.count_nonzero(relation) > 0  # not trivially all zero


def test_relation_of_a_subset_is_the_sub_matrix():
    """No message passing: each pair's score depends on that pair alone."""
    g = torch.Generator().manual_seed(2)
    torch.manual_seed(2)
    module = RelationModule(4, category_channels=8, geometry_channels=8)
    labels, boxes = torch.randint(0, 4, (6,), generator=g), random_boxes(6, g)
    full = module(labels, boxes)
    subset = torch.tensor([4, 1, 3])
    torch.testing.assert_close(module(labels[subset], boxes[subset]), full[subset][:, subset])


def test_relative_box_encoding_by_hand():
    # centres (5, 10) and (15, 20); widths 10 and 20; heights 20 and 20.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 20.0], [5.0, 10.0, 25.0, 30.0]])
    g = relative_box_encoding(boxes)
    torch.testing.assert_close(g[0, 1], torch.tensor([1.0, 0.5, math.log(2), 0.0]))
    torch.testing.assert_close(g[1, 0], torch.tensor([-0.5, -0.5, -math.log(2), 0.0]))
    torch.testing.assert_close(g[0, 0], torch.zeros(4))
    # A degenerate (zero-width) box counts as 1 pixel wide: finite.
    flat = relative_box_encoding(torch.tensor([[3.0, 3.0, 3.0, 8.0], [0.0, 0.0, 4.0, 4.0]]))
    assert torch.isfinite(flat).all()
    assert flat[0, 1, 2] == pytest.approx(math.log(4))


def test_relation_by_hand_with_category_weights_only():
    module = RelationModule(2, category_channels=1, geometry_channels=1)
    with torch.no_grad():
        module.category_first.weight.copy_(torch.tensor([[1.0, 2.0]]))  # U o = 1 (class 0), 2 (class 1)
        module.category_second.weight.copy_(torch.tensor([[3.0, 0.5]]))  # V o = 3, 0.5
        module.geometry.weight.zero_()
        module.score.weight.fill_(1.0)
    relation = module(torch.tensor([0, 1]), torch.tensor([[0.0, 0, 4, 4], [2.0, 2, 9, 9]]))
    # R_01 = sigmoid(1 * 0.5), R_10 = sigmoid(2 * 3): instance 1 scores higher, so O_10 > 0.
    expected = torch.tensor([[0.0, 0.0], [sig(6.0) - sig(0.5), 0.0]])
    torch.testing.assert_close(relation, expected)


def test_relation_geometry_term_breaks_same_class_ties():
    """Two instances of one class: only geometry distinguishes (i, j) from (j, i)."""
    torch.manual_seed(3)
    module = RelationModule(3, category_channels=4, geometry_channels=4)
    boxes = torch.tensor([[0.0, 0, 10, 10], [5.0, 5, 40, 40]])
    relation = module(torch.tensor([1, 1]), boxes)
    assert relation[0, 1] + relation[1, 0] > 0
    # Swapping the instances transposes O.
    torch.testing.assert_close(module(torch.tensor([1, 1]), boxes.flip(0)), relation.flip(0).flip(1))


def test_relation_appearance_term():
    torch.manual_seed(4)
    module = RelationModule(3, category_channels=4, geometry_channels=4, appearance_channels=4, appearance_in_channels=5)
    labels, boxes = torch.tensor([0, 0]), torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 10]])
    with pytest.raises(ValueError, match="appearance"):
        module(labels, boxes)
    # Identical class and box: only appearance can tell the two apart.
    features = torch.randn(2, 5)
    assert module(labels, boxes, features).sum() > 0
    assert module(labels, boxes, features[[0, 0]]).sum() == 0


def test_relation_rejects_bad_labels():
    module = RelationModule(3)
    with pytest.raises(ValueError, match="labels"):
        module(torch.tensor([0, 3]), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="boxes"):
        module(torch.tensor([0, 1]), torch.zeros(3, 4))


@pytest.mark.parametrize("n", [0, 1])
def test_relation_and_loss_with_fewer_than_two_instances(n):
    module = RelationModule(3, category_channels=4, geometry_channels=4)
    relation = module(torch.zeros(n, dtype=torch.long), torch.tensor([[0.0, 0, 5, 5]])[:n])
    assert relation.shape == (n, n) and torch.all(relation == 0)
    loss = relation_loss(relation, torch.zeros(n, n))
    assert loss.item() == 0
    loss.backward()  # still connected to the parameters (DDP needs every parameter in the graph)
    assert module.score.weight.grad is not None and torch.all(module.score.weight.grad == 0)


# ---------------------------------------------------------------------------------------
# Relation ground truth, loss, order
# ---------------------------------------------------------------------------------------


def test_overlap_graph_threshold_edges():
    masks = strips([(0, 10), (9, 59), (60, 71), (70, 100), (0, 0)])
    # 0 & 1: 1 pixel of a 10-pixel mask = 0.1 >= 0.1: overlap.
    # 2 & 3: 1 pixel of an 11-pixel mask < 0.1: no overlap. 4 is empty: overlaps nothing.
    expected = torch.zeros(5, 5)
    expected[0, 1] = expected[1, 0] = 1
    gt = overlap_graph(masks)
    assert gt.dtype == torch.float32
    torch.testing.assert_close(gt, expected)
    looser = overlap_graph(masks, threshold=0.09)
    assert looser[2, 3] == 1 and looser[3, 2] == 1 and looser[4].sum() == 0


def test_overlap_graph_uses_the_smaller_mask_and_is_symmetric():
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[0] = True  # the whole image: contains the other two
    masks[1, 0:2, 0:2] = True  # 4 pixels
    masks[2, 6:8, 6:8] = True  # 4 pixels, far from 1
    gt = overlap_graph(masks)
    # 4 / min(64, 4) = 1 for (0, 1) and (0, 2), though 4 / 64 < 0.1 of the big one.
    torch.testing.assert_close(gt, torch.tensor([[0.0, 1, 1], [1, 0, 0], [1, 0, 0]]))
    assert overlap_graph(torch.zeros(0, 4, 4, dtype=torch.bool)).shape == (0, 0)


def test_relation_loss_by_hand():
    relation = torch.tensor([[0.0, 0.3], [0.0, 0.0]], requires_grad=True)
    gt = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    loss = relation_loss(relation, gt)
    # O + O^T = [[0, .3], [.3, 0]]: two entries off by 0.7, mean over 4 entries.
    assert loss.item() == pytest.approx(2 * 0.49 / 4)
    loss.backward()
    # d/dO_01 of mean((O_01 + O_10 - 1)^2 over [0,1] and [1,0]) = 2 * 2 * (-0.7) / 4
    assert relation.grad[0, 1].item() == pytest.approx(-0.7)


def test_overlapping_order():
    gt = torch.zeros(6, 6)
    for i, j in [(0, 2), (2, 3), (2, 4), (3, 4)]:
        gt[i, j] = gt[j, i] = 1
    # partners: 0 -> 1, 1 -> 0, 2 -> 3, 3 -> 2, 4 -> 2, 5 -> 0; ties keep index order.
    assert overlapping_order(gt).tolist() == [2, 3, 4, 0]
    assert overlapping_order(torch.zeros(3, 3)).tolist() == []
    assert overlapping_order(torch.zeros(0, 0)).dtype == torch.int64


# ---------------------------------------------------------------------------------------
# Overlap removal
# ---------------------------------------------------------------------------------------


def random_relation(n: int, generator: torch.Generator, batch: tuple[int, ...] = ()) -> torch.Tensor:
    r = torch.rand(*batch, n, n, generator=generator, dtype=torch.float64)
    return torch.relu(r - r.transpose(-1, -2))


def test_factorised_removal_equals_naive():
    g = torch.Generator().manual_seed(5)
    for n in (1, 2, 7):
        x = torch.randn(n, 5, 6, generator=g, dtype=torch.float64) * 4
        o = random_relation(n, g)
        torch.testing.assert_close(remove_overlaps(x, o), remove_overlaps_naive(x, o))
    # Batched, with one O per image and with an O shared by the batch.
    x = torch.randn(3, 4, 5, 6, generator=g, dtype=torch.float64) * 4
    o = random_relation(4, g, (3,))
    torch.testing.assert_close(remove_overlaps(x, o), remove_overlaps_naive(x, o))
    torch.testing.assert_close(remove_overlaps(x, o[1]), remove_overlaps_naive(x, o[1]))
    torch.testing.assert_close(remove_overlaps(x, o)[2], remove_overlaps(x[2], o[2]))


def test_removal_by_hand_on_one_pixel():
    a, b = 3.0, 2.0
    x = torch.tensor([a, b], dtype=torch.float64).view(2, 1, 1)
    o = torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)  # 1 is in front of 0
    out = remove_overlaps(x, o).flatten().tolist()
    assert out[0] == pytest.approx(a - a * sig(a) * sig(b))
    assert out[1] == b  # the front instance is untouched
    # A confident occluded logit falls to about X (1 - sigmoid(X)): near 0, not negative.
    big = remove_overlaps(torch.tensor([8.0, 8.0]).view(2, 1, 1), o.float())
    assert 0 < big[0].item() < 0.01


def test_removal_gradients():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(3, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    o = random_relation(3, g).requires_grad_(True)
    assert torch.autograd.gradcheck(remove_overlaps, (x, o))


def test_removal_rejects_bad_shapes():
    with pytest.raises(ValueError):
        remove_overlaps(torch.zeros(3, 4, 4), torch.zeros(2, 2))
    with pytest.raises(ValueError):
        remove_overlaps(torch.zeros(3, 4, 4), torch.zeros(2, 3, 3))  # batched O, unbatched X
    with pytest.raises(ValueError):
        remove_overlaps(torch.zeros(4, 4), torch.zeros(4, 4))


def test_pairwise_equals_joint_on_two_instances():
    g = torch.Generator().manual_seed(7)
    torch.manual_seed(7)
    module = RelationModule(3, category_channels=8, geometry_channels=8)
    labels, boxes = torch.tensor([2, 0]), random_boxes(2, g)
    x = torch.randn(2, 6, 7, generator=g) * 3
    relation = module(labels, boxes).detach()
    assert relation.sum() > 0

    def pair(i: int, j: int) -> torch.Tensor:  # the module on the pair alone, as the released code does
        return module(labels[[i, j]], boxes[[i, j]]).detach()

    torch.testing.assert_close(remove_overlaps_pairwise(x, pair), remove_overlaps(x, relation))


def test_pairwise_differs_from_joint_on_three_instances():
    a, b, c = 3.0, 2.0, 1.0
    x = torch.tensor([a, b, c], dtype=torch.float64).view(3, 1, 1)

    def run(o: torch.Tensor) -> tuple[list[float], list[float]]:
        sub = lambda i, j: o[[i, j]][:, [i, j]]
        return remove_overlaps(x, o).flatten().tolist(), remove_overlaps_pairwise(x, sub).flatten().tolist()

    # 1 and 2 both in front of 0. Joint: both occluders act on the original X_0. Pairwise:
    # pair (0, 1) updates X_0 to t, then pair (0, 2) acts on t.
    o = torch.zeros(3, 3, dtype=torch.float64)
    o[0, 1] = o[0, 2] = 1
    joint, pairwise = run(o)
    t = a - a * sig(a) * sig(b)
    assert joint == pytest.approx([a - a * sig(a) * (sig(b) + sig(c)), b, c])
    assert pairwise == pytest.approx([t - t * sig(t) * sig(c), b, c])
    assert abs(joint[0] - pairwise[0]) > 0.1

    # 0 in front of 2, 2 in front of 1. Pair (0, 2) comes before (1, 2), so 1 is resolved
    # against the already reduced X_2, where the joint form uses the original one.
    o = torch.zeros(3, 3, dtype=torch.float64)
    o[2, 0] = o[1, 2] = 1
    joint, pairwise = run(o)
    c_after = c - c * sig(c) * sig(a)
    assert joint == pytest.approx([a, b - b * sig(b) * sig(c), c_after])
    assert pairwise == pytest.approx([a, b - b * sig(b) * sig(c_after), c_after])
    assert joint[1] != pytest.approx(pairwise[1])


def test_pairwise_keeps_autograd_and_handles_empty():
    x = torch.randn(3, 2, 2, requires_grad=True)
    o = torch.zeros(3, 3)
    o[0, 1] = 0.5
    remove_overlaps_pairwise(x, lambda i, j: o[[i, j]][:, [i, j]]).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert remove_overlaps_pairwise(torch.zeros(0, 2, 2), lambda i, j: o).shape == (0, 2, 2)


# -- the removal confined to the boxes, and instances excluded outside their box -------------


def test_removal_within_box_by_hand_on_a_row_of_three_pixels():
    # instance 0 covers the row (logit 2); instance 1, in front of it (O_01 = 1), only pixel 2
    # (logit 3) and has the pasted logit 0 on pixels 0-1, outside its box
    masks = torch.tensor([[[2.0, 2.0, 2.0]], [[0.0, 0.0, 3.0]]])
    support = torch.tensor([[[True, True, True]], [[False, False, True]]])
    relation = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    s2, s3 = 1 / (1 + math.exp(-2)), 1 / (1 + math.exp(-3))
    released = remove_overlaps(masks, relation)
    # the released formula: sigmoid(0) = 0.5 of the occluder eats into pixels 0 and 1 too
    assert torch.allclose(released[0, 0], torch.tensor([2 - 2 * s2 * 0.5, 2 - 2 * s2 * 0.5, 2 - 2 * s2 * s3]))
    within = remove_overlaps(masks, relation, support)
    assert torch.allclose(within[0, 0], torch.tensor([2.0, 2.0, 2 - 2 * s2 * s3]))
    assert torch.equal(within[1], masks[1])  # nobody is in front of instance 1
    pairwise = remove_overlaps_pairwise(masks, lambda i, j: relation[[i, j]][:, [i, j]], support)
    assert torch.allclose(pairwise, within)


def test_excluded_instances_cannot_take_pixels_outside_their_box():
    stuff = torch.full((1, 1, 3), -1.0)  # one stuff class, unsure everywhere
    semantic = torch.tensor([[[0.0, 0.0, 2.0]]])  # Y, 0 outside the box (pixel 2)
    masks = torch.tensor([[[0.0, 0.0, 1.0]]])
    support = torch.tensor([[[False, False, True]]])
    zero = panoptic_logits(stuff, semantic, masks)
    assert zero.argmax(dim=0).tolist() == [[1, 1, 1]]  # the released head: logit 0 beats -1
    excluded = panoptic_logits(stuff, semantic, masks, exclude_outside=support)
    assert excluded.argmax(dim=0).tolist() == [[0, 0, 1]]
    assert torch.equal(excluded[:, :, 2], zero[:, :, 2])


def test_intersection_boxes_by_hand():
    boxes = torch.tensor([[0.0, 0, 10, 10], [5.0, 2, 20, 8], [30.0, 30, 40, 40]])
    shared, meets = intersection_boxes(boxes)
    shared = shared.view(3, 3, 4)
    assert shared[0, 1].tolist() == [5.0, 2, 10, 8] == shared[1, 0].tolist()
    assert shared[0, 0].tolist() == boxes[0].tolist()
    # no overlap: a zero-size box at the larger corner, and meets is False
    assert shared[0, 2].tolist() == [30.0, 30, 30, 30]
    assert meets.tolist() == [[True, True, False], [True, True, False], [False, False, True]]


def test_pair_appearance_term_orders_a_pair_that_class_and_box_cannot():
    torch.manual_seed(5)
    module = RelationModule(3, category_channels=4, geometry_channels=4, pair_appearance_channels=6, region_in_channels=5)
    labels, boxes = torch.tensor([1, 1]), torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 10]])
    with pytest.raises(ValueError, match="pair appearance"):
        module(labels, boxes)
    own, shared = torch.randn(2, 5), torch.randn(5)
    shared = shared.expand(2, 2, 5)  # the intersection is the same region for (i, j) and (j, i)
    relation = module(labels, boxes, regions=(own, shared))
    assert relation.sum() > 0 and bool((relation * relation.T == 0).all())
    # swapping the instances' own features swaps who is in front
    swapped = module(labels, boxes, regions=(own[[1, 0]], shared))
    torch.testing.assert_close(swapped, relation.T)
    # nothing tells them apart: no order
    assert module(labels, boxes, regions=(own[[0, 0]], shared)).sum() == 0


def test_pair_appearance_relation_is_permutation_equivariant():
    generator = torch.Generator().manual_seed(6)
    module = RelationModule(4, category_channels=4, geometry_channels=4, pair_appearance_channels=3, region_in_channels=2)
    labels, boxes = torch.tensor([0, 3, 1]), random_boxes(3, generator)
    own, raw = torch.randn(3, 2, generator=generator), torch.randn(3, 3, 2, generator=generator)
    shared = raw + raw.transpose(0, 1)
    order = torch.tensor([2, 0, 1])
    relation = module(labels, boxes, regions=(own, shared))
    permuted = module(labels[order], boxes[order], regions=(own[order], shared[order][:, order]))
    torch.testing.assert_close(permuted, relation[order][:, order])
