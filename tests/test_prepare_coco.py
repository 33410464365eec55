"""`prepare coco` on COCO trees in the real layout: the real panopticapi sample, and a hand-built
image of occluded and crowd instances."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from panopticlab.cli import main
from panopticlab.data.coco_panoptic import read_panoptic_png, write_panoptic_png
from panopticlab.data.dataset import CocoPanopticDataset
from panopticlab.data.prepare_coco import prepare_coco
from panopticlab.errors import InputError


def rle(mask: np.ndarray) -> dict:
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


def sample_tree(sample: Path, root: Path) -> Path:
    """The real sample as ROOT/{val2017, annotations/panoptic_val2017(.json), annotations/instances_val2017.json};
    the instances are the sample's thing segments in detection format (real RLEs, crowd included)."""
    shutil.copytree(sample / "input_images", root / "val2017")
    shutil.copytree(sample / "panoptic_examples", root / "annotations" / "panoptic_val2017")
    shutil.copy(sample / "panoptic_examples.json", root / "annotations" / "panoptic_val2017.json")
    detection = json.loads((sample / "panoptic_coco_detection_format.json").read_text())
    things = {c["id"] for c in json.loads((sample / "panoptic_examples.json").read_text())["categories"] if c["isthing"]}
    detection["annotations"] = [a for a in detection["annotations"] if a["category_id"] in things]
    detection["categories"] = [c for c in detection["categories"] if c["id"] in things]
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(detection))
    return root


def folder_digest(folder: Path) -> dict[str, str]:
    files = [p for p in sorted(folder.rglob("*")) if p.is_file()]
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def outputs(root: Path) -> dict[str, object]:
    out = root / "panopticlab"
    result: dict[str, object] = {p.name: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}
    for p in sorted(out.glob("semantic_*/*.png")):
        result[str(p.relative_to(out))] = np.asarray(Image.open(p)).tolist()
    return result


def test_real_sample_semantic_pngs_and_join(coco_sample, tmp_path):
    root = sample_tree(coco_sample, tmp_path / "coco")
    originals = folder_digest(root)
    [report] = prepare_coco(root, workers=1)
    assert report["split"] == "val2017" and report["images"] == 2 and not report["skipped"]
    assert {k: v for k, v in folder_digest(root).items() if not k.startswith("panopticlab/")} == originals

    semantic = np.asarray(Image.open(root / "panopticlab" / "semantic_val2017" / "000000142238.png"))
    id_map = read_panoptic_png(coco_sample / "panoptic_examples" / "000000142238.png")
    assert semantic.dtype == np.uint8 and semantic.shape == (427, 640)
    assert (semantic == 255).sum() == 2712 == (id_map == 0).sum()  # its VOID pixels
    # COCO thing ids below 37 skip 12, 26, 29 and 30: sports ball (37) is the 33rd category -> 32
    assert np.array_equal(semantic == 32, id_map == 16757838)
    persons = np.isin(id_map, [3937500, 4260062, 2035955, 4325578, 2628072, 2822390, 5186532, 4917453,
                               3476419, 3997935, 2098642, 5314498, 4721614, 3153362])  # crowd 3153362 included
    assert np.array_equal(semantic == 0, persons)

    joined = json.loads((root / "panopticlab" / "instances_val2017.json").read_text())
    maps = {142238: id_map, 439180: read_panoptic_png(coco_sample / "panoptic_examples" / "000000439180.png")}
    for ann in joined["annotations"]:  # these masks are the visible segments: each lies on exactly one id
        mask = mask_utils.decode({**ann["segmentation"], "counts": ann["segmentation"]["counts"].encode()}).astype(bool)
        [expected] = np.unique(maps[ann["image_id"]][mask])
        assert ann["panoptic_segment_id"] == expected
    assert report["instances"] == report["matched"] == 43 == len(joined["annotations"])

    dataset = CocoPanopticDataset(
        root / "val2017",
        root / "annotations" / "panoptic_val2017.json",
        root / "annotations" / "panoptic_val2017",
        instances_json=root / "panopticlab" / "instances_val2017.json",
    )
    item = dataset[1]
    by_id = {s.id: s for s in item["panoptic"].segments}
    ids = item["instances"]["panoptic_segment_ids"].tolist()
    assert all(i in by_id and by_id[i].isthing for i in ids)
    assert item["instances"]["iscrowd"].tolist() == [by_id[i].iscrowd for i in ids]


