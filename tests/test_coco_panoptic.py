import json
import shutil

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from panopticlab.data import coco_panoptic
from panopticlab.data.coco_panoptic import (
    Categories,
    load_panoptic_json,
    panoptic_annotation,
    read_panoptic_annotation,
    read_panoptic_png,
    write_panoptic_json,
    write_panoptic_png,
)
from panopticlab.errors import InputError
from panopticlab.fileio import atomic_path, read_json
from panopticlab.structures import id2rgb, rgb2id


def test_categories_of_coco_map_to_contiguous_ids(coco_sample):
    cats = load_panoptic_json(coco_sample / "panoptic_examples.json").categories
    assert len(cats) == 133 and len(cats.thing_ids) == 80 and len(cats.stuff_ids) == 53
    assert cats.to_contiguous(1) == 0  # person
    assert cats.to_contiguous(200) == 132  # wall-other-merged, the last
    assert cats.to_contiguous(92) == 80  # banner: the first stuff class follows the 80 things
    assert all(cats.from_contiguous(cats.to_contiguous(i)) == i for i in cats.ids)
    assert cats.color(1) == (220, 20, 60)
    with pytest.raises(InputError, match="category 91 does not exist"):
        cats.to_contiguous(91)


def test_categories_reject_entries_without_isthing():
    with pytest.raises(InputError, match="needs 'id', 'name' and 'isthing'"):
        Categories([{"id": 1, "name": "a"}], source="x.json")


def test_sample_annotations_match_their_pngs(coco_sample):
    dataset = load_panoptic_json(coco_sample / "panoptic_examples.json")
    results = {i: read_panoptic_annotation(dataset, i, coco_sample / "panoptic_examples") for i in dataset.image_ids}
    assert {i: len(r.segments) for i, r in results.items()} == {142238: 18, 439180: 32}
    assert sum(s.iscrowd for r in results.values() for s in r.segments) == 3
    for result in results.values():
        for s in result.segments:
            assert s.area == int((result.id_map == s.id).sum())


def test_sample_pngs_agree_with_the_two_channel_and_detection_formats(coco_sample):
    """Independent encodings of the same annotation: R = category and an RLE mask per segment."""
    dataset = load_panoptic_json(coco_sample / "panoptic_examples.json")
    detections = read_json(coco_sample / "panoptic_coco_detection_format.json")["annotations"]
    for image_id in dataset.image_ids:
        result = read_panoptic_annotation(dataset, image_id, coco_sample / "panoptic_examples")
        two_channel = np.asarray(Image.open(coco_sample / "panoptic_examples_2ch_format" / f"{image_id:012d}.png"))
        for s in result.segments:
            assert np.all(two_channel[result.id_map == s.id, 0] == s.category_id)
        masks = [mask_utils.decode(d["segmentation"]).astype(bool) for d in detections if d["image_id"] == image_id]
        assert len(masks) == len(result.segments)
        for m in masks:
            ids = np.unique(result.id_map[m])
            assert len(ids) == 1 and np.array_equal(result.id_map == ids[0], m)


def test_write_then_read_is_lossless(coco_sample, tmp_path):
    dataset = load_panoptic_json(coco_sample / "panoptic_examples.json")
    annotations, originals = [], {}
    for image_id in dataset.image_ids:
        result = read_panoptic_annotation(dataset, image_id, coco_sample / "panoptic_examples")
        originals[image_id] = result
        name = f"{image_id}.png"
        write_panoptic_png(tmp_path / "pngs" / name, result.id_map)
        annotations.append(panoptic_annotation(image_id, name, result))
    write_panoptic_json(tmp_path / "out.json", dataset.images, annotations, dataset.categories)

    again = load_panoptic_json(tmp_path / "out.json")
    assert again.categories.to_list() == dataset.categories.to_list()
    for image_id, original in originals.items():
        result = read_panoptic_annotation(again, image_id, tmp_path / "pngs")
        np.testing.assert_array_equal(result.id_map, original.id_map)
        assert result.segments == original.segments
        source = {s["id"]: s for s in dataset.annotations[image_id]["segments_info"]}
        for s in again.annotations[image_id]["segments_info"]:
            assert s == {k: source[s["id"]][k] for k in ("id", "category_id", "area", "bbox", "iscrowd")}


def test_writers_never_overwrite_unless_asked_and_never_leave_partial_files(tmp_path):
    target = tmp_path / "a.json"
    write_panoptic_json(target, [], [], [])
    with pytest.raises(InputError, match="already exists"):
        write_panoptic_json(target, [], [], [])
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "b.json") as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


# --- bad input: each case gives an InputError naming the file, the image and the segment ---


@pytest.fixture
def sample_copy(coco_sample, tmp_path):
    """A writable copy of the sample: (json path, png folder, loaded json dict)."""
    shutil.copytree(coco_sample / "panoptic_examples", tmp_path / "pngs")
    doc = json.loads((coco_sample / "panoptic_examples.json").read_text())
    return tmp_path / "gt.json", tmp_path / "pngs", doc


def _read_first(json_file, png_folder, doc, strict=True):
    json_file.write_text(json.dumps(doc))
    dataset = load_panoptic_json(json_file)
    return read_panoptic_annotation(dataset, 142238, png_folder, strict=strict)


def test_png_id_missing_from_segments_info(sample_copy):
    json_file, pngs, doc = sample_copy
    dropped = doc["annotations"][0]["segments_info"].pop(3)
    with pytest.raises(InputError) as e:
        _read_first(json_file, pngs, doc)
    assert "000000142238.png" in str(e.value) and "142238" in str(e.value)
    assert f"[{dropped['id']}]" in str(e.value) and "not in segments_info" in str(e.value)


