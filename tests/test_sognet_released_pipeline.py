"""``test_pipeline: released``: the released test-time merge, pinned by hand-worked cases and against
the released code's steps written out here (``MaskRemoval``, ``SegTerm``, the void channel and
argmax of ``sognet.py`` / UPSNet at test, the crop and ``cv2.resize(..., INTER_NEAREST)`` of
``tools/test_net.py``, ``get_unified_pan_result``), never from panopticlab's code.

Boxes passed to panopticlab are continuous (the released inclusive box with ``x2 + 1, y2 + 1``).
"""

from __future__ import annotations

import math

import cv2  # the test extra installs it, as the released pipeline needs it
import numpy as np
import pytest
import torch

from panopticlab.config import Config, from_dict
from panopticlab.data.coco_panoptic import Categories
from panopticlab.data.synthetic import SHAPES_CATEGORIES
from panopticlab.models import build_model
from panopticlab.models.sognet.detector import mask_head_outputs
from panopticlab.models.sognet.released_test import nearest_to_image, paste_mask_logits_released, semantic_crop_support

pytestmark = pytest.mark.usefixtures("one_thread")

CATEGORIES = Categories(SHAPES_CATEGORIES)


def test_paste_hand_worked():
    # inclusive box [1.7, 2.2, 4.9, 3.0] -> truncated [1, 2, 4, 3]: 4 x 2 pixels; the 2 x 2 map's
    # columns resized 2 -> 4 with half-pixel centres: sources -0.25 (clamped), 0.25, 0.75, 1.25 (clamped)
    logits = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    pasted = paste_mask_logits_released(logits, torch.tensor([[1.7, 2.2, 5.9, 4.0]]), 5, 6)[0]
    expected = torch.zeros(5, 6)
    expected[2, 1:5] = torch.tensor([1.0, 1.25, 1.75, 2.0])
    expected[3, 1:5] = torch.tensor([3.0, 3.25, 3.75, 4.0])
    torch.testing.assert_close(pasted, expected)
    # a box beyond the canvas keeps the part inside: inclusive [4, -1, 7, 0] -> canvas columns 4, 5 of
    # row 0 take the resized map's second row, columns 0, 1
    pasted = paste_mask_logits_released(logits, torch.tensor([[4.0, -1.0, 8.0, 1.0]]), 5, 6)[0]
    assert pasted[0, 4:].tolist() == [3.0, 3.25] and pasted.count_nonzero() == 2


def test_semantic_crop_hand_worked():
    # inclusive box [1.7, 2.2, 4.5, 3.5]: columns int(1.7) = 1 .. round(4.5) = 4, rows 2 .. round(3.5) = 4
    support = semantic_crop_support(torch.tensor([[1.7, 2.2, 5.5, 4.5]]), 6, 7)[0]
    expected = torch.zeros(6, 7, dtype=torch.bool)
    expected[2:5, 1:5] = True
    assert torch.equal(support, expected)


def test_nearest_to_image_hand_worked():
    # scale 0.6: rows floor(0, 0.6, 1.2, 1.8, 2.4) = 0, 0, 1, 1, 2; columns up to floor(3.6) = 3
    maps = torch.arange(12).view(1, 3, 4)
    out = nearest_to_image(maps, (5, 7), 0.6)[0]
    assert out[:, 0].tolist() == [0, 0, 4, 4, 8]
    assert out[0].tolist() == [0, 0, 1, 1, 2, 3, 3]


def test_nearest_to_image_rounds_the_scale_as_test_net_does():
    # an image 310 pixels high tested at 800: scale 2.5806..., test_net.py's fx = 1 / im_info[2] is
    # float32, and row 31 of the image reads input row 79 (floor(31 * scale) in float64 would be 80)
    scale = 800 / 310
    maps = (torch.arange(800 * 4) % 251).view(800, 4).to(torch.uint8)
    fx = 1 / np.float32(scale)
    expected = cv2.resize(maps.numpy(), None, None, fx=fx, fy=fx, interpolation=cv2.INTER_NEAREST)
    assert expected.shape[0] == 310
    out = nearest_to_image(maps[None], (310, expected.shape[1]), scale)[0]
    assert torch.equal(out, torch.from_numpy(expected))
    assert out[31, 0] == maps[79, 0]


# -- the released merge, written out -----------------------------------------------------------