# A hand-built 40x60 image: person A (back) mostly hidden by person B; car C entirely hidden by B;
# a person crowd D and a non-crowd person F with D's exact mask listed before it; sky elsewhere.
H, W = 40, 60
CATEGORIES = [
    {"id": 1, "name": "person", "isthing": 1, "supercategory": "person", "color": [220, 20, 60]},
    {"id": 3, "name": "car", "isthing": 1, "supercategory": "vehicle", "color": [0, 0, 142]},
    {"id": 187, "name": "sky-other-merged", "isthing": 0, "supercategory": "sky", "color": [70, 130, 180]},
]


def box(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


A, B, C, D = box(10, 30, 10, 30), box(10, 30, 14, 30), box(15, 21, 20, 26), box(32, 39, 40, 58)


def overlap_tree(root: Path) -> Path:
    id_map = np.full((H, W), 500, dtype=np.int32)  # sky
    id_map[0:2] = 0  # VOID
    id_map[A] = 101  # A's visible part: columns 10..13
    id_map[B] = 102
    id_map[D] = 103  # the crowd
    segments = [
        {"id": 101, "category_id": 1, "iscrowd": 0},
        {"id": 102, "category_id": 1, "iscrowd": 0},
        {"id": 103, "category_id": 1, "iscrowd": 1},
        {"id": 500, "category_id": 187, "iscrowd": 0},
    ]
    for s in segments:
        ys, xs = np.nonzero(id_map == s["id"])
        s["area"] = len(ys)
        s["bbox"] = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
    annotations = root / "annotations"
    write_panoptic_png(annotations / "panoptic_val2017" / "000001.png", id_map)
    image = {"id": 1, "file_name": "000001.jpg", "height": H, "width": W}
    panoptic = {
        "images": [image],
        "annotations": [{"image_id": 1, "file_name": "000001.png", "segments_info": segments}],
        "categories": CATEGORIES,
    }
    (annotations / "panoptic_val2017.json").write_text(json.dumps(panoptic))
    instances = [("A", A, 1, 0), ("B", B, 1, 0), ("C", C, 3, 0), ("F", D, 1, 0), ("D", D, 1, 1)]
    detection = {
        "images": [image],
        "annotations": [
            {"id": k + 1, "name": name, "image_id": 1, "category_id": cat, "iscrowd": crowd, "segmentation": rle(m),
             "area": int(m.sum()), "bbox": [0, 0, 1, 1]}
            for k, (name, m, cat, crowd) in enumerate(instances)
        ],
        "categories": CATEGORIES[:2],
    }
    (annotations / "instances_val2017.json").write_text(json.dumps(detection))
    (root / "val2017").mkdir(parents=True)
    Image.fromarray(np.zeros((H, W, 3), dtype=np.uint8)).save(root / "val2017" / "000001.jpg")
    return root


def test_occluded_instance_gets_its_visible_part_and_crowd_matches_crowd(tmp_path):
    root = overlap_tree(tmp_path / "coco")
    [report] = prepare_coco(root, ["val2017"], workers=1)
    joined = json.loads((root / "panopticlab" / "instances_val2017.json").read_text())
    matched = {a["name"]: a["panoptic_segment_id"] for a in joined["annotations"]}
    # A overlaps B's segment (IoU 0.8) more than its own (0.2), but B's segment is B's (IoU 1)
    assert matched == {"A": 101, "B": 102, "C": 0, "F": 0, "D": 103}
    assert report["matched"] == 3 and report["instances"] == 5

    semantic = np.asarray(Image.open(root / "panopticlab" / "semantic_val2017" / "000001.png"))
    assert semantic[0, 0] == 255 and semantic[20, 5] == 2  # VOID, sky (contiguous: person 0, car 1, sky 2)
    assert semantic[20, 11] == 0 and semantic[20, 20] == 0 and semantic[35, 50] == 0  # A, B, crowd
    assert set(np.unique(semantic).tolist()) == {0, 2, 255}

    item = CocoPanopticDataset(
        root / "val2017",
        root / "annotations" / "panoptic_val2017.json",
        root / "annotations" / "panoptic_val2017",
        instances_json=root / "panopticlab" / "instances_val2017.json",
    )[0]
    instances = item["instances"]
    assert instances["panoptic_segment_ids"].tolist() == [101, 102, 0, 0, 103]
    assert instances["masks"][0].sum() == 400  # amodal: A's whole box, not its 80 visible pixels
    assert instances["iscrowd"].tolist() == [False, False, False, False, True]


def test_prepare_resumes_after_an_interruption(coco_sample, tmp_path, interrupt_after):
    clean = sample_tree(coco_sample, tmp_path / "clean")
    prepare_coco(clean, workers=1)

    root = sample_tree(coco_sample, tmp_path / "interrupted")
    with pytest.raises(KeyboardInterrupt):
        prepare_coco(root, workers=1, chunk_size=1, progress=interrupt_after(1))
    out = root / "panopticlab"
    assert not (out / "instances_val2017.json").exists()  # the JSON comes last
    first = out / "semantic_val2017" / "000000142238.png"
    written = first.stat().st_mtime_ns
    (out / "semantic_val2017" / ".000000439180.png.k3j9.partial").write_bytes(b"\x89PNG torn")  # a killed writer's

    [report] = prepare_coco(root, workers=1, chunk_size=1)
    assert not report["skipped"]
    assert outputs(root) == outputs(clean)
    assert first.stat().st_mtime_ns == written  # finished work is kept, not redone
    assert sorted(p.name for p in out.iterdir()) == ["instances_val2017.json", "semantic_val2017"]
    assert sorted(p.name for p in (out / "semantic_val2017").iterdir()) == ["000000142238.png", "000000439180.png"]
    [again] = prepare_coco(root, workers=1)
    assert again["skipped"]


def test_truncated_png_and_mislabelled_json_are_input_errors_naming_the_file(coco_sample, tmp_path):
    root = sample_tree(coco_sample, tmp_path / "coco")
    png = root / "annotations" / "panoptic_val2017" / "000000439180.png"
    good = png.read_bytes()
    png.write_bytes(good[: len(good) // 2])
    with pytest.raises(InputError, match="000000439180.png"):
        prepare_coco(root, workers=1)
    png.write_bytes(good)

    instances_json = root / "annotations" / "instances_val2017.json"
    document = json.loads(instances_json.read_text())
    document["annotations"][3]["category_id"] = 187  # a stuff category
    instances_json.write_text(json.dumps(document))
    with pytest.raises(InputError, match=r"instances_val2017.json.*category 187.*not a thing"):
        prepare_coco(root, workers=1)

    panoptic_json = root / "annotations" / "panoptic_val2017.json"
    document = json.loads(panoptic_json.read_text())
    document["annotations"][0]["segments_info"][0]["category_id"] = 999
    panoptic_json.write_text(json.dumps(document))
    with pytest.raises(InputError, match=r"panoptic_val2017.json.*category 999"):
        prepare_coco(root, workers=1)


def test_cli_prepare(tmp_path, capsys):
    root = overlap_tree(tmp_path / "coco")
    assert main(["prepare", "coco", str(root), "--workers", "1"]) == 0
    assert "3 of 5 instances matched" in capsys.readouterr().out
    assert main(["prepare", "coco", str(root)]) == 0
    assert "already prepared" in capsys.readouterr().out
    assert main(["prepare", "coco", str(tmp_path / "missing")]) == 2
    assert "panoptic_train2017.json" in capsys.readouterr().err
    assert main(["prepare", "coco", str(root), "--use-train-id"]) == 2
