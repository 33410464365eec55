import numpy as np
import pytest
import torch

from panopticlab.data.transforms import PAD_COLOR, RandomCrop, crop, hflip, pad, resize, training_transforms
from panopticlab.masks import masks_to_boxes
from panopticlab.structures import PanopticResult


def _item():
    id_map = np.zeros((4, 6), dtype=np.int32)
    id_map[:, :3] = 11  # stuff on the left
    id_map[1:3, 3:5] = 7  # a thing
    id_map[0, 5] = 9  # a one-pixel thing in the top-right corner
    panoptic = PanopticResult.from_id_map(id_map, {11: 2, 7: 1, 9: 1}, thing_category_ids=[1])
    image = torch.arange(3 * 4 * 6, dtype=torch.uint8).reshape(3, 4, 6)
    masks = torch.from_numpy(np.stack([id_map == 7, id_map == 9, np.zeros_like(id_map, dtype=bool)]))
    return {"image": image, "panoptic": panoptic, "instances": {"masks": masks, "boxes": masks_to_boxes(masks)}}


def test_masks_to_boxes_worked_example():
    boxes = _item()["instances"]["boxes"]
    assert boxes.tolist() == [[3, 1, 5, 3], [5, 0, 6, 1], [0, 0, 0, 0]]


def test_hflip_mirrors_everything_and_twice_is_identity():
    item = _item()
    flipped = hflip(item)
    assert torch.equal(flipped["image"], item["image"].flip(-1))
    assert flipped["panoptic"].segment(9).bbox == [0, 0, 1, 1]
    assert flipped["instances"]["boxes"][0].tolist() == [1, 1, 3, 3]  # x0' = W - x1
    back = hflip(flipped)
    np.testing.assert_array_equal(back["panoptic"].id_map, item["panoptic"].id_map)
    assert back["panoptic"].segments == item["panoptic"].segments


def test_crop_recomputes_stats_and_drops_segments_that_left():
    cropped = crop(_item(), top=1, left=2, height=3, width=3)
    assert cropped["image"].shape == (3, 3, 3)
    assert sorted(s.id for s in cropped["panoptic"].segments) == [7, 11]  # the corner thing is gone
    assert cropped["panoptic"].segment(7).area == 4 and cropped["panoptic"].segment(7).bbox == [1, 0, 2, 2]
    assert cropped["panoptic"].segment(11).area == 3
    assert cropped["instances"]["masks"][1].sum() == 0 and cropped["instances"]["boxes"][1].tolist() == [0, 0, 0, 0]


def test_pad_uses_the_mean_colour_and_void():
    padded = pad(_item(), (5, 8))
    assert padded["image"][:, 4, 7].tolist() == list(PAD_COLOR)
    assert padded["panoptic"].id_map[4].tolist() == [0] * 8 and padded["panoptic"].id_map[:, 6:].sum() == 0
    assert padded["instances"]["masks"].shape == (3, 5, 8)


def test_resize_nearest_keeps_ids_and_scales_areas():
    doubled = resize(_item(), (8, 12))
    assert set(np.unique(doubled["panoptic"].id_map)) == {0, 7, 9, 11}
    for s in _item()["panoptic"].segments:
        assert doubled["panoptic"].segment(s.id).area == 4 * s.area
    assert doubled["instances"]["boxes"][0].tolist() == [6, 2, 10, 6]


@pytest.mark.parametrize("seed", range(5))
def test_random_pipeline_gives_the_crop_size_and_consistent_segments(seed):
    torch.manual_seed(seed)
    import random

    random.seed(seed)
    out = training_transforms((5, 7), min_scale=0.5, max_scale=2.0)(_item())
    assert out["image"].shape == (3, 5, 7) and out["panoptic"].id_map.shape == (5, 7)
    for s in out["panoptic"].segments:
        assert s.area == int((out["panoptic"].id_map == s.id).sum()) > 0
    assert RandomCrop((2, 2))(_item())["image"].shape == (3, 2, 2)
