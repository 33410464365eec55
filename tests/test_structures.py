import numpy as np
import pytest

from panopticlab.structures import (
    PanopticResult,
    from_label_map,
    id2rgb,
    rgb2id,
    segment_stats,
    to_label_map,
)


def test_rgb2id_worked_example():
    rgb = np.array([[[1, 2, 3], [0, 0, 0]], [[255, 255, 255], [10, 0, 1]]], dtype=np.uint8)
    expected = np.array([[1 + 2 * 256 + 3 * 65536, 0], [256**3 - 1, 10 + 65536]])
    np.testing.assert_array_equal(rgb2id(rgb), expected)
    assert rgb2id(rgb).dtype == np.int32


def test_rgb2id_ignores_alpha_like_panopticapi():
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., 0] = 7
    rgba[..., 3] = 200
    np.testing.assert_array_equal(rgb2id(rgba), np.full((2, 2), 7))


def test_rgb2id_rejects_grey_images():
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        rgb2id(np.zeros((4, 4), dtype=np.uint8))


def test_id2rgb_round_trip_over_the_whole_range():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 256**3, size=(64, 48))
    ids[0, :3] = [0, 1, 256**3 - 1]
    np.testing.assert_array_equal(rgb2id(id2rgb(ids)), ids)


def test_id2rgb_rejects_ids_that_do_not_fit():
    with pytest.raises(ValueError, match="fit an RGB PNG"):
        id2rgb(np.array([[256**3]]))
    with pytest.raises(ValueError):
        id2rgb(np.array([[-1]]))


def test_segment_stats_area_and_coco_bbox():
    id_map = np.array(
        [
            [0, 0, 5, 5],
            [0, 7, 5, 0],
            [7, 7, 0, 0],
        ]
    )
    stats = {i: (a, b) for i, a, b in segment_stats(id_map)}
    assert stats[0] == (6, [0, 0, 4, 3])
    assert stats[5] == (3, [2, 0, 2, 2])  # x from 2 to 3 -> width 2, y from 0 to 1 -> height 2
    assert stats[7] == (3, [0, 1, 2, 2])


def _hand_result():
    # sky (stuff 11) on top, two circles (thing 1), one square (thing 2), VOID in a corner.
    id_map = np.array(
        [
            [0, 3, 3, 3],
            [9, 9, 3, 4],
            [9, 9, 4, 4],
            [12, 12, 12, 12],
        ]
    )
    categories = {3: 11, 9: 1, 4: 1, 12: 2}
    return PanopticResult.from_id_map(id_map, categories, thing_category_ids=[1, 2], crowd_ids=[12])


def test_from_id_map_lists_each_segment_with_its_pixels():
    result = _hand_result()
    by_id = {s.id: s for s in result.segments}
    assert sorted(by_id) == [3, 4, 9, 12]
    assert by_id[3].isthing is False and by_id[9].isthing is True
    assert by_id[12].iscrowd is True and by_id[9].iscrowd is False
    assert by_id[9].area == 4 and by_id[9].bbox == [0, 1, 2, 2]
    assert result.segment(4).category_id == 1
    with pytest.raises(KeyError):
        PanopticResult.from_id_map(np.array([[1, 2]]), {1: 1}, [1])


def test_label_map_encoding_worked_example():
    label_map = to_label_map(_hand_result(), label_divisor=1000)
    expected = np.array(
        [
            [-1, 11000, 11000, 11000],
            [1002, 1002, 11000, 1001],
            [1002, 1002, 1001, 1001],
            [2001, 2001, 2001, 2001],
        ]
    )
    # Things are numbered per category in segment order: ids 4 then 9 for category 1.
    np.testing.assert_array_equal(label_map, expected)


def test_label_map_round_trip_keeps_the_partition_and_categories():
    original = _hand_result()
    back = from_label_map(to_label_map(original), thing_category_ids=[1, 2])
    # Segment ids are renumbered, but pixels grouped together and their categories stay.
    for s in original.segments:
        mask = original.id_map == s.id
        ids = np.unique(back.id_map[mask])
        assert len(ids) == 1
        assert back.segment(int(ids[0])).category_id == s.category_id
        assert back.segment(int(ids[0])).area == s.area
    assert (back.id_map == 0).sum() == (original.id_map == 0).sum()


def test_segment_stats_agree_for_small_and_large_ids():
    """The counting path (small ids) and the sorting path (ids up to 256**3) give the same answer."""
    rng = np.random.default_rng(1)
    small = rng.integers(0, 6, size=(40, 50))
    large = np.array([0, 70_000, 5_000_000, 16_000_000, 1, 2])[small]
    relabel = dict(zip(range(6), [0, 70_000, 5_000_000, 16_000_000, 1, 2]))
    got_small = {relabel[i]: (a, b) for i, a, b in segment_stats(small)}
    got_large = {i: (a, b) for i, a, b in segment_stats(large)}
    assert got_small == got_large
    for i, (area, (x, y, w, h)) in got_large.items():
        ys, xs = np.nonzero(large == i)
        assert area == len(xs) and (x, y, w, h) == (xs.min(), ys.min(), xs.max() - x + 1, ys.max() - y + 1)
