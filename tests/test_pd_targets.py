"""Panoptic-DeepLab target generator: detectron2's semantics on hand-built id maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from panopticlab.errors import InputError
from panopticlab.models.panoptic_deeplab.targets import (
    PanopticDeepLabTargetGenerator,
    collate_targets,
    gaussian_kernel,
    targets_from_panoptic,
)
from panopticlab.structures import PanopticResult, Segment

THING, STUFF = 1, 0


def seg(segment_id: int, category_id: int, iscrowd: int = 0) -> dict:
    return {"id": segment_id, "category_id": category_id, "iscrowd": iscrowd}


def generator(**kwargs) -> PanopticDeepLabTargetGenerator:
    kwargs.setdefault("sigma", 1)
    return PanopticDeepLabTargetGenerator(255, [THING], **kwargs)


def g(d2: float, sigma: int = 1) -> float:
    """The Gaussian at squared distance d2 from the peak."""
    return math.exp(-d2 / (2 * sigma**2))


def test_gaussian_kernel_has_6_sigma_plus_3_pixels_and_peak_1_in_the_middle():
    k = gaussian_kernel(2)
    assert k.shape == (15, 15) and k.dtype == np.float32
    assert k[7, 7] == 1.0
    assert k[7, 8] == pytest.approx(math.exp(-1 / 8))
    assert k[8, 8] == pytest.approx(math.exp(-2 / 8))
    assert k[0, 0] == pytest.approx(math.exp(-98 / 8))


def test_shapes_dtypes_and_void_pixels():
    panoptic = np.array([[0, 5, 5], [7, 5, 99]], dtype=np.int32)  # 0 and 99 are listed nowhere
    out = generator()(panoptic, [seg(5, THING), seg(7, STUFF)])
    expected = {
        "sem_seg": (torch.int64, (2, 3)),
        "center": (torch.float32, (2, 3)),
        "offset": (torch.float32, (2, 2, 3)),
        "sem_seg_weights": (torch.float32, (2, 3)),
        "center_weights": (torch.float32, (1, 2, 3)),
        "offset_weights": (torch.float32, (1, 2, 3)),
    }
    for key, (dtype, shape) in expected.items():
        assert (out[key].dtype, tuple(out[key].shape)) == (dtype, shape), key
    assert out["sem_seg"].tolist() == [[255, 1, 1], [0, 1, 255]]
    assert out["center_weights"][0].tolist() == [[0, 1, 1], [1, 1, 0]]


def test_peak_at_rounded_mass_centre_with_gaussian_around_it():
    # L-shape: row 0 cols 0..5 and col 0 rows 1..3 -> mass centre (6/9, 15/9) = (0.67, 1.67),
    # peak (1, 2); the box centre (1.5, 2.5) would round elsewhere in y.
    panoptic = np.zeros((12, 12), dtype=np.int64)
    panoptic[0, 0:6] = 3
    panoptic[1:4, 0] = 3
    out = generator()(panoptic, [seg(3, THING)])
    center = out["center"]
    assert out["center_points"] == [[pytest.approx(6 / 9), pytest.approx(15 / 9)]]
    assert center[1, 2] == 1.0 and center.max() == 1.0
    assert center[1, 3] == pytest.approx(g(1))  # exp(-1 / (2 sigma^2)) next to the peak
    assert center[2, 3] == pytest.approx(g(2))
    assert center[3, 2] == pytest.approx(g(4))


def test_halves_round_to_even_as_python_round():
    # rows 1..4 -> cy = 2.5 -> 2 ; cols 3..8 -> cx = 5.5 -> 6
    panoptic = np.zeros((12, 12), dtype=np.int64)
    panoptic[1:5, 3:9] = 4
    center = generator()(panoptic, [seg(4, THING)])["center"]
    assert torch.nonzero(center == 1).tolist() == [[2, 6]]


def test_floor_rounding_option_bc():
    # rows 2..5 -> cy = 3.5: round -> 4, floor -> 3
    panoptic = np.zeros((12, 12), dtype=np.int64)
    panoptic[2:6, 4] = 4
    rounded = generator()(panoptic, [seg(4, THING)])["center"]
    floored = generator(center_rounding="floor")(panoptic, [seg(4, THING)])["center"]
    assert torch.nonzero(rounded == 1).tolist() == [[4, 4]]
    assert torch.nonzero(floored == 1).tolist() == [[3, 4]]


def test_overlapping_gaussians_take_the_element_wise_max():
    panoptic = np.zeros((11, 11), dtype=np.int64)
    panoptic[5, 4] = 1  # one-pixel instances: the peak is the pixel
    panoptic[5, 6] = 2
    center = generator()(panoptic, [seg(1, THING), seg(2, THING)])["center"]
    assert center[5, 4] == 1.0 and center[5, 6] == 1.0
    assert center[5, 5] == pytest.approx(g(1))  # not 2 * g(1)
    assert center[6, 5] == pytest.approx(g(2))
    assert center[5, 8] == pytest.approx(g(4))


def test_gaussian_clipped_at_the_border_and_limited_to_its_window():
    panoptic = np.zeros((5, 5), dtype=np.int64)
    panoptic[0, 0] = 1
    center = generator(sigma=2)(panoptic, [seg(1, THING)])["center"]
    y, x = np.mgrid[0:5, 0:5]
    np.testing.assert_allclose(center.numpy(), np.exp(-(y**2 + x**2) / 8.0), rtol=1e-6)

    # sigma 1: window 9x9, i.e. 4 pixels each side of the peak and nothing beyond.
    panoptic = np.zeros((12, 12), dtype=np.int64)
    panoptic[11, 11] = 1
    center = generator()(panoptic, [seg(1, THING)])["center"]
    assert center[11, 7] == pytest.approx(g(16)) and center[11, 6] == 0
    assert center[7, 7] == pytest.approx(g(32)) and center[6, 11] == 0


def test_offsets_point_from_each_pixel_to_the_float_mass_centre():
    panoptic = np.zeros((6, 8), dtype=np.int64)
    panoptic[0, 0:6] = 3  # mass centre (2/3, 5/3)
    panoptic[1:4, 0] = 3
    panoptic[5, :] = 9  # stuff
    out = generator()(panoptic, [seg(3, THING), seg(9, STUFF)])
    dy, dx = out["offset"]
    assert dy[0, 5] == pytest.approx(2 / 3) and dx[0, 5] == pytest.approx(5 / 3 - 5)
    assert dy[3, 0] == pytest.approx(2 / 3 - 3) and dx[3, 0] == pytest.approx(5 / 3)
    assert dy[5].abs().sum() == 0 and dx[5].abs().sum() == 0  # stuff
    assert dy[2, 4] == 0 and dx[2, 4] == 0  # void


def test_offset_to_peak_option_dl2():
    panoptic = np.zeros((6, 8), dtype=np.int64)
    panoptic[0, 0:6] = 3  # peak (1, 2)
    panoptic[1:4, 0] = 3
    dy, dx = generator(offset_to_peak=True)(panoptic, [seg(3, THING)])["offset"]
    assert (dy[0, 5].item(), dx[0, 5].item()) == (1.0, -3.0)
    assert (dy[3, 0].item(), dx[3, 0].item()) == (-2.0, 2.0)


def crowd_scene() -> tuple[np.ndarray, list[dict]]:
    """Columns: 0 void, 1 stuff (id 9), 2..3 thing (id 4), 4..5 crowd thing (id 6)."""
    panoptic = np.zeros((4, 6), dtype=np.int64)
    panoptic[:, 1] = 9
    panoptic[:, 2:4] = 4
    panoptic[:, 4:6] = 6
    return panoptic, [seg(9, STUFF), seg(4, THING), seg(6, THING, iscrowd=1)]


def test_crowd_as_d2_keeps_label_and_centre_but_zero_instance_weights():
    panoptic, segments = crowd_scene()
    out = generator(ignore_stuff_in_offset=True)(panoptic, segments)
    assert out["sem_seg"][0].tolist() == [255, 0, 1, 1, 1, 1]
    assert out["center_weights"][0, 0].tolist() == [0, 1, 1, 1, 0, 0]
    assert out["offset_weights"][0, 0].tolist() == [0, 0, 1, 1, 0, 0]
    # crowd still gets its peak (mass centre (1.5, 4.5) -> (2, 4)) and offsets
    assert out["center"][2, 4] == 1.0
    assert out["offset"][1, 0, 5] == pytest.approx(-0.5)
    assert len(out["center_points"]) == 2


def test_ignore_crowd_in_semantic():
    panoptic, segments = crowd_scene()
    out = generator(ignore_crowd_in_semantic=True)(panoptic, segments)
    assert out["sem_seg"][0].tolist() == [255, 0, 1, 1, 255, 255]


def test_ignore_crowd_in_center_dl2_skips_crowd_instances():
    panoptic, segments = crowd_scene()
    out = generator(ignore_crowd_in_center=True, small_instance_area=100, small_instance_weight=3)(panoptic, segments)
    assert out["center_points"] == [[1.5, 2.5]]
    assert out["center"][2, 4] < 1.0  # only the non-crowd peak (2, 2) is drawn
    assert torch.nonzero(out["center"] == 1).tolist() == [[2, 2]]
    assert out["offset"][:, :, 4:].abs().sum() == 0
    assert out["sem_seg_weights"][0].tolist() == [1, 1, 3, 3, 1, 1]
    assert out["sem_seg"][0].tolist() == [255, 0, 1, 1, 1, 1]


def test_offset_weights_equal_center_weights_unless_stuff_is_ignored():
    panoptic, segments = crowd_scene()
    out = generator(ignore_stuff_in_offset=False)(panoptic, segments)
    assert torch.equal(out["offset_weights"], out["center_weights"])
    assert out["offset_weights"][0, 0].tolist() == [0, 1, 1, 1, 0, 0]


def test_small_instance_weight_below_area_for_things_only():
    panoptic = np.zeros((3, 8), dtype=np.int64)
    panoptic[0, 0:4] = 1  # thing, area 4 < 5
    panoptic[1, 0:5] = 2  # thing, area 5: not small
    panoptic[2, 0:2] = 3  # stuff, area 2: never weighted
    panoptic[2, 4:6] = 6  # crowd thing, area 2: weighted as D2 does
    segments = [seg(1, THING), seg(2, THING), seg(3, STUFF), seg(6, THING, iscrowd=1)]
    weights = generator(small_instance_area=5, small_instance_weight=3)(panoptic, segments)["sem_seg_weights"]
    assert weights.tolist() == [[3, 3, 3, 3, 1, 1, 1, 1], [1] * 8, [1, 1, 1, 1, 3, 3, 1, 1]]


def test_segments_missing_from_the_map_are_skipped_and_tensor_input_works():
    panoptic = torch.zeros((4, 4), dtype=torch.int32)
    panoptic[1:3, 1:3] = 2
    out = generator()(panoptic, [seg(2, THING), seg(8, THING)])  # 8 was cropped away
    assert out["center_points"] == [[1.5, 1.5]]
    assert out["sem_seg"].tolist() == [[255] * 4, [255, 1, 1, 255], [255, 1, 1, 255], [255] * 4]


def test_bad_input_raises_input_error():
    with pytest.raises(InputError, match="twice"):
        generator()(np.zeros((2, 2), dtype=np.int64), [seg(1, THING), seg(1, STUFF)])
    with pytest.raises(InputError, match=r"\[H, W\]"):
        generator()(np.zeros((1, 2, 2), dtype=np.int64), [])


def test_collate_pads_bottom_right_and_adds_the_centre_channel():
    gen = generator()
    small = gen(np.full((2, 3), 1, dtype=np.int64), [seg(1, THING)])
    large = gen(np.full((3, 2), 1, dtype=np.int64), [seg(1, STUFF)])
    batch = collate_targets([small, large], ignore_label=255)
    assert tuple(batch["sem_seg"].shape) == (2, 3, 3)
    assert tuple(batch["center"].shape) == (2, 1, 3, 3)
    assert tuple(batch["offset"].shape) == (2, 2, 3, 3)
    assert tuple(batch["center_weights"].shape) == (2, 1, 3, 3)
    assert batch["sem_seg"][0].tolist() == [[1, 1, 1], [1, 1, 1], [255, 255, 255]]
    assert batch["sem_seg_weights"][1].tolist() == [[1, 1, 0], [1, 1, 0], [1, 1, 0]]
    assert batch["center_points"] == [small["center_points"], large["center_points"]]
    assert torch.equal(batch["center"][0, 0, :2, :3], small["center"])
    padded = collate_targets([small], size_divisibility=4)
    assert tuple(padded["offset_weights"].shape) == (1, 1, 4, 4)


def test_targets_from_panoptic_result_maps_dataset_ids_to_contiguous():
    id_map = np.array([[0, 5], [5, 7]], dtype=np.int32)
    result = PanopticResult(
        id_map,
        [Segment(5, 24, True, 2, [0, 0, 2, 2]), Segment(7, 7, False, 1, [1, 1, 1, 1])],
    )
    out = targets_from_panoptic(result, {7: STUFF, 24: THING}, generator())
    assert out["sem_seg"].tolist() == [[255, 1], [1, 0]]
    assert out["center_points"] == [[0.5, 0.5]]
    with pytest.raises(InputError, match="category 24"):
        targets_from_panoptic(result, {7: STUFF}, generator())