def test_listed_segment_with_no_pixels(sample_copy):
    json_file, pngs, doc = sample_copy
    doc["annotations"][0]["segments_info"].append({"id": 123, "category_id": 1, "area": 5, "bbox": [0, 0, 1, 1]})
    with pytest.raises(InputError, match=r"142238.*segment 123: listed in segments_info but has no pixels"):
        _read_first(json_file, pngs, doc)


def test_area_disagreeing_with_pixels_is_an_error_when_strict_and_a_warning_otherwise(sample_copy):
    json_file, pngs, doc = sample_copy
    seg = doc["annotations"][0]["segments_info"][0]
    seg["area"] += 1
    with pytest.raises(InputError, match=rf"segment {seg['id']}: area is {seg['area']} in the JSON but"):
        _read_first(json_file, pngs, doc)
    with pytest.warns(UserWarning, match="area is"):
        result = _read_first(json_file, pngs, doc, strict=False)
    assert result.segment(seg["id"]).area == seg["area"]


def test_png_size_differs_from_the_image_entry(sample_copy):
    json_file, pngs, doc = sample_copy
    doc["images"][0]["height"] += 1
    with pytest.raises(InputError, match=r"142238.png \(image 142238\): PNG is 640x427 but .* gives 640x428"):
        _read_first(json_file, pngs, doc)


def test_missing_png(sample_copy):
    json_file, pngs, doc = sample_copy
    (pngs / "000000142238.png").unlink()
    with pytest.raises(InputError, match=r"000000142238.png: file not found"):
        _read_first(json_file, pngs, doc)


def test_truncated_png(sample_copy):
    json_file, pngs, doc = sample_copy
    png = pngs / "000000142238.png"
    png.write_bytes(png.read_bytes()[:500])
    with pytest.raises(InputError, match=r"000000142238.png: cannot read the PNG"):
        _read_first(json_file, pngs, doc)


def test_grey_png_is_not_an_id_png(tmp_path):
    Image.fromarray(np.zeros((3, 3), dtype=np.uint8)).save(tmp_path / "grey.png")
    with pytest.raises(InputError, match="grey.png: expected an 8-bit RGB or RGBA id PNG, got 8-bit grayscale"):
        read_panoptic_png(tmp_path / "grey.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(InputError, match=r"text.png: cannot read the PNG \(not a PNG file\)"):
        read_panoptic_png(tmp_path / "text.png")


def test_both_png_decoders_give_the_same_ids(coco_sample, tmp_path):
    """The reader decodes with pyspng where installed, else Pillow: both paths, the same ids,
    on the real COCO sample's PNGs and on an RGBA PNG (alpha ignored)."""
    pngs = sorted((coco_sample / "panoptic_examples").glob("*.png"))
    rgba = np.concatenate([id2rgb(np.arange(12, dtype=np.int64).reshape(3, 4) * 70001), np.full((3, 4, 1), 9, np.uint8)], 2)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    for png in [*pngs, tmp_path / "rgba.png"]:
        data = png.read_bytes()
        with Image.open(png) as im:
            expected = rgb2id(np.asarray(im.convert("RGB")))
        for decode in (coco_panoptic.decode_rgba_pil, coco_panoptic.decode_rgba_pyspng):
            ids = decode(data).view("<u4")[..., 0] & 0xFFFFFF
            np.testing.assert_array_equal(ids, expected)
        np.testing.assert_array_equal(read_panoptic_png(png), expected)
        assert read_panoptic_png(png).dtype == np.int32


def test_unknown_category(sample_copy):
    json_file, pngs, doc = sample_copy
    seg = doc["annotations"][0]["segments_info"][2]
    seg["category_id"] = 91
    with pytest.raises(InputError, match=rf"gt.json: image 142238, segment {seg['id']}: category 91 does not exist"):
        _read_first(json_file, pngs, doc)


def test_duplicate_segment_and_void_id_in_segments_info(sample_copy):
    json_file, pngs, doc = sample_copy
    infos = doc["annotations"][0]["segments_info"]
    infos.append(dict(infos[0]))
    with pytest.raises(InputError, match=rf"segment {infos[0]['id']}: listed twice"):
        _read_first(json_file, pngs, doc)
    infos[-1]["id"] = 0
    with pytest.raises(InputError, match="segment id 0 is VOID"):
        _read_first(json_file, pngs, doc)


def test_missing_and_malformed_json(tmp_path):
    with pytest.raises(InputError, match=r"nope.json: file not found"):
        load_panoptic_json(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match=r"bad.json: not valid JSON"):
        load_panoptic_json(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text(json.dumps({"images": [], "categories": []}))
    with pytest.raises(InputError, match=r"list.json: missing the list 'annotations'"):
        load_panoptic_json(tmp_path / "list.json")


def test_annotation_for_an_unlisted_image(sample_copy):
    json_file, pngs, doc = sample_copy
    doc["images"].pop(0)
    json_file.write_text(json.dumps(doc))
    with pytest.raises(InputError, match=r"image 142238: has an annotation but is not listed in 'images'"):
        load_panoptic_json(json_file)


def test_id_png_writer_encodes_like_panopticapi(tmp_path):
    id_map = np.array([[0, 1], [256, 65536 + 2]])
    write_panoptic_png(tmp_path / "x.png", id_map)
    rgb = np.asarray(Image.open(tmp_path / "x.png"))
    np.testing.assert_array_equal(rgb, id2rgb(id_map))
    assert rgb[1, 1].tolist() == [2, 0, 1]
    np.testing.assert_array_equal(read_panoptic_png(tmp_path / "x.png"), id_map)
