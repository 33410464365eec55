import numpy as np

from panopticlab.data.coco_panoptic import Categories
from panopticlab.structures import PanopticResult
from panopticlab.visualize import boundaries, colorize, compose, overlay, render_ground_truth

CATEGORIES = Categories(
    [
        {"id": 1, "name": "circle", "isthing": 1, "color": [200, 40, 40]},
        {"id": 11, "name": "sky", "isthing": 0, "color": [90, 160, 230]},
    ]
)


def _result():
    id_map = np.array(
        [
            [5, 5, 5, 5],
            [5, 7, 7, 5],
            [5, 8, 8, 0],
        ]
    )
    return PanopticResult.from_id_map(id_map, {5: 11, 7: 1, 8: 1}, thing_category_ids=[1])


def test_colorize_uses_category_colours_and_shades_instances_apart():
    colors = colorize(_result(), CATEGORIES)
    assert colors[0, 0].tolist() == [90, 160, 230]  # stuff: its category colour
    assert colors[1, 1].tolist() == [200, 40, 40]  # first circle: the category colour
    assert colors[2, 1].tolist() != colors[1, 1].tolist()  # second circle: another shade
    assert colors[2, 3].tolist() == [0, 0, 0]  # VOID


def test_boundaries_mark_where_segments_meet():
    edge = boundaries(np.array([[1, 1, 2], [1, 1, 2]]))
    np.testing.assert_array_equal(edge, [[False, True, False], [False, True, False]])


def test_overlay_draws_boundaries_white_and_darkens_void():
    image = np.full((3, 4, 3), 100, dtype=np.uint8)
    out = overlay(image, _result(), CATEGORIES)
    # (0, 0): sky inside sky, so a blend: 0.45 * 100 + 0.55 * (90, 160, 230), truncated.
    assert out[0, 0].tolist() == [94, 133, 171]
    assert out[1, 0].tolist() == [255, 255, 255]  # sky whose right neighbour is a circle
    assert out[2, 3].tolist() == [35, 35, 35]  # VOID: 0.35 of the photo


def test_compose_lays_panels_side_by_side_with_a_legend():
    image = np.zeros((30, 40, 3), dtype=np.uint8)
    picture = compose([("a", image), ("b", image)], CATEGORIES, [1, 11])
    assert picture.width == 2 * 40 + 3 * 6 and picture.height > 30
    picture = render_ground_truth(np.zeros((3, 4, 3), dtype=np.uint8), _result(), CATEGORIES)
    assert picture.width == 3 * 4 + 4 * 6


def test_categories_present_lists_each_category_once_in_contiguous_order():
    from panopticlab.visualize import categories_present

    other = PanopticResult.from_id_map(np.array([[3]]), {3: 1}, thing_category_ids=[1])
    assert categories_present(CATEGORIES, _result(), other) == [1, 11]
    assert categories_present(CATEGORIES) == []
