import json
import shutil

import numpy as np
import pytest
import torch

from panopticlab.data.dataset import CocoPanopticDataset, collate_panoptic
from panopticlab.errors import InputError


@pytest.fixture
def sample_dataset(coco_sample):
    return CocoPanopticDataset(
        coco_sample / "input_images",
        coco_sample / "panoptic_examples.json",
        coco_sample / "panoptic_examples",
        instances_json=coco_sample / "panoptic_coco_detection_format.json",
    )


def test_items_give_image_panoptic_target_and_instances(sample_dataset):
    assert len(sample_dataset) == 2
    item = sample_dataset[0]
    assert item["image_id"] == 142238
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 427, 640)
    panoptic = item["panoptic"]
    assert panoptic.id_map.shape == (427, 640) and len(panoptic.segments) == 18
    person = next(s for s in panoptic.segments if s.category_id == 1)
    assert item["segment_labels"][person.id] == 0  # person is contiguous id 0

    inst = item["instances"]
    n = len(inst["labels"])
    assert n == 18  # the detection-format file lists every segment, stuff included
    assert inst["masks"].shape == (n, 427, 640) and inst["masks"].dtype == torch.bool
    assert inst["boxes"].shape == (n, 4) and inst["iscrowd"].sum() == 1
    assert (inst["depth"] == -1).all() and (inst["panoptic_segment_ids"] == 0).all()
    # Each decoded mask is exactly one panoptic segment, and its box is that segment's bbox (x1 = x + w).
    for k in range(n):
        mask = inst["masks"][k].numpy()
        seg_id = int(np.unique(panoptic.id_map[mask])[0])
        x, y, w, h = panoptic.segment(seg_id).bbox
        assert inst["boxes"][k].tolist() == [x, y, x + w, y + h]


def test_collate_keeps_items_as_a_list(sample_dataset):
    loader = torch.utils.data.DataLoader(sample_dataset, batch_size=2, collate_fn=collate_panoptic)
    batch = next(iter(loader))
    assert [b["image_id"] for b in batch] == [142238, 439180]


def test_transforms_are_applied(coco_sample):
    dataset = CocoPanopticDataset(
        coco_sample / "input_images",
        coco_sample / "panoptic_examples.json",
        coco_sample / "panoptic_examples",
        transforms=lambda item: {**item, "flipped": True},
    )
    assert dataset[1]["flipped"] is True


def test_image_of_the_wrong_size(coco_sample, tmp_path):
    shutil.copytree(coco_sample / "input_images", tmp_path / "images")
    from PIL import Image

    Image.new("RGB", (10, 10)).save(tmp_path / "images" / "000000142238.jpg")
    dataset = CocoPanopticDataset(tmp_path / "images", coco_sample / "panoptic_examples.json", coco_sample / "panoptic_examples")
    with pytest.raises(InputError, match=r"000000142238.jpg: image is 10x10 but its panoptic PNG is 640x427"):
        dataset[0]


def test_missing_image_and_bad_instances_file(coco_sample, tmp_path):
    dataset = CocoPanopticDataset(tmp_path, coco_sample / "panoptic_examples.json", coco_sample / "panoptic_examples")
    with pytest.raises(InputError, match=r"000000142238.jpg: file not found"):
        dataset[0]
    bad = tmp_path / "instances.json"
    bad.write_text(json.dumps({"annotations": [{"image_id": 1, "category_id": 999, "segmentation": []}]}))
    with pytest.raises(InputError, match=r"instances.json: annotation 0 has unknown category 999"):
        CocoPanopticDataset(tmp_path, coco_sample / "panoptic_examples.json", coco_sample / "panoptic_examples", bad)


def test_split_folder_needs_panoptic_json(tmp_path):
    with pytest.raises(InputError, match="not a dataset split"):
        CocoPanopticDataset.from_split_folder(tmp_path)


def test_a_model_without_instances_gets_none_read(tmp_path):
    """build_dataset(instances=False), what the trainer asks for a model whose uses_instances is
    False: a split with an instances.json yields items without them (nothing decoded)."""
    from panopticlab.config import Config, from_dict
    from panopticlab.data.build import build_dataset
    from panopticlab.data.synthetic import ShapesConfig, generate_split

    generate_split(tmp_path, 2, ShapesConfig(height=48, width=48), seed=0, split="train", workers=1)
    config = from_dict(Config, {"data": {"root": str(tmp_path), "train": {"folder": "train"}}})
    assert "instances" in build_dataset(config, "train")[0]
    without = build_dataset(config, "train", instances=False)
    assert without.instances_json is None and "instances" not in without[0]
