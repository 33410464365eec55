"""Cityscapes: the label table, `prepare cityscapes` against cityscapesscripts' createPanopticImgs
on a tiny tree in the real layout, loading it, resuming, clear errors, and the instance AP."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cityscapesscripts.helpers import labels as cs_labels  # the test extra: parity is checked, never skipped
from PIL import Image

from panopticlab.config import Config, DataConfig, SplitConfig
from panopticlab.config import TestConfig as EvalConfig
from panopticlab.data.build import build_test_loader
from panopticlab.data.categories import load_categories
from panopticlab.data.cityscapes import INSTANCE_LABELS, LABELS, prepare_cityscapes
from panopticlab.data.dataset import CocoPanopticDataset
from panopticlab.engine.inference import evaluate
from panopticlab.errors import InputError
from panopticlab.evaluation.cityscapes_instance import CityscapesInstanceEvaluator, cityscapes_instance_ap
from panopticlab.structures import PanopticResult


H, W = 64, 128
#: split -> [(city, sequence, frame)]
IMAGES = {
    "val": [("aachen", 0, 19), ("aachen", 1, 19), ("bochum", 7, 42)],
    "train": [("cologne", 3, 5)],
}


def instance_ids(k: int) -> np.ndarray:
    """A 64x128 instanceIds map with stuff, objects, a car group, ignored classes and a tiny person."""
    a = np.zeros((H, W), dtype=np.uint16)
    a[0:16] = 23  # sky
    a[16:40, :64] = 11  # building
    a[16:40, 64:] = 21  # vegetation
    a[40:56] = 7  # road
    a[56:] = 1  # ego vehicle: ignoreInEval -> VOID
    a[0:4, 0:4] = 0  # unlabeled
    a[10:26, 85:87] = 18  # polegroup: ignoreInEval
    dx = 3 * k
    a[30:46, 10 + dx : 30 + dx] = 26000  # car #0, 320 px
    a[32:48, 40 + dx : 60 + dx] = 26001  # car #1, 320 px
    a[20:40, 70:80] = 24000  # person, 200 px
    a[40:51, 90:120] = 26  # a group of cars: crowd
    a[44:52, 62:76] = 29000  # caravan: a thing class with ignoreInEval -> VOID
    a[50:56, 80:86] = 24001  # a 36 px person: below the instance benchmark's 100 px
    return a


def label_ids(ids: np.ndarray) -> np.ndarray:
    return np.where(ids < 1000, ids, ids // 1000).astype(np.uint8)


def stem(city: str, seq: int, frame: int) -> str:
    return f"{city}_{seq:06d}_{frame:06d}"


def write_tree(root: Path) -> Path:
    """ROOT/leftImg8bit/<split>/<city>/*_leftImg8bit.png and ROOT/gtFine/<split>/<city>/*_gtFine_*.png."""
    rng = np.random.default_rng(0)
    k = 0
    for split, images in IMAGES.items():
        for city, seq, frame in images:
            name = stem(city, seq, frame)
            gt = root / "gtFine" / split / city
            img = root / "leftImg8bit" / split / city
            gt.mkdir(parents=True, exist_ok=True)
            img.mkdir(parents=True, exist_ok=True)
            ids = instance_ids(k)
            Image.fromarray(ids).save(gt / f"{name}_gtFine_instanceIds.png")
            Image.fromarray(label_ids(ids)).save(gt / f"{name}_gtFine_labelIds.png")
            Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(img / f"{name}_leftImg8bit.png")
            k += 1
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A pristine tree; tests that write into one copy it first."""
    return write_tree(tmp_path_factory.mktemp("cityscapes") / "cityscapes")


@pytest.fixture(scope="module")
def prepared(tree, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("prepared") / "cityscapes"
    shutil.copytree(tree, root)
    prepare_cityscapes(root, workers=1)
    return root


def read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def test_label_table_equals_cityscapesscripts():
    theirs = [
        (l.name, l.id, l.trainId, l.category, l.categoryId, l.hasInstances, l.ignoreInEval, tuple(l.color))
        for l in cs_labels.labels
    ]
    ours = [
        (l.name, l.id, l.train_id, l.category, l.category_id, l.has_instances, l.ignore_in_eval, l.color) for l in LABELS
    ]
    assert ours == theirs
    assert [l.name for l in INSTANCE_LABELS] == ["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]


@pytest.mark.parametrize("use_train_id", [False, True])
def test_conversion_equals_create_panoptic_imgs(tree, tmp_path, capsys, use_train_id):
    from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic

    ours = tmp_path / "ours"
    shutil.copytree(tree, ours)
    reference = tmp_path / "reference"
    reference.mkdir()
    convert2panoptic(str(tree / "gtFine"), str(reference), use_train_id, ["val", "train"])
    reports = prepare_cityscapes(ours, ["val", "train"], use_train_id=use_train_id, workers=1)
    assert [r["images"] for r in reports] == [3, 1]

    suffix = "_trainId" if use_train_id else ""
    for split in ("val", "train"):
        base = f"cityscapes_panoptic_{split}{suffix}"
        expected = json.loads((reference / f"{base}.json").read_text())
        got = json.loads((ours / "gtFine" / f"{base}.json").read_text())
        assert got == expected
        pngs = sorted(p.name for p in (reference / base).iterdir())
        assert pngs == sorted(p.name for p in (ours / "gtFine" / base).iterdir())
        for name in pngs:
            np.testing.assert_array_equal(read_rgb(ours / "gtFine" / base / name), read_rgb(reference / base / name))
    # the conversion's rules, by hand on the first image
    first = json.loads((ours / "gtFine" / f"cityscapes_panoptic_val{suffix}.json").read_text())
    assert first["images"][0] == {
        "id": "aachen_000000_000019",
        "width": W,
        "height": H,
        "file_name": "aachen_000000_000019_gtFine_leftImg8bit.png",  # sic: createPanopticImgs' name
    }
    segments = {s["id"]: s for s in first["annotations"][0]["segments_info"]}
    assert sorted(segments) == [7, 11, 21, 23, 26, 24000, 24001, 26000, 26001]  # no 0, 1, 18, 29000: VOID
    assert segments[26]["iscrowd"] == 1 and segments[26000]["iscrowd"] == 0 and segments[7]["iscrowd"] == 0
    assert segments[26000]["bbox"] == [10, 30, 20, 16] and segments[26000]["area"] == 320
    assert segments[26000]["category_id"] == (13 if use_train_id else 26)


def test_train_id_pngs_by_hand(prepared):
    path = prepared / "gtFine" / "val" / "aachen" / "aachen_000000_000019_gtFine_labelTrainIds.png"
    train_ids = np.asarray(Image.open(path))
    assert train_ids.dtype == np.uint8
    by_pixel = {(2, 50): 10, (20, 10): 2, (20, 100): 8, (50, 20): 0, (35, 15): 13, (30, 75): 11, (45, 100): 13}
    for (y, x), expected in by_pixel.items():
        assert train_ids[y, x] == expected, (y, x)
    for y, x in [(60, 5), (1, 1), (15, 85), (48, 70)]:  # ego vehicle, unlabeled, polegroup, caravan
        assert train_ids[y, x] == 255


def test_prepared_tree_loads_with_images_from_city_folders(prepared):
    gt = prepared / "gtFine"
    dataset = CocoPanopticDataset(
        prepared / "leftImg8bit" / "val", gt / "cityscapes_panoptic_val.json", gt / "cityscapes_panoptic_val"
    )
    assert len(dataset) == 3
    assert [c["id"] for c in dataset.categories.to_list()] == load_categories("cityscapes").ids
    item = dataset[2]
    assert item["image_id"] == "bochum_000007_000042"
    assert tuple(item["image"].shape) == (3, H, W)
    expected_image = np.asarray(
        Image.open(prepared / "leftImg8bit" / "val" / "bochum" / "bochum_000007_000042_leftImg8bit.png")
    )
    np.testing.assert_array_equal(item["image"].permute(1, 2, 0).numpy(), expected_image)
    crowd = [s for s in item["panoptic"].segments if s.iscrowd]
    assert [(s.id, s.category_id) for s in crowd] == [(26, 26)]
    assert item["panoptic"].id_map[60, 5] == 0  # ego vehicle is VOID


def outputs(root: Path) -> dict[str, object]:
    gt = root / "gtFine"
    files = sorted(gt.glob("cityscapes_panoptic_*/*.png")) + sorted(gt.glob("*/*/*_labelTrainIds.png"))
    return {
        **{str(p.relative_to(root)): json.loads(p.read_text()) for p in sorted(gt.glob("*.json"))},
        **{str(p.relative_to(root)): read_rgb(p).tolist() for p in files},
    }


def test_prepare_resumes_after_an_interruption(tree, tmp_path, interrupt_after):
    clean = tmp_path / "clean"
    shutil.copytree(tree, clean)
    prepare_cityscapes(clean, ["val"], workers=1)

    root = tmp_path / "interrupted"
    shutil.copytree(tree, root)
    with pytest.raises(KeyboardInterrupt):
        prepare_cityscapes(root, ["val"], workers=1, chunk_size=1, progress=interrupt_after(1))
    gt = root / "gtFine"
    assert not (gt / "cityscapes_panoptic_val.json").exists()  # the JSON comes last
    first_png = gt / "cityscapes_panoptic_val" / "aachen_000000_000019_gtFine_panoptic.png"
    written = first_png.stat().st_mtime_ns
    stale = gt / "cityscapes_panoptic_val" / ".aachen_000001_000019_gtFine_panoptic.png.x1y2.partial"
    stale.write_bytes(b"\x89PNG half")  # what a killed worker leaves

    [report] = prepare_cityscapes(root, ["val"], workers=1, chunk_size=1)
    assert not report["skipped"]
    assert outputs(root) == outputs(clean)
    assert first_png.stat().st_mtime_ns == written  # finished work is kept, not redone
    assert not stale.exists() and not (gt / ".cityscapes_panoptic_val.prepare").exists()
    [again] = prepare_cityscapes(root, ["val"], workers=1)
    assert again["skipped"]


def test_truncated_png_and_unknown_label_are_input_errors_naming_the_file(tree, tmp_path):
    root = tmp_path / "bad"
    shutil.copytree(tree, root)
    bad = root / "gtFine" / "val" / "aachen" / "aachen_000001_000019_gtFine_instanceIds.png"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="aachen_000001_000019_gtFine_instanceIds.png"):
        prepare_cityscapes(root, ["val"], workers=1)

    ids = instance_ids(0)
    ids[0, 0] = 45  # no such label
    Image.fromarray(ids).save(bad)
    with pytest.raises(InputError, match=r"aachen_000001_000019_gtFine_instanceIds.png.*value 45"):
        prepare_cityscapes(root, ["val"], workers=1)
    with pytest.raises(InputError, match="no <city>"):
        prepare_cityscapes(root, ["test"], workers=1)


def gt_detections(drop: int | None = None) -> dict[str, list]:
    """Every object of the val images as a detection with score 1 (optionally without object ``drop``)."""
    predictions = {}
    for k, (city, seq, frame) in enumerate(IMAGES["val"]):
        ids = instance_ids(k)
        predictions[stem(city, seq, frame)] = [
            (ids == v, int(v) // 1000, 1.0) for v in np.unique(ids) if v >= 1000 and v // 1000 != 29 and v != drop
        ]
    return predictions


def test_instance_ap_of_perfect_predictions_is_one(tree):
    result = cityscapes_instance_ap(tree / "gtFine" / "val", gt_detections())
    assert result["AP"] == 1.0 and result["AP50"] == 1.0 and result["num_images"] == 3
    assert result["per_class"]["car"] == {"AP": 1.0, "AP50": 1.0}
    assert np.isnan(result["per_class"]["truck"]["AP"])  # no ground truth


def test_instance_ap_by_hand_when_half_the_cars_are_missed(tree):
    # car: 3 of 6 found, all with score 1 -> precision 1 up to recall 0.5: AP 0.5; person: 1.0
    result = cityscapes_instance_ap(tree / "gtFine" / "val", gt_detections(drop=26001))
    assert result["per_class"]["car"]["AP"] == pytest.approx(0.5)
    assert result["AP"] == pytest.approx(0.75) and result["AP50"] == pytest.approx(0.75)


def test_instance_ap_rejects_a_label_that_has_no_instances(tree):
    with pytest.raises(InputError, match="label id 7"):
        cityscapes_instance_ap(tree / "gtFine" / "val", {"aachen_000000_000019": [(np.ones((H, W), bool), 7, 1.0)]})


def _with_scores(result: PanopticResult) -> PanopticResult:
    return PanopticResult(result.id_map, [dataclasses.replace(s, score=1.0) for s in result.segments])


def test_collector_scores_panoptic_results(prepared):
    gt = prepared / "gtFine"
    dataset = CocoPanopticDataset(
        prepared / "leftImg8bit" / "val", gt / "cityscapes_panoptic_val.json", gt / "cityscapes_panoptic_val"
    )
    collector = CityscapesInstanceEvaluator(gt / "val")
    items = list(dataset)
    collector.process(items, [_with_scores(item["panoptic"]) for item in items])
    assert collector.evaluate()["cityscapes_instance"]["AP"] == 1.0


class _GroundTruthModel:
    """Answers each image with its ground truth (loader order), to check the evaluation wiring."""

    def __init__(self, dataset: CocoPanopticDataset):
        self.categories = load_categories("cityscapes")
        self.answers = iter([_with_scores(item["panoptic"]) for item in dataset])

    def predict(self, images):
        return [next(self.answers) for _ in images]

    def evaluators(self):
        return []


def test_evaluate_reports_pq_miou_and_cityscapes_ap(prepared):
    split = SplitConfig(
        image_folder="leftImg8bit/val",
        panoptic_json="gtFine/cityscapes_panoptic_val.json",
        panoptic_folder="gtFine/cityscapes_panoptic_val",
    )
    config = Config(
        data=DataConfig(root=str(prepared), test=split, num_workers=0),
        test=EvalConfig(compute_ap=False, cityscapes_instance_gt="gtFine/val"),
    )
    from panopticlab.data.build import build_dataset

    dataset = build_dataset(config, "test")
    results = evaluate(_GroundTruthModel(dataset), build_test_loader(config, dataset), config)
    summary = results["summary"]
    assert summary["PQ"] == 100.0 and summary["mIoU"] == 100.0
    assert summary["AP"] == 100.0 and summary["AP50"] == 100.0
    assert results["cityscapes_instance"]["num_images"] == 3


def test_a_missing_cityscapes_extra_is_named_when_the_evaluator_is_made(prepared, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "cityscapesscripts.evaluation", None)  # as if not installed
    with pytest.raises(InputError, match=r"pip install 'panopticlab\[cityscapes\]'"):
        CityscapesInstanceEvaluator(prepared / "gtFine" / "val")