def _resize_bilinear(logits, h, w):
    """``cv2.resize(logits, (w, h))`` (INTER_LINEAR on float32: half-pixel centres, edges clamped)."""
    src_h, src_w = logits.shape

    def taps(dst, src):
        out = []
        for d in range(dst):
            s = (d + 0.5) * src / dst - 0.5
            s = max(s, 0.0)
            low = min(int(math.floor(s)), src - 1)
            high = min(low + 1, src - 1)
            out.append((low, high, s - low if low < src - 1 else 0.0))
        return out

    result = np.zeros((h, w))
    for y, (y0, y1, fy) in enumerate(taps(h, src_h)):
        for x, (x0, x1, fx) in enumerate(taps(w, src_w)):
            top = logits[y0, x0] * (1 - fx) + logits[y0, x1] * fx
            bottom = logits[y1, x0] * (1 - fx) + logits[y1, x1] * fx
            result[y, x] = top * (1 - fy) + bottom * fy
    return result


def released_upsnet_merge(semantic, inclusive_boxes, scores, classes, mask_logits, stuff, things, image_size, im_scale, stuff_area):
    """UPSNet at test (``enable_void``, no x2mask) from its inputs on the input canvas.

    Args: semantic [C, h, w] logits (contiguous ids); inclusive boxes [N, 4] (input pixels);
    classes [N] contiguous thing ids; mask_logits [N, 28, 28]; stuff / things: contiguous ids.
    Returns: per image pixel (category, instance number or 0), the released two channels."""
    _, height, width = semantic.shape
    # MaskRemoval
    order = np.argsort(scores, kind="stable")[::-1]
    occupied = {c: np.zeros((height, width), dtype=np.uint8) for c in things}
    energies, kept = [], []
    for i in order:
        b = inclusive_boxes[i].astype(np.int32)
        w, h = max(b[2] - b[0] + 1, 1), max(b[3] - b[1] + 1, 1)
        logit = _resize_bilinear(mask_logits[i], h, w)
        x0, x1, y0, y1 = max(b[0], 0), min(b[2] + 1, width), max(b[1], 0), min(b[3] + 1, height)
        crop = (logit > 0)[y0 - b[1] : y1 - b[1], x0 - b[0] : x1 - b[0]]
        taken = occupied[classes[i]][y0:y1, x0:x1]
        if crop.sum() == 0 or np.logical_and(taken >= 1, crop).sum() / crop.sum() > 0.3:
            continue
        occupied[classes[i]][y0:y1, x0:x1] += crop.astype(np.uint8)
        energy = np.zeros((height, width))
        energy[y0:y1, x0:x1] = logit[y0 - b[1] : y1 - b[1], x0 - b[0] : x1 - b[0]]
        energies.append(energy)
        kept.append(i)
    # SegTerm
    seg_inst = np.zeros((len(kept), height, width))
    for k, i in enumerate(kept):
        b = inclusive_boxes[i]
        y0, y1, x0, x1 = int(b[1]), int(np.round(b[3]) + 1), int(b[0]), int(np.round(b[2]) + 1)
        seg_inst[k, y0:y1, x0:x1] = semantic[classes[i], y0:y1, x0:x1]
    void = semantic[things].max(axis=0) - seg_inst.max(axis=0)
    logits = np.concatenate([semantic[stuff], seg_inst + np.array(energies), void[None]])
    pan = logits.argmax(axis=0)  # 0..S-1 stuff, S..S+N-1 instances, S+N void
    sem = semantic.argmax(axis=0)
    # tools/test_net.py: cv2.resize(..., fx=1 / im_scale, INTER_NEAREST)
    rows = np.minimum(np.floor(np.arange(image_size[0]) * im_scale).astype(int), height - 1)
    cols = np.minimum(np.floor(np.arange(image_size[1]) * im_scale).astype(int), width - 1)
    pan, sem = pan[rows][:, cols], sem[rows][:, cols]
    # get_unified_pan_result (in contiguous ids: stuff channel k -> stuff[k])
    num_stuff = len(stuff)
    pan_seg = np.where(pan < num_stuff, np.array(stuff)[np.minimum(pan, num_stuff - 1)], 255)
    pan_ins = np.zeros_like(pan)
    for idx, channel in enumerate(np.unique(pan[pan >= num_stuff])):
        region = pan == channel
        if channel == num_stuff + len(kept):  # void
            continue
        own = classes[kept[channel - num_stuff]]
        cls, cnt = np.unique(sem[region], return_counts=True)
        majority = cls[np.argmax(cnt)]
        if majority != own and np.max(cnt) / np.sum(cnt) >= 0.5 and majority in stuff:
            pan_seg[region] = majority
        else:
            pan_seg[region], pan_ins[region] = own, idx + 1
    for c in np.unique(pan_seg):
        if c in stuff and (pan_seg == c).sum() < stuff_area:
            pan_seg[pan_seg == c] = 255
    return pan_seg, pan_ins


