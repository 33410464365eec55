"""Panoptic-DeepLab post-processing: detectron2's rules on hand-built cases, parity with the
plain re-implementation of detectron2's algorithm on random inputs, and the batched API."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from panopticlab.errors import InputError
from panopticlab.models.panoptic_deeplab import postprocess
from panopticlab.models.panoptic_deeplab.postprocess import (
    find_instance_centers,
    get_panoptic_segmentation,
    nearest_centers,
    panoptic_deeplab_inference,
)
from oracles.postprocess_reference import (
    find_instance_center_reference,
    get_panoptic_segmentation_reference,
    group_pixels_reference,
    instance_scores_reference,
)
from panopticlab.structures import to_label_map

D2_ARGS = dict(label_divisor=1000, void_label=-1)


def both(sem, heat, offsets, **kwargs):
    """Run the fast and the reference version; assert they agree; return the fast result.

    ``top_k`` defaults to None: D2 (and the reference) fail when top_k > H * W.
    """
    kwargs = {**D2_ARGS, "top_k": None, **kwargs}
    expected = get_panoptic_segmentation_reference(sem, heat, offsets, **kwargs)
    got = get_panoptic_segmentation(sem, heat, offsets, **kwargs)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert got[0].dtype == torch.int64 and got[1].dtype == torch.int64
    return got


def heatmap_with_peaks(height, width, peaks):
    heat = torch.zeros(1, height, width)
    for (y, x), value in peaks.items():
        heat[0, y, x] = value
    return heat


# --- centre finding -------------------------------------------------------------------------


def test_centers_threshold_is_strict_and_nms_keeps_plateaus():
    heat = heatmap_with_peaks(
        5, 9,
        {(0, 0): 0.1,  # == threshold: dropped
         (2, 1): 0.5, (2, 2): 0.5,  # plateau: both kept
         (4, 4): 0.9, (3, 5): 0.7,  # 0.7 is inside 0.9's 3x3 window: suppressed
         (0, 8): 0.3, (0, 6): 0.4},  # two apart: both are maxima of their 3x3 window
    )
    expected = [[0, 6], [0, 8], [2, 1], [2, 2], [4, 4]]  # row-major order
    for fn in (lambda h: find_instance_centers(h[0], 0.1, 3, None), lambda h: find_instance_center_reference(h, 0.1, 3, None)):
        assert fn(heat).tolist() == expected


def test_top_k_is_strict_and_clamped_at_zero():
    heat = heatmap_with_peaks(1, 11, {(0, 0): 0.9, (0, 2): 0.5, (0, 4): 0.7, (0, 6): 0.5, (0, 8): 0.2})
    # top 2: the 2nd largest (0.7) is itself dropped.
    assert find_instance_centers(heat[0], 0.1, 1, top_k=2).tolist() == [[0, 0]]
    # top 3: the 3rd largest is 0.5, shared by two peaks: both dropped.
    assert find_instance_centers(heat[0], 0.1, 1, top_k=3).tolist() == [[0, 0], [0, 4]]
    # Fewer peaks than top_k: the k-th value is -1, clamped to 0: all positive peaks kept.
    assert find_instance_centers(heat[0], 0.1, 1, top_k=8).shape == (5, 2)
    for k in (2, 3, 8):
        assert torch.equal(find_instance_centers(heat[0], 0.1, 1, k), find_instance_center_reference(heat, 0.1, 1, k))


def test_top_k_above_the_pixel_count_keeps_all_centres():
    # D2's torch.topk raises here; we keep every centre, as top_k=None does.
    heat = heatmap_with_peaks(2, 3, {(0, 0): 0.9, (1, 2): 0.5})
    assert find_instance_centers(heat[0], 0.1, 1, top_k=200).tolist() == [[0, 0], [1, 2]]


def test_negative_threshold_still_needs_positive_centres():
    heat = heatmap_with_peaks(1, 7, {(0, 0): -0.2, (0, 3): 0.0, (0, 6): 0.05})
    assert find_instance_centers(heat[0], -0.5, 1, None).tolist() == [[0, 6]]


@pytest.mark.parametrize("size", [1, 3, 5, 7, 9, 41])
def test_window_max_equals_max_pool(size):
    x = torch.randn(13, 50)
    expected = F.max_pool2d(x[None], size, stride=1, padding=size // 2)[0]
    got = postprocess._window_max(postprocess._window_max(x, size, dim=1), size, dim=0)
    assert torch.equal(got, expected)


# --- grouping ---------------------------------------------------------------------------------


def test_grouping_ties_go_to_the_lowest_centre_index():
    centers = torch.tensor([[0, 0], [0, 4]])
    offsets = torch.zeros(2, 1, 5)
    pixels = torch.arange(5)
    # Pixel x=2 is at distance 2 from both centres.
    assert nearest_centers(centers, offsets, pixels).tolist() == [0, 0, 0, 1, 1]
    assert (group_pixels_reference(centers, offsets) - 1).flatten().tolist() == [0, 0, 0, 1, 1]


def test_grouping_ties_after_rounding_the_distance():
    # Pixel (1, 2) predicts (1.49999535, 2.0000036): squared distances 6.2500005 to centre 0
    # at (0, 0) and 6.25 to centre 1 at (3, 4). D2 compares float32 distances, which both
    # round to 2.5, so the tie goes to centre 0 although centre 1 is nearer.
    centers = torch.tensor([[0, 0], [3, 4]])
    offsets = torch.zeros(2, 4, 5)
    offsets[:, 1, 2] = torch.tensor([0.4999953508377075, 3.5762786865234375e-06])
    pixel = torch.tensor([1 * 5 + 2])
    assert group_pixels_reference(centers, offsets)[0, 1, 2].item() == 1
    assert nearest_centers(centers, offsets, pixel).tolist() == [0]


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_grouping_in_chunks_matches_the_reference(chunk):
    g = torch.Generator().manual_seed(chunk)
    centers = torch.stack((torch.randint(20, (7,), generator=g), torch.randint(30, (7,), generator=g)), 1)
    offsets = torch.randn(2, 20, 30, generator=g) * 8
    expected = group_pixels_reference(centers, offsets).flatten() - 1
    assert torch.equal(nearest_centers(centers, offsets, torch.arange(600), chunk_elements=chunk * 7), expected)


def test_non_finite_offsets_go_to_the_first_centre_like_d2():
    centers = torch.tensor([[0, 0], [0, 3]])
    offsets = torch.zeros(2, 1, 4)
    offsets[1, 0, 2] = float("nan")
    offsets[1, 0, 3] = float("inf")
    assert nearest_centers(centers, offsets, torch.arange(4)).tolist() == [0, 0, 0, 0]
    assert (group_pixels_reference(centers, offsets) - 1).flatten().tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("seed", range(8))
def test_grouping_with_candidate_tiles_equals_the_reference(seed):
    """Many centres take the pruned path (each tile of predicted positions against the centres that
    can be nearest): ids equal the oracle's, rounding ties, non-finite and far-off predictions included."""
    g = torch.Generator().manual_seed(100 + seed)
    height, width, k = 48, 80, int(torch.randint(postprocess.PRUNE_MIN_CENTERS, 120, (1,), generator=g))
    centers = torch.stack((torch.randint(height, (k,), generator=g), torch.randint(width, (k,), generator=g)), 1)
    offsets = torch.randn(2, height, width, generator=g) * (6, 40)[seed % 2]
    if seed % 4 < 2:
        offsets = (offsets * 2).round() / 2  # exact and rounding ties
    if seed % 4 == 3:
        flat = offsets.view(-1)
        flat[torch.randint(flat.numel(), (20,), generator=g)] = float("nan")
        flat[torch.randint(flat.numel(), (20,), generator=g)] = float("-inf")
        flat[torch.randint(flat.numel(), (20,), generator=g)] = 3e30
    expected = group_pixels_reference(centers, offsets).flatten() - 1
    assert torch.equal(nearest_centers(centers, offsets, torch.arange(height * width)), expected)
    # the dense path agrees on the same inputs
    dense = postprocess._first_nearest(
        centers[:, 0].float()[:, None], centers[:, 1].float()[:, None],
        (torch.arange(height * width) // width).float() + offsets[0].flatten().float(),
        (torch.arange(height * width) % width).float() + offsets[1].flatten().float(),
        postprocess.GROUPING_CHUNK_ELEMENTS,
    )  # fmt: skip
    assert torch.equal(dense, expected)


def test_candidate_tiles_keep_every_centre_that_can_be_nearest():
    """A hand-worked tile: positions in [0, 1] x [0, 1]; centres at distance 1, 5 and 100 from the box."""
    centers_y, centers_x = torch.tensor([2.0, 6.0, 101.0]), torch.tensor([0.5, 0.5, 0.5])
    predicted_y, predicted_x = torch.tensor([0.0, 1.0, 0.5]), torch.tensor([0.0, 1.0, 0.5])
    candidates, tile = postprocess._candidate_centers(centers_y, centers_x, predicted_y, predicted_x, 8, 8)
    # U**2 = farthest from centre 0: (2 - 0)**2 + 0.5**2 = 4.25; centre 1's gap 5**2 = 25 > 4.25
    assert len(set(tile.tolist())) == 1 and candidates[tile[0]].tolist() == [0]
    assert (candidates[[t for t in range(len(candidates)) if t != tile[0]]] == -1).all()  # empty tiles: none
    centers_y = torch.tensor([2.0, 3.0, 101.0])  # centre 1: gap 2**2 = 4 <= 4.25, kept
    candidates, tile = postprocess._candidate_centers(centers_y, centers_x, predicted_y, predicted_x, 8, 8)
    assert candidates[tile[0]].tolist() == [0, 1]


# --- merge ------------------------------------------------------------------------------------


def test_majority_vote_ties_go_to_the_smallest_class_and_numbers_follow_centre_order():
    # Three objects on a stuff background (class 0); thing classes 1 and 2.
    sem = torch.zeros(1, 3, 12, dtype=torch.long)
    sem[0, :, 0:3] = torch.tensor([[2, 2, 2], [2, 1, 1], [1, 1, 1]])  # 4 x class 2, 5 x class 1 -> 1
    sem[0, 0, 4:8] = torch.tensor([2, 1, 2, 1])  # 2 vs 2 -> tie -> class 1
    sem[0, 2, 9:12] = 2  # class 2
    heat = heatmap_with_peaks(3, 12, {(1, 1): 0.9, (0, 5): 0.8, (2, 10): 0.7})
    offsets = torch.zeros(2, 3, 12)
    panoptic, centers = both(sem, heat, offsets, thing_ids=[1, 2], stuff_area=1, nms_kernel=3)
    assert centers[0].tolist() == [[0, 5], [1, 1], [2, 10]]
    # Centre order: (0, 5) -> class 1 #1, (1, 1) -> class 1 #2, (2, 10) -> class 2 #1.
    assert panoptic[0, 0, 4].item() == 1001
    assert panoptic[0, 1, 1].item() == 1002 and panoptic[0, 0, 0].item() == 1002
    assert panoptic[0, 2, 11].item() == 2001
    assert panoptic[0, 1, 6].item() == 0  # stuff class 0


def test_stuff_area_threshold_is_inclusive():
    sem = torch.tensor([[[0, 0, 0, 1, 1, 2]]])
    heat = torch.zeros(1, 1, 6)
    kwargs = dict(thing_ids=[], nms_kernel=3)
    panoptic, _ = both(sem, heat, torch.zeros(2, 1, 6), stuff_area=2, **kwargs)
    assert panoptic[0, 0].tolist() == [0, 0, 0, 1000, 1000, -1]
    panoptic, _ = both(sem, heat, torch.zeros(2, 1, 6), stuff_area=3, **kwargs)
    assert panoptic[0, 0].tolist() == [0, 0, 0, -1, -1, -1]


def test_no_centre_leaves_thing_pixels_void():
    sem = torch.tensor([[[0, 0, 3, 3], [0, 0, 3, 3]]])
    heat = torch.full((1, 2, 4), 0.05)  # all below the threshold
    panoptic, centers = both(sem, heat, torch.zeros(2, 2, 4), thing_ids=[3], stuff_area=4, nms_kernel=3)
    assert centers.shape == (1, 0, 2)
    assert panoptic[0].tolist() == [[0, 0, -1, -1], [0, 0, -1, -1]]


def test_centre_without_pixels_uses_no_number():
    # Centre 0 sits on stuff and no thing pixel is nearest to it: class 1's first number goes
    # to the instance of centre 1.
    sem = torch.tensor([[[0, 0, 0, 0, 0, 1, 1]]])
    heat = heatmap_with_peaks(1, 7, {(0, 0): 0.9, (0, 6): 0.8})
    panoptic, _ = both(sem, heat, torch.zeros(2, 1, 7), thing_ids=[1], stuff_area=1, nms_kernel=3)
    assert panoptic[0, 0].tolist() == [0, 0, 0, 0, 0, 1001, 1001]


def test_foreground_mask_groups_stuff_pixels_and_leaves_unmasked_things_void():
    sem = torch.tensor([[[0, 0, 0, 2, 2, 2]]])
    foreground = torch.tensor([[[0, 1, 1, 1, 1, 0]]])
    heat = heatmap_with_peaks(1, 6, {(0, 3): 0.9})
    panoptic, _ = both(sem, heat, torch.zeros(2, 1, 6), thing_ids=[2], stuff_area=1, nms_kernel=3,
                       foreground_mask=foreground)
    # Instance = pixels 1..4: classes 0, 0, 2, 2 -> tie -> class 0 (a stuff class, as in D2).
    assert panoptic[0, 0].tolist() == [0, 1, 1, 1, 1, -1]


def test_centres_beyond_top_k_and_none_found_match_reference():
    g = torch.Generator().manual_seed(0)
    sem = torch.randint(4, (1, 16, 16), generator=g)
    heat = torch.rand(1, 16, 16, generator=g)
    offsets = torch.randn(2, 16, 16, generator=g) * 3
    _, centers = both(sem, heat, offsets, thing_ids=[2, 3], stuff_area=5, nms_kernel=1, top_k=10)
    assert centers.shape[1] == 9  # strictly above the 10th largest
    _, centers = both(sem, heat, offsets, thing_ids=[2, 3], stuff_area=5, nms_kernel=3, top_k=None)
    assert centers.shape[1] > 10


@pytest.mark.parametrize("seed", range(12))
def test_matches_reference_on_random_inputs(seed):
    g = torch.Generator().manual_seed(seed)
    height, width = (int(v) for v in torch.randint(2, 40, (2,), generator=g))
    num_classes = int(torch.randint(2, 8, (1,), generator=g))
    sem = torch.randint(num_classes, (1, height, width), generator=g)
    heat = torch.rand(1, height, width, generator=g) * 1.2 - 0.1
    if seed % 3 == 0:
        heat = (heat * 4).round() / 4  # plateaus and equal values at the top-k cut
    offsets = torch.randn(2, height, width, generator=g) * 6
    if seed % 2 == 0:
        offsets = offsets.round()  # integer predictions: exact distance ties
    if seed % 6 == 5:
        offsets = offsets.double()
    foreground = (torch.rand(1, height, width, generator=g) > 0.4).long() if seed % 4 == 1 else None
    both(
        sem, heat, offsets,
        thing_ids=[1, 3, 4],
        stuff_area=int(torch.randint(0, 30, (1,), generator=g)),
        nms_kernel=(1, 3, 5, 7)[seed % 4],
        top_k=(None, 1, 5, 200)[seed % 4] if seed % 4 == 0 or height * width >= 200 else None,
        foreground_mask=foreground,
    )


def test_input_errors():
    sem, heat, offsets = torch.zeros(1, 4, 5, dtype=torch.long), torch.zeros(1, 4, 5), torch.zeros(2, 4, 5)
    kwargs = dict(thing_ids=[1], stuff_area=1, **D2_ARGS)
    with pytest.raises(InputError, match="sem_seg"):
        get_panoptic_segmentation(sem[0], heat, offsets, **kwargs)  # D2's `and` check lets this through
    with pytest.raises(InputError, match="offsets"):
        get_panoptic_segmentation(sem, heat, offsets[:, :3], **kwargs)
    with pytest.raises(InputError, match="nms_kernel"):
        get_panoptic_segmentation(sem, heat, offsets, nms_kernel=4, **kwargs)
    with pytest.raises(InputError, match="non-negative"):
        get_panoptic_segmentation(sem - 1, heat, offsets, **kwargs)
    with pytest.raises(InputError, match="integer"):
        get_panoptic_segmentation(sem.float(), heat, offsets, **kwargs)


# --- batched API ------------------------------------------------------------------------------


def _hand_built_batch():
    """4x6 image: sky (1) on top, road (0), a car (class 2) and a person (class 3)."""
    sem = torch.tensor([[1, 1, 1, 1, 1, 1], [2, 2, 0, 0, 3, 3], [2, 2, 0, 0, 3, 3], [0, 0, 0, 0, 0, 3]])
    logits = F.one_hot(sem, 4).permute(2, 0, 1).float() * 2.0
    logits[:, 1, 0] = torch.tensor([0.0, 0.0, 1.0, 0.0])  # a less confident car pixel
    heat = heatmap_with_peaks(4, 6, {(2, 1): 0.8, (1, 5): 0.6, (1, 0): 0.3, (1, 4): 0.5})
    return logits[None], heat[None], torch.zeros(1, 2, 4, 6)


def test_batched_api_segments_by_hand():
    logits, heat, offsets = _hand_built_batch()
    (result,) = panoptic_deeplab_inference(logits, heat, offsets, thing_ids=[2, 3], stuff_area=6, nms_kernel=3)
    sure, unsure = math.exp(2) / (math.exp(2) + 3), math.e / (math.e + 3)
    # Centre (1, 5) comes first in row-major order: the person is segment 1, the car 2.
    person, car, road, sky = result.segments
    assert (person.id, person.category_id, person.isthing, person.area, person.bbox) == (1, 3, True, 5, [4, 1, 2, 3])
    assert (car.id, car.category_id, car.isthing, car.area, car.bbox) == (2, 2, True, 4, [0, 1, 2, 2])
    assert (road.id, road.category_id, road.isthing, road.area, road.bbox) == (3, 0, False, 9, [0, 1, 5, 3])
    assert (sky.id, sky.category_id, sky.area, sky.bbox, sky.score) == (4, 1, 6, [0, 0, 6, 1], None)
    # Person centroid (1.8, 4.6) -> heatmap[1, 4]; car centroid (1.5, 0.5) -> heatmap[1, 0].
    assert person.score == pytest.approx(sure * 0.5, rel=1e-6)
    assert car.score == pytest.approx((3 * sure + unsure) / 4 * 0.3, rel=1e-6)
    assert not any(s.iscrowd for s in result.segments)
    assert result.id_map.tolist() == [[4] * 6, [2, 2, 3, 3, 1, 1], [2, 2, 3, 3, 1, 1], [3, 3, 3, 3, 3, 1]]


def test_batched_api_maps_categories_and_drops_small_stuff():
    logits, heat, offsets = _hand_built_batch()
    (result,) = panoptic_deeplab_inference(
        logits, heat, offsets, thing_ids=[2, 3], stuff_area=7, nms_kernel=3, category_ids=[7, 23, 26, 24]
    )
    assert [(s.category_id, s.isthing) for s in result.segments] == [(24, True), (26, True), (7, False)]
    assert (result.id_map == 0).sum() == 6  # the sky is below the stuff area: void


@pytest.mark.parametrize("seed", range(4))
def test_batched_api_matches_d2_labels_and_scores(seed):
    g = torch.Generator().manual_seed(seed)
    batch, num_classes, height, width = 2, 5, 24, 32
    logits = torch.randn(batch, num_classes, height, width, generator=g) * 3
    heat = torch.rand(batch, 1, height, width, generator=g)
    offsets = torch.randn(batch, 2, height, width, generator=g) * 4
    thing_ids = [2, 4]
    results = panoptic_deeplab_inference(logits, heat, offsets, thing_ids=thing_ids, stuff_area=20, nms_kernel=5, top_k=6)
    for b, result in enumerate(results):
        sem = logits[b].argmax(dim=0, keepdim=True)
        expected, _ = get_panoptic_segmentation_reference(
            sem, heat[b], offsets[b], thing_ids, 1000, 20, -1, nms_kernel=5, top_k=6
        )
        label_map = torch.from_numpy(to_label_map(result, label_divisor=1000, void_label=-1))
        assert torch.equal(label_map, expected[0])
        expected_scores = instance_scores_reference(expected[0], logits[b], heat[b], thing_ids, 1000)
        number = {}
        for s in result.segments:
            if s.isthing:
                number[s.category_id] = number.get(s.category_id, 0) + 1
                assert s.score == pytest.approx(expected_scores[s.category_id * 1000 + number[s.category_id]], rel=1e-5)
        assert len(expected_scores) == sum(s.isthing for s in result.segments)


def test_mean_probability_vote_weighs_confidence_where_the_majority_counts_pixels():
    """One instance of three pixels (classes: 0 stuff, 1 and 2 things): two pixels lean slightly to
    class 1, one is sure of class 2. Majority: class 1 (2 of 3 argmaxes). Mean softmax
    probability: class 2, worked by hand. The grouping, areas and stuff are the same either way."""
    logits = torch.full((1, 3, 1, 4), -9.0)
    logits[0, :, 0, 0] = torch.tensor([4.0, -9.0, -9.0])  # stuff pixel
    for x in (1, 2):
        logits[0, :, 0, x] = torch.tensor([-9.0, 0.2, 0.0])  # p(1) = 0.55, p(2) = 0.45
    logits[0, :, 0, 3] = torch.tensor([-9.0, 0.0, 4.0])  # p(2) = 0.98
    heat = torch.zeros(1, 1, 1, 4)
    heat[0, 0, 0, 2] = 0.9
    offsets = torch.zeros(1, 2, 1, 4)
    common = dict(thing_ids=[1, 2], stuff_area=1, nms_kernel=3)
    (majority,) = panoptic_deeplab_inference(logits, heat, offsets, **common)
    (mean,) = panoptic_deeplab_inference(logits, heat, offsets, class_vote="mean_probability", **common)
    p = torch.softmax(logits[0, 1:, 0, 1:], dim=0)
    assert p[0].mean() < p[1].mean()  # class 1's mean probability is below class 2's: 0.37 vs 0.63
    assert [(s.category_id, s.area) for s in majority.segments] == [(1, 3), (0, 1)]
    assert [(s.category_id, s.area) for s in mean.segments] == [(2, 3), (0, 1)]
    assert (majority.id_map == mean.id_map).all()
    with pytest.raises(InputError, match="class_vote"):
        panoptic_deeplab_inference(logits, heat, offsets, class_vote="mode", **common)
