"""The overlapping-shapes dataset: panoptic invariants, written files, determinism, knobs."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from panopticlab.data import synthetic
from panopticlab.data.synthetic import writing
from panopticlab.data.coco_panoptic import Categories, load_panoptic_json, read_panoptic_annotation
from panopticlab.data.synthetic import (
    SHAPES_CATEGORIES,
    ShapeInstance,
    ShapesConfig,
    count_occlusion_pairs,
    generate_sample,
    generate_split,
    iter_split_instances,
    occlusion_pairs,
)
from panopticlab.errors import InputError

# Non-square, so that a swapped height and width shows.
SMALL = ShapesConfig(height=64, width=80)
BUSY = ShapesConfig(height=64, width=80, overlap=1.0, max_objects=10, crowd=0.5, void=0.5)


def pixel_area_bbox(mask: np.ndarray) -> tuple[int, list[int]]:
    """Area and COCO bbox [x, y, w, h] of a bool mask, computed the plain way."""
    ys, xs = np.nonzero(mask)
    return len(ys), [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def front_instance(instances: list[ShapeInstance], shape: tuple[int, int]) -> np.ndarray:
    """Index of the front-most instance covering each pixel, -1 where none does. int [H, W]."""
    front = np.full(shape, -1)
    for k in reversed(range(len(instances))):  # back to front, so the front one is written last
        front[instances[k].mask] = k
    return front


def samples(config: ShapesConfig, n: int, seed: int = 0):
    return [generate_sample(config, seed, k) for k in range(n)]


def test_categories_have_non_contiguous_ids_and_all_fields():
    categories = Categories(SHAPES_CATEGORIES)
    assert categories.thing_ids == [1, 2, 3, 4, 5, 6]
    assert categories.stuff_ids == [11, 12, 13, 14, 15]
    assert categories.to_contiguous(11) == 6
    for c in SHAPES_CATEGORIES:
        assert set(c) == {"id", "name", "supercategory", "isthing", "color"}
        assert len(c["color"]) == 3


def test_sample_shapes_dtypes_and_depth_order():
    for sample in samples(SMALL, 5):
        assert sample.image.shape == (64, 80, 3) and sample.image.dtype == np.uint8
        assert sample.panoptic.id_map.shape == (64, 80) and sample.panoptic.id_map.dtype == np.int32
        assert 3 <= len([i for i in sample.instances if not i.iscrowd]) <= 8
        for k, inst in enumerate(sample.instances):
            assert inst.mask.shape == (64, 80) and inst.mask.dtype == bool and inst.mask.any()
            assert inst.depth == k
            assert inst.category_id in range(1, 7)


def test_segments_cover_exactly_the_non_void_pixels_with_exact_area_and_bbox():
    for sample in samples(BUSY, 12):
        id_map = sample.panoptic.id_map
        segments = sample.panoptic.segments
        assert sorted(s.id for s in segments) == sorted(set(np.unique(id_map).tolist()) - {0})
        assert sum(s.area for s in segments) == np.count_nonzero(id_map)
        for s in segments:
            assert (s.area, s.bbox) == pixel_area_bbox(id_map == s.id)
            assert s.isthing == (s.category_id < 10)
        stuff = [s.category_id for s in segments if not s.isthing]
        assert len(stuff) == len(set(stuff)), "one segment per stuff class"


def test_front_instance_owns_each_visible_pixel_and_hidden_ones_have_no_segment():
    hidden = 0
    for sample in samples(BUSY, 30, seed=1):
        id_map = sample.panoptic.id_map
        front = front_instance(sample.instances, id_map.shape)
        labeled = id_map != 0
        stuff_ids = [s.id for s in sample.panoptic.segments if not s.isthing]
        assert np.isin(id_map[labeled & (front < 0)], stuff_ids).all()
        for k, inst in enumerate(sample.instances):
            visible = inst.mask & (front == k) & labeled
            if inst.panoptic_segment_id is None:
                assert not visible.any()
                hidden += 1
                continue
            segment = sample.panoptic.segment(inst.panoptic_segment_id)
            assert (segment.category_id, segment.iscrowd) == (inst.category_id, inst.iscrowd)
            assert np.array_equal(id_map == segment.id, visible)
            assert not (visible & ~inst.mask).any()
    assert hidden > 0, "no fully hidden instance seen: the null case went untested"


def test_every_thing_is_hidden_or_visible_enough():
    config = ShapesConfig(height=64, width=80, overlap=1.0, max_objects=10, void=0.0, min_visible=0.3)
    for sample in samples(config, 20):
        for inst in sample.instances:
            if inst.panoptic_segment_id is not None:
                visible = sample.panoptic.segment(inst.panoptic_segment_id).area
                assert visible >= 0.3 * inst.mask.sum()


def test_occlusion_pairs_front_first_and_crowd_left_out():
    def square(y: int, x: int) -> np.ndarray:
        mask = np.zeros((10, 10), dtype=bool)
        mask[y : y + 4, x : x + 4] = True
        return mask

    instances = [
        ShapeInstance(square(0, 0), 1, depth=1, iscrowd=False, panoptic_segment_id=1),
        ShapeInstance(square(2, 2), 2, depth=0, iscrowd=False, panoptic_segment_id=2),
        ShapeInstance(square(4, 4), 3, depth=2, iscrowd=False, panoptic_segment_id=None),
        ShapeInstance(square(1, 1), 4, depth=3, iscrowd=True, panoptic_segment_id=3),
    ]
    assert occlusion_pairs(instances) == [(1, 0), (1, 2)]


def test_written_split_matches_samples_and_reads_back_strictly(tmp_path):
    config = ShapesConfig(height=64, width=80, crowd=1.0, void=1.0)
    calls = []

    @contextlib.contextmanager
    def progress(description, total):  # a progress factory that records what it is told
        calls.append((description, total))
        yield lambda n=1: calls.append(n)

    split_dir = generate_split(tmp_path, 4, config, seed=3, split="val", workers=1, progress=progress)
    assert split_dir == tmp_path / "val"
    assert calls == [("synth val", 4), 1, 1, 1, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["val"]

    dataset = load_panoptic_json(split_dir / "panoptic.json")
    assert dataset.raw["categories"] == SHAPES_CATEGORIES
    info = dataset.raw["info"]
    assert info["seed"] == 3 and info["generator_version"] == synthetic.GENERATOR_VERSION
    assert info["config"]["crowd"] == 1.0 and info["config"]["width"] == 80
    instances_json = json.loads((split_dir / "instances.json").read_text())
    assert instances_json["categories"] == [c for c in SHAPES_CATEGORIES if c["isthing"]]
    assert [a["id"] for a in instances_json["annotations"]] == list(range(1, len(instances_json["annotations"]) + 1))
    annotations_of = {}
    for ann in instances_json["annotations"]:
        annotations_of.setdefault(ann["image_id"], []).append(ann)

    expected_pairs = 0
    for k, (image, read_back) in enumerate(zip(dataset.images, iter_split_instances(split_dir))):
        sample = generate_sample(config, 3, k)
        assert image == {"id": k + 1, "file_name": f"{k + 1:06d}.png", "height": 64, "width": 80}
        result = read_panoptic_annotation(dataset, image["id"], split_dir / "panoptic", strict=True)
        assert np.array_equal(result.id_map, sample.panoptic.id_map)
        assert result.segments == sample.panoptic.segments
        assert np.array_equal(np.asarray(Image.open(split_dir / "images" / image["file_name"])), sample.image)

        assert read_back[0] == image
        for ann, inst, decoded in zip(annotations_of[image["id"]], sample.instances, read_back[1], strict=True):
            rle = {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()}
            mask = mask_utils.decode(rle).astype(bool)
            assert np.array_equal(mask, inst.mask) and np.array_equal(decoded.mask, inst.mask)
            assert (ann["area"], ann["bbox"]) == pixel_area_bbox(inst.mask)
            assert (ann["category_id"], ann["depth"], ann["iscrowd"], ann["panoptic_segment_id"]) == (
                inst.category_id, inst.depth, int(inst.iscrowd), inst.panoptic_segment_id)
        assert any(inst.iscrowd for inst in sample.instances)
        expected_pairs += len(occlusion_pairs(sample.instances))
    assert count_occlusion_pairs(split_dir) == expected_pairs


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files_whatever_the_workers(tmp_path):
    one = tree_bytes(generate_split(tmp_path / "a", 6, SMALL, seed=5, workers=1))
    two = tree_bytes(generate_split(tmp_path / "b", 6, SMALL, seed=5, workers=2))
    assert len(one) == 6 * 2 + 2
    assert one == two
    other = tree_bytes(generate_split(tmp_path / "c", 6, SMALL, seed=6, workers=1))
    assert other.keys() == one.keys()
    assert all(other[name] != one[name] for name in one if name.startswith("images/"))


def test_overlap_knob_raises_the_overlap_count():
    counts = [
        sum(len(occlusion_pairs(s.instances)) for s in samples(ShapesConfig(height=64, width=80, overlap=p), 15))
        for p in (0.0, 0.5, 1.0)
    ]
    assert counts[0] < counts[1] < counts[2], counts
    assert counts[0] <= 3, counts


@pytest.mark.parametrize("probability", [0.0, 1.0])
def test_crowd_and_void_appear_exactly_when_asked(probability):
    config = ShapesConfig(height=64, width=80, crowd=probability, void=probability)
    for sample in samples(config, 8):
        has_crowd_segment = any(s.iscrowd for s in sample.panoptic.segments)
        has_crowd_instance = any(i.iscrowd for i in sample.instances)
        has_void = bool((sample.panoptic.id_map == 0).any())
        assert has_crowd_segment == has_crowd_instance == has_void == (probability == 1.0)


def test_existing_split_is_kept_unless_overwrite(tmp_path):
    generate_split(tmp_path, 2, SMALL, seed=0, workers=1)
    before = tree_bytes(tmp_path / "train")
    with pytest.raises(InputError, match="already exists"):
        generate_split(tmp_path, 2, SMALL, seed=1, workers=1)
    assert tree_bytes(tmp_path / "train") == before
    generate_split(tmp_path, 3, SMALL, seed=1, workers=1, overwrite=True)
    after = tree_bytes(tmp_path / "train")
    assert len(after) == 3 * 2 + 2 and after["panoptic.json"] != before["panoptic.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["train"]


def test_failed_generation_leaves_nothing_behind(tmp_path, monkeypatch):
    real = synthetic.generate_sample

    def failing(config, seed, index):
        if index == 2:
            raise RuntimeError("boom")
        return real(config, seed, index)

    generate_split(tmp_path, 2, SMALL, seed=0, workers=1, split="old")
    before = tree_bytes(tmp_path / "old")
    monkeypatch.setattr(writing, "generate_sample", failing)
    with pytest.raises(RuntimeError, match="boom"):
        generate_split(tmp_path, 4, SMALL, workers=1, split="new")
    with pytest.raises(RuntimeError, match="boom"):
        generate_split(tmp_path, 4, SMALL, workers=1, split="old", overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["old"]
    assert tree_bytes(tmp_path / "old") == before


def test_failed_final_rename_restores_the_old_split(tmp_path, monkeypatch):
    generate_split(tmp_path, 2, SMALL, seed=0, workers=1)
    before = tree_bytes(tmp_path / "train")
    real_rename = writing.os.rename

    def rename(src, dst):
        if str(src).endswith(".partial"):
            raise OSError("disk gone")
        real_rename(src, dst)

    monkeypatch.setattr(writing.os, "rename", rename)
    with pytest.raises(OSError, match="disk gone"):
        generate_split(tmp_path, 2, SMALL, seed=1, workers=1, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["train"]
    assert tree_bytes(tmp_path / "train") == before


@pytest.mark.parametrize(
    "make",
    [
        lambda out: ShapesConfig(overlap=1.5),
        lambda out: ShapesConfig(min_objects=5, max_objects=2),
        lambda out: ShapesConfig(height=8),
        lambda out: generate_split(out, 1, split="../escape"),
        lambda out: generate_split(out, 0),
        lambda out: generate_split(out, 1, seed=-1),
        lambda out: generate_split(out, 1, workers=0),
    ],
)
def test_bad_arguments_raise_input_error(make, tmp_path):
    with pytest.raises(InputError):
        make(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_thing_colours_stand_out_from_the_surroundings_and_from_each_other():
    from panopticlab.data.synthetic import scene

    rng = np.random.default_rng(0)
    for _ in range(200):
        surroundings, first = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        colour = scene._contrasting_colour(rng, surroundings, first)
        assert np.linalg.norm(colour - surroundings) >= 90 and np.linalg.norm(colour - first) >= 90
    # the surroundings: what the thing covers and a 2-pixel ring around it
    image = np.zeros((10, 10, 3), np.float32)
    image[:, 5:] = 100.0  # the right half is grey
    mask = np.zeros((10, 10), bool)
    mask[4:6, 2:4] = True  # a 2x2 thing on the left: it and its ring span columns 0..5
    assert scene._surroundings_colour(image, mask).tolist() == pytest.approx([100 / 6] * 3)  # 1 of 6 columns grey


def test_thing_textures_scale_with_the_thing_and_hexagons_have_the_circles_area():
    from panopticlab.data.synthetic import scene

    def stripes_across(diameter):  # stripe edges along a row, for a texture sized to `diameter`
        pattern = scene._thing_pattern(np.random.default_rng(3), "stripes", (1, 400), diameter)[0]
        return int(np.count_nonzero(np.diff(pattern)))

    assert stripes_across(20.0) == pytest.approx(2 * stripes_across(40.0), abs=2)  # half the size, twice the stripes
    circle = scene._shape_mask(np.random.default_rng(0), "circle", (100, 100), 60 * scene._RADIUS_SCALE["circle"], 0.0, (200, 200))
    hexagon = scene._shape_mask(np.random.default_rng(0), "hexagon", (100, 100), 60 * scene._RADIUS_SCALE["hexagon"], 0.3, (200, 200))
    assert hexagon.sum() == pytest.approx(circle.sum(), rel=0.01)


# -- depth rules ---------------------------------------------------------------------------
# Each rule computed here from the written instances, independently of the generator's code.
RULES = {
    "size": lambda a, b: None if a.mask.sum() == b.mask.sum() else a.mask.sum() < b.mask.sum(),
    "vertical": lambda a, b: None if (ya := np.nonzero(a.mask)[0].mean()) == (yb := np.nonzero(b.mask)[0].mean()) else ya > yb,
    "class": lambda a, b: None if a.category_id == b.category_id else a.category_id < b.category_id,
}


def rule_share(split_dir: Path, rule: str) -> tuple[float, int]:
    """Share of the overlapping non-crowd pairs of a written split whose front thing the rule
    puts in front, and the number of pairs the rule decides."""
    obeyed = decided = 0
    for _, instances in iter_split_instances(split_dir):
        for front, back in occlusion_pairs(instances):
            says = RULES[rule](instances[front], instances[back])
            if says is not None:
                decided += 1
                obeyed += bool(says)
    return obeyed / decided, decided


@pytest.mark.parametrize(
    ("rule", "consistency", "low", "high"),
    [("size", 1.0, 1.0, 1.0), ("vertical", 1.0, 1.0, 1.0), ("class", 1.0, 1.0, 1.0), ("size", 0.8, 0.78, 0.9), ("vertical", 0.5, 0.42, 0.58)],
)
def test_depth_rule_holds_for_its_share_of_the_written_overlapping_pairs(tmp_path, rule, consistency, low, high):
    config = ShapesConfig(height=64, width=80, overlap=0.8, depth_rule=rule, depth_consistency=consistency)
    split = generate_split(tmp_path, 150, config, seed=3, workers=1)
    share, decided = rule_share(split, rule)
    assert decided > 300, "too few overlapping pairs to measure the rule"
    assert low <= share <= high, (rule, consistency, share)


def test_random_placement_order_obeys_no_rule(tmp_path):
    split = generate_split(tmp_path, 150, ShapesConfig(height=64, width=80, overlap=0.8), seed=3, workers=1)
    for rule in RULES:
        assert 0.35 <= rule_share(split, rule)[0] <= 0.65, rule


def test_ordered_scenes_keep_every_thing_hidden_or_visible_enough_and_their_depth_consistent():
    config = ShapesConfig(height=64, width=80, overlap=1.0, max_objects=10, crowd=0.5, void=0.0, depth_rule="size", depth_consistency=0.7)
    for sample in samples(config, 30):
        front = front_instance(sample.instances, (64, 80))
        assert [inst.depth for inst in sample.instances] == list(range(len(sample.instances)))
        for k, inst in enumerate(sample.instances):
            visible = int((front == k).sum())
            assert visible == 0 or visible >= config.min_visible * inst.mask.sum()
            assert (inst.panoptic_segment_id is None) == (visible == 0)


def test_classes_per_image_draws_every_thing_of_an_image_from_that_many_classes():
    config = ShapesConfig(height=64, width=80, crowd=0.5, classes_per_image=1)
    classes = [{inst.category_id for inst in sample.instances} for sample in samples(config, 30)]
    assert all(len(c) <= 1 for c in classes)
    assert len(set().union(*classes)) >= 4  # the class differs between images
    two = [{inst.category_id for inst in s.instances} for s in samples(ShapesConfig(height=64, width=80, classes_per_image=2), 30)]
    assert max(len(c) for c in two) == 2


@pytest.mark.parametrize("bad", [{"depth_rule": "depth"}, {"depth_consistency": 1.5}, {"classes_per_image": 7}])
def test_bad_depth_options_raise_input_error(bad):
    with pytest.raises(InputError):
        ShapesConfig(**bad)