def test_released_pipeline_equals_the_released_merge():
    """A random UPSNet with ``test_pipeline: released`` on a 50 x 70 image (input 40 x 56): given
    boxes (one thin, one beyond the image, one duplicate of another's class) through our merge equal
    the released steps above, pixel for pixel, after the nearest resize to the image."""
    torch.manual_seed(0)
    sognet = {
        "panoptic": "upsnet", "backbone": "timm:test_resnet", "fpn_channels": 16, "box_head_channels": 16,
        "mask_head_channels": 8, "semantic_num_layers": 1, "semantic_channels": 8, "min_size": 40, "max_size": 100,
        "stuff_area": 30, "box_convention": "detectron", "test_pipeline": "released",
    }  # fmt: skip
    model = build_model(from_dict(Config, {"model": {"arch": "sognet", "categories": "shapes", "sognet": sognet}})).eval()
    with torch.no_grad():  # mask logits of both signs, semantic logits with every class winning somewhere
        for parameter in model.detector.roi_heads.mask_predictor.parameters():
            parameter.normal_(0, 1.0)
        model.semantic_head.classifier.weight.normal_(0, 0.3)
        model.semantic_head.classifier.bias[model.labels.things] += 2.0  # thing classes win some majorities
    image = torch.rand(3, 50, 70) * 255
    scale = model.sizing.scale(50, 70)
    assert model.sizing.input_size(50, 70) == (40, 56)
    inclusive = np.array([[2.3, 3.7, 30.2, 25.9], [10.0, 8.0, 11.4, 33.0], [30.5, 20.0, 60.0, 45.0],
                          [4.0, 5.0, 29.0, 24.0], [20.0, 1.0, 50.2, 30.6]])  # fmt: skip
    labels = torch.tensor([0, 1, 2, 0, 3])  # thing indices
    scores = torch.tensor([0.9, 0.8, 0.85, 0.7, 0.75])
    input_boxes = torch.from_numpy(inclusive + np.array([0, 0, 1.0, 1.0])).float()
    with torch.no_grad():
        images, features, semantic = model._image_features(image, released=True)
        instances = model._instances(images, features, (50, 70), input_boxes, labels, released=True)
        instances.scores = scores
        instance, category, kept = model._merge(instances, semantic, features, images.image_sizes[0], image, model.inference, drop_duplicates=True)
        mask_logits, _ = mask_head_outputs(model.detector, features, [input_boxes], [labels + 1], images.image_sizes)
        stride4, _ = model.semantic_head([features[k] for k in ("0", "1", "2", "3")])
    # the released semantic canvas: the stride-4 logits upsampled x4 (bilinear), cropped to the input
    released_semantic = torch.nn.functional.interpolate(stride4, scale_factor=4, mode="bilinear", align_corners=False)[0, :, :40, :56]
    torch.testing.assert_close(semantic, released_semantic, atol=1e-5, rtol=1e-5)

    stuff, things = model.labels.stuff, model.labels.things
    contiguous = model.labels.thing_contiguous(labels).numpy()
    pan_seg, pan_ins = released_upsnet_merge(
        released_semantic.numpy().astype(np.float64), inclusive, scores.numpy(), contiguous,
        mask_logits[0].numpy().astype(np.float64), list(stuff), list(things), (50, 70), scale, 30,
    )  # fmt: skip
    ours_category = torch.where(instance >= 0, model.labels.thing_contiguous(labels)[kept][instance.clamp(min=0)], category)
    ours_category = torch.where(ours_category < 0, 255, ours_category).numpy()
    assert len(np.unique(pan_ins)) > 2 and (pan_seg == 255).any() and (pan_seg < 255).any()
    np.testing.assert_array_equal(ours_category, pan_seg)
    # the same instance regions (numbered differently)
    ours_instance = instance.numpy()
    pairs = {(a, b) for a, b in zip(ours_instance[pan_ins > 0].tolist(), pan_ins[pan_ins > 0].tolist())}
    assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})
    assert ((ours_instance >= 0) == (pan_ins > 0)).all()



def test_released_resize_rule():
    """``prep_im_for_blob``: scale = 800 / short side, replaced by 1333 / long side only when the long
    side would round above 1333; torchvision's rule takes the smaller of the two factors."""
    from panopticlab.models.sognet.settings import InputSizing

    released, torchvision_rule = InputSizing(800, 1333, released_resize=True), InputSizing(800, 1333)
    # 600 x 1000: 1000 * 4/3 = 1333.33 rounds to 1333, so the released scale stays 4/3 (torchvision: 1.333)
    assert released.scale(600, 1000) == 800 / 600 and torchvision_rule.scale(600, 1000) == 1333 / 1000
    assert released.input_size(600, 1000) == torchvision_rule.input_size(600, 1000) == (800, 1333)
    # 480 x 801: 801 * 5/3 = 1335 > 1333, both limit the long side
    assert released.scale(480, 801) == torchvision_rule.scale(480, 801) == 1333 / 801
