"""Detectron's box conventions (``box_convention: detectron``) against the released code's maths.

The expected numbers come from hand-worked cases and from the released functions written out here
in numpy / plain Python as the released code states them (``rpn/generate_anchors.py``,
``bbox/bbox_transform.py``, ``nms/py_cpu_nms.py`` and the +1 IoU of ``nms_kernel.cu``,
``operators/functions/pyramid_proposal.py``, ``operators/modules/fpn_roi_align.py``, the RoIAlign
and deformable im2col CUDA kernels, ``operators/modules/mask_roi.py``), never from panopticlab's
code. Released boxes are inclusive (``x2 - x1 + 1`` pixels wide); ours are their continuous form
(``x2 + 1``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import DeformConv2d, box_iou, nms

from panopticlab.config.sognet import SOGNetConfig
from panopticlab.models.sognet.detector import build_detector, detect
from panopticlab.models.sognet.detectron_boxes import (
    DetectronAnchorGenerator,
    DetectronRoIAlign,
    clip_boxes_legacy,
    detectron_cell_anchors,
    keep_top_detections,
    released_proposals,
    released_roi_levels,
)

pytestmark = pytest.mark.usefixtures("one_thread")


# -- the released functions, written out ---------------------------------------------------------


def released_generate_anchors(stride, sizes, ratios):
    """``generate_anchors(stride, sizes, ratios)``: inclusive boxes, float64."""
    scales = np.array(sizes, dtype=np.float64) / stride
    base = np.array([1, 1, stride, stride]) - 1

    def whctrs(a):
        w, h = a[2] - a[0] + 1, a[3] - a[1] + 1
        return w, h, a[0] + 0.5 * (w - 1), a[1] + 0.5 * (h - 1)

    def mkanchors(ws, hs, x, y):
        ws, hs = ws[:, None], hs[:, None]
        return np.hstack((x - 0.5 * (ws - 1), y - 0.5 * (hs - 1), x + 0.5 * (ws - 1), y + 0.5 * (hs - 1)))

    w, h, x, y = whctrs(base)
    ws = np.round(np.sqrt(w * h / np.array(ratios, dtype=np.float64)))
    hs = np.round(ws * np.array(ratios))
    ratio_anchors = mkanchors(ws, hs, x, y)
    out = []
    for a in ratio_anchors:
        w, h, x, y = whctrs(a)
        out.append(mkanchors(w * scales, h * scales, x, y))
    return np.vstack(out)


def released_bbox_transform(boxes, deltas, weights=(1.0, 1.0, 1.0, 1.0)):
    """``bbox_transform``: inclusive boxes [N, 4] + deltas [N, 4K] -> inclusive boxes [N, 4K]."""
    widths = boxes[:, 2] - boxes[:, 0] + 1.0
    heights = boxes[:, 3] - boxes[:, 1] + 1.0
    ctr_x, ctr_y = boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx, dy = deltas[:, 0::4] / wx, deltas[:, 1::4] / wy
    dw = np.minimum(deltas[:, 2::4] / ww, np.log(1000.0 / 16.0))
    dh = np.minimum(deltas[:, 3::4] / wh, np.log(1000.0 / 16.0))
    px, py = dx * widths[:, None] + ctr_x[:, None], dy * heights[:, None] + ctr_y[:, None]
    pw, ph = np.exp(dw) * widths[:, None], np.exp(dh) * heights[:, None]
    out = np.zeros(deltas.shape, dtype=deltas.dtype)
    out[:, 0::4], out[:, 1::4] = px - 0.5 * pw, py - 0.5 * ph
    out[:, 2::4], out[:, 3::4] = px + 0.5 * pw - 1, py + 0.5 * ph - 1
    return out


def released_clip_boxes(boxes, im_shape):
    boxes = boxes.copy()
    boxes[:, 0::4] = np.maximum(np.minimum(boxes[:, 0::4], im_shape[1] - 1), 0)
    boxes[:, 1::4] = np.maximum(np.minimum(boxes[:, 1::4], im_shape[0] - 1), 0)
    boxes[:, 2::4] = np.maximum(np.minimum(boxes[:, 2::4], im_shape[1] - 1), 0)
    boxes[:, 3::4] = np.maximum(np.minimum(boxes[:, 3::4], im_shape[0] - 1), 0)
    return boxes


def released_nms(dets, thresh):
    """``py_cpu_nms`` (the +1 areas of the CUDA kernel too): indices kept, by decreasing score."""
    x1, y1, x2, y2, scores = dets[:, 0], dets[:, 1], dets[:, 2], dets[:, 3], dets[:, 4]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort(kind="stable")[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(int(i))
        w = np.maximum(0.0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[order[1:]]) - np.maximum(y1[i], y1[order[1:]]) + 1)
        inter = w * h
        overlap = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(overlap <= thresh)[0] + 1]
    return keep


def released_pyramid_proposal(cls_probs, bbox_preds, im_info, strides, pre_n, post_n, thresh, min_size):
    """``PyramidProposalFunction.forward`` with ``individual_proposals``, scales (8,), ratios (0.5, 1, 2)."""
    proposals_all, scores_all = [], []
    for s, stride in enumerate(strides):
        sub_anchors = released_generate_anchors(stride, np.array([8]) * stride, (0.5, 1, 2))
        scores, deltas = cls_probs[s], bbox_preds[s]
        height, width = scores.shape[-2:]
        sx, sy = np.meshgrid(np.arange(width) * stride, np.arange(height) * stride)
        shifts = np.vstack((sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel())).T
        anchors = (sub_anchors.reshape((1, 3, 4)) + shifts.reshape((1, -1, 4)).transpose((1, 0, 2))).reshape((-1, 4))
        deltas = deltas.transpose((0, 2, 3, 1)).reshape((-1, 4))
        scores = scores.transpose((0, 2, 3, 1)).reshape((-1, 1))
        order = np.argsort(-scores.squeeze(), kind="stable")[:pre_n]
        deltas, anchors, scores = deltas[order], anchors[order], scores[order]
        proposals = released_clip_boxes(released_bbox_transform(anchors, deltas), im_info[:2])
        ws, hs = proposals[:, 2] - proposals[:, 0] + 1, proposals[:, 3] - proposals[:, 1] + 1
        keep = np.where((ws >= min_size) & (hs >= min_size))[0]
        proposals, scores = proposals[keep], scores[keep]
        keep = released_nms(np.hstack((proposals, scores)).astype(np.float32), thresh)[:post_n]
        proposals_all.append(proposals[keep])
        scores_all.append(scores[keep])
    # PyramidProposal.forward (the module around the function): all levels sorted by score, cut to post_n
    boxes, scores = np.vstack(proposals_all), np.vstack(scores_all).ravel()
    order = torch.sort(-torch.from_numpy(scores), 0).indices[:post_n].numpy()
    return boxes[order], scores[order]


def released_bilinear(data, height, width, y, x):
    """``bilinear_interpolate`` of the released RoIAlign kernel (Caffe2's)."""
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    return hy * hx * data[y_low, x_low] + hy * lx * data[y_low, x_high] + ly * hx * data[y_high, x_low] + ly * lx * data[y_high, x_high]


def released_roi_align(feature, roi, pooled, scale, sampling_ratio=2):
    """``RoIAlignForward`` for one inclusive roi [x1, y1, x2, y2] on feature [C, H, W]."""
    channels, height, width = feature.shape
    start_w, start_h, end_w, end_h = (v * scale for v in roi)
    roi_w, roi_h = max(end_w - start_w, 1.0), max(end_h - start_h, 1.0)
    bin_w, bin_h = roi_w / pooled, roi_h / pooled
    out = np.zeros((channels, pooled, pooled))
    for c in range(channels):
        for ph in range(pooled):
            for pw in range(pooled):
                total = 0.0
                for iy in range(sampling_ratio):
                    y = start_h + ph * bin_h + (iy + 0.5) * bin_h / sampling_ratio
                    for ix in range(sampling_ratio):
                        x = start_w + pw * bin_w + (ix + 0.5) * bin_w / sampling_ratio
                        total += released_bilinear(feature[c], height, width, y, x)
                out[c, ph, pw] = total / sampling_ratio**2
    return out


def released_fpn_levels(rois):
    """``FPNRoIAlign``'s level of inclusive rois [N, 4], float32 numpy as the released code runs."""
    rois = rois.astype(np.float32)
    w, h = rois[:, 2] - rois[:, 0] + 1, rois[:, 3] - rois[:, 1] + 1
    return np.clip(np.floor(2 + np.log2(np.sqrt(w * h) / 224 + 1e-6)), 0, 3).astype(np.int64)


def released_deform_conv(x, offset, weight, bias, pad, dilation):
    """The released deformable im2col (``deformable_im2col_gpu_kernel`` and its bilinear sampler,
    zero outside the map), stride 1, then the convolution as a matrix product."""
    channels, height, width = x.shape
    k = weight.shape[-1]
    out_h = height + 2 * pad - dilation * (k - 1)
    out_w = width + 2 * pad - dilation * (k - 1)

    def sample(c, h, w):
        h_low, w_low = math.floor(h), math.floor(w)
        lh, lw = h - h_low, w - w_low
        value = 0.0
        for hh, ww, weight_ in ((h_low, w_low, (1 - lh) * (1 - lw)), (h_low, w_low + 1, (1 - lh) * lw),
                                (h_low + 1, w_low, lh * (1 - lw)), (h_low + 1, w_low + 1, lh * lw)):  # fmt: skip
            if 0 <= hh <= height - 1 and 0 <= ww <= width - 1:
                value += weight_ * x[c, hh, ww]
        return value

    columns = np.zeros((channels, k, k, out_h, out_w))
    for c in range(channels):
        for i in range(k):
            for j in range(k):
                for oh in range(out_h):
                    for ow in range(out_w):
                        h = oh - pad + i * dilation + offset[2 * (i * k + j), oh, ow]
                        w = ow - pad + j * dilation + offset[2 * (i * k + j) + 1, oh, ow]
                        if -1 < h < height and -1 < w < width:
                            columns[c, i, j, oh, ow] = sample(c, h, w)
    return np.einsum("ocij,cijhw->ohw", weight, columns) + bias[:, None, None]


def _continuous(inclusive):
    return inclusive + np.array([0.0, 0.0, 1.0, 1.0])


# -- anchors -------------------------------------------------------------------------------------


def test_cell_anchors_hand_worked():
    # stride 4, size 32 (scale 8), base box [0, 0, 3, 3] centred on 1.5:
    # ratio 0.5: w = round(sqrt(16 / 0.5)) = 6, h = round(6 * 0.5) = 3, x8 -> 48 x 24 -> [-22, -10, 25, 13]
    # ratio 1:   4 x 4 x8 -> 32 x 32 -> [-14, -14, 17, 17]
    # ratio 2:   w = round(sqrt(8)) = 3, h = 6, x8 -> 24 x 48 -> [-10, -22, 13, 25]
    released = np.array([[-22, -10, 25, 13], [-14, -14, 17, 17], [-10, -22, 13, 25]], dtype=np.float64)
    np.testing.assert_array_equal(released_generate_anchors(4, [32], (0.5, 1, 2)), released)
    ours = detectron_cell_anchors(4, (32,), (0.5, 1.0, 2.0))
    np.testing.assert_array_equal(ours.numpy(), _continuous(released))
    # torchvision's zero-centred anchors of the same size differ: its ratio-1 box is [-16, -16, 16, 16]


@pytest.mark.parametrize("stride", [4, 8, 16, 32, 64])
def test_cell_anchors_equal_generate_anchors(stride):
    sizes = (8 * stride, 12 * stride)
    released = released_generate_anchors(stride, sizes, (0.5, 1, 2))
    ours = detectron_cell_anchors(stride, sizes, (0.5, 1.0, 2.0)).numpy()
    np.testing.assert_allclose(ours, _continuous(released).astype(np.float32), rtol=0, atol=0)


def test_anchor_grid_is_in_the_rpn_order():
    generator = DetectronAnchorGenerator(((32,), (64,), (128,), (256,), (512,)), (0.5, 1.0, 2.0))
    features = [torch.zeros(1, 1, h, w) for h, w in ((6, 8), (3, 4), (2, 2), (1, 1), (1, 1))]
    (anchors,) = generator(ImageList(torch.zeros(1, 3, 24, 32), [(24, 32)]), features)
    assert anchors.shape == (3 * (48 + 12 + 4 + 1 + 1), 4)
    # level P2, row 1, column 2, anchor 1 (ratio 1): the cell anchor shifted by (2 * 4, 1 * 4)
    index = (1 * 8 + 2) * 3 + 1
    np.testing.assert_array_equal(anchors[index].numpy(), _continuous(np.array([-14 + 8, -14 + 4, 17 + 8, 17 + 4.0])))
    # P6 is always at stride 64 (torchvision infers it from the padded image: 24 // 1 here)
    p6 = anchors[-3:]
    np.testing.assert_array_equal(p6.numpy(), _continuous(released_generate_anchors(64, [512], (0.5, 1, 2))))


# -- box coding, clipping, NMS ---------------------------------------------------------------------


def test_legacy_decoding_is_torchvision_decoding_of_continuous_boxes():
    rng = np.random.default_rng(0)
    x1y1 = rng.uniform(-20, 100, (200, 2))
    inclusive = np.hstack([x1y1, x1y1 + rng.uniform(0, 60, (200, 2))]).astype(np.float32)
    deltas = rng.normal(0, 0.5, (200, 4)).astype(np.float32)
    deltas[:3, 2:] = 8.0  # beyond the log(1000 / 16) clamp
    for weights in ((1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)):
        expected = _continuous(released_bbox_transform(inclusive.astype(np.float64), deltas.astype(np.float64), weights))
        decoded = BoxCoder(weights).decode_single(torch.from_numpy(deltas), torch.from_numpy(_continuous(inclusive)).float())
        np.testing.assert_allclose(decoded.numpy(), expected, atol=2e-4, rtol=1e-5)


def test_legacy_clipping():
    inclusive = np.array([[-5.0, -3.0, 200.0, 40.0], [90.0, 10.0, 99.5, 70.0], [120.0, 80.0, 130.0, 90.0]])
    clipped = clip_boxes_legacy(torch.tensor(_continuous(inclusive)), (64, 100)).numpy()
    np.testing.assert_array_equal(clipped, _continuous(released_clip_boxes(inclusive, (64, 100))))
    # hand-worked: the box entirely right of and below the image becomes the last pixel, 1 x 1
    np.testing.assert_array_equal(clipped[2], [99.0, 63.0, 100.0, 64.0])


def test_released_nms_is_torchvision_nms_of_continuous_boxes():
    rng = np.random.default_rng(1)
    for integer in (True, False):
        x1y1 = rng.uniform(0, 50, (300, 2))
        inclusive = np.hstack([x1y1, x1y1 + rng.uniform(0, 30, (300, 2))])
        if integer:  # integer coordinates make +1 conventions matter most (zero-width boxes overlap by 1 px)
            inclusive = np.round(inclusive)
        scores = rng.permutation(300).astype(np.float32) / 300  # distinct scores: no tie order to compare
        dets = np.hstack([inclusive, scores[:, None]]).astype(np.float32)
        for threshold in (0.3, 0.5, 0.7):
            expected = released_nms(dets, threshold)
            ours = nms(torch.from_numpy(_continuous(inclusive)).float(), torch.from_numpy(scores), threshold)
            assert ours.tolist() == expected
    # hand-worked: two 1-pixel-wide released boxes [0, 0, 0, 9] and [0, 0, 1, 9] overlap with IoU 10 / 20
    assert box_iou(torch.tensor([[0.0, 0, 1, 10]]), torch.tensor([[0.0, 0, 2, 10]])).item() == pytest.approx(0.5)


# -- the proposal step ---------------------------------------------------------------------------


def test_proposal_step_equals_the_released_pyramid_proposal():
    """Random RPN outputs on P2..P6 of a 60 x 90 image (padded 64 x 96): the released
    ``PyramidProposal`` (individual proposals per level) and ours give the same boxes and scores."""
    rng = np.random.default_rng(2)
    strides, shapes = (4, 8, 16, 32, 64), ((16, 24), (8, 12), (4, 6), (2, 3), (1, 2))
    logits = [rng.normal(0, 2, (1, 3) + s).astype(np.float32) for s in shapes]
    deltas = [rng.normal(0, 0.3, (1, 12) + s).astype(np.float32) for s in shapes]
    probs = [1 / (1 + np.exp(-x)) for x in logits]
    pre_n, post_n, thresh = 200, 40, 0.7
    expected_boxes, expected_scores = released_pyramid_proposal(probs, deltas, np.array([60, 90, 1.0]), strides, pre_n, post_n, thresh, 0)

    generator = DetectronAnchorGenerator(tuple((8 * s,) for s in strides), (0.5, 1.0, 2.0))
    images = ImageList(torch.zeros(1, 3, 64, 96), [(60, 90)])
    (anchors,) = generator(images, [torch.zeros(1, 1, *s) for s in shapes])
    # torchvision's layout (concat_box_prediction_layers): per level (h, w, a), deltas (h, w, a, 4)
    objectness = torch.cat([torch.from_numpy(x).permute(0, 2, 3, 1).reshape(1, -1) for x in logits], dim=1)
    codes = torch.cat([torch.from_numpy(d).view(1, 3, 4, *d.shape[-2:]).permute(0, 3, 4, 1, 2).reshape(-1, 4) for d in deltas])
    proposals = BoxCoder((1.0, 1.0, 1.0, 1.0)).decode_single(codes, anchors).view(1, -1, 4)
    counts = [3 * h * w for h, w in shapes]
    (boxes,), (scores,) = released_proposals(
        proposals, objectness, [(60, 90)], counts, pre_nms_top_n=pre_n, post_nms_top_n=post_n, min_size=0.0, nms_threshold=thresh
    )
    # each level keeps its own top post_n, then post_n of them all stay (more than any level has here)
    assert len(boxes) == len(expected_boxes) == post_n
    np.testing.assert_allclose(boxes.numpy(), _continuous(expected_boxes), atol=1e-3)
    np.testing.assert_allclose(scores.numpy(), expected_scores, atol=1e-6)


# -- RoI levels and RoIAlign ----------------------------------------------------------------------


def test_roi_levels_hand_worked_and_released():
    # inclusive sizes 111, 112, 224, 448, 1000, 10 px (square): floor(2 + log2(s / 224 + 1e-6)) clipped to 0..3
    sizes = [111, 112, 224, 448, 1000, 10]
    inclusive = np.array([[0, 0, s - 1, s - 1] for s in sizes], dtype=np.float64)
    levels = released_roi_levels(torch.tensor(_continuous(inclusive)))
    assert levels.tolist() == [0, 1, 2, 3, 3, 0]
    rng = np.random.default_rng(3)
    x1y1 = rng.uniform(0, 300, (500, 2))
    inclusive = np.hstack([x1y1, x1y1 + rng.uniform(0, 500, (500, 2))]).astype(np.float32)
    np.testing.assert_array_equal(released_roi_levels(torch.from_numpy(_continuous(inclusive)).float()).numpy(), released_fpn_levels(inclusive))


def test_roi_align_equals_the_released_kernel():
    """RoIAlign at 4 levels of random FPN maps (64 x 96 input): our pooling of continuous boxes
    equals the released kernel, written out, on the inclusive boxes (in and beyond the map, and a
    box under one feature cell that the kernel stretches to 1 x 1)."""
    rng = np.random.default_rng(4)
    features = {str(k): torch.from_numpy(rng.normal(size=(1, 2, 64 // s, 96 // s)).astype(np.float32)) for k, s in enumerate((4, 8, 16, 32))}
    inclusive = np.array([
        [3.2, 5.5, 40.7, 50.1], [10.0, 2.0, 11.0, 3.0], [-8.0, -6.0, 30.0, 20.0], [60.0, 40.0, 95.0, 63.0], [-20.0, -10.0, 130.0, 100.0],
        [0.0, 0.0, 250.0, 230.0], [20.0, 10.0, 500.0, 480.0],
    ])  # fmt: skip
    pool = DetectronRoIAlign(["0", "1", "2", "3"], output_size=3)
    pooled = pool(features, [torch.from_numpy(_continuous(inclusive)).float()], [(64, 96)]).numpy()
    levels = released_fpn_levels(inclusive)
    assert sorted(set(levels.tolist())) == [0, 1, 2, 3]
    for n, (roi, level) in enumerate(zip(inclusive, levels)):
        expected = released_roi_align(features[str(level)][0].numpy().astype(np.float64), roi, 3, 1 / (4 * 2**level))
        np.testing.assert_allclose(pooled[n], expected, atol=1e-5)


def test_deformable_conv_equals_the_released_kernel():
    """torchvision's ``deform_conv2d`` (the semantic head's layer) computes the released deformable
    im2col + convolution: offsets (dy, dx) per kernel tap in channel order 2 k, 2 k + 1, bilinear
    samples with zero outside the map, samples at or beyond -1 / the size dropped."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 5, 6)).astype(np.float32)
    offset = rng.normal(0, 1.5, (18, 5, 6)).astype(np.float32)
    offset[0, 0, 0], offset[1, 0, 0] = -0.5, -0.5  # a tap landing at (-1.5, -1.5): outside, 0
    offset[2, 4, 5], offset[3, 4, 5] = 0.25, 0.75  # a tap on the map's last row and column
    weight = rng.normal(size=(3, 2, 3, 3)).astype(np.float32)
    bias = rng.normal(size=3).astype(np.float32)
    for dilation in (1, 2):
        layer = DeformConv2d(2, 3, 3, padding=dilation, dilation=dilation)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(weight))
            layer.bias.copy_(torch.from_numpy(bias))
            ours = layer(torch.from_numpy(x)[None], torch.from_numpy(offset)[None])[0].numpy()
        expected = released_deform_conv(x.astype(np.float64), offset.astype(np.float64), weight.astype(np.float64), bias, dilation, dilation)
        np.testing.assert_allclose(ours, expected, atol=1e-4)


# -- the detection step ---------------------------------------------------------------------------


def test_max_detections_keeps_ties():
    scores = torch.tensor([0.9, 0.8, 0.7, 0.8, 0.6])
    assert keep_top_detections(scores, 2).tolist() == [True, True, False, True, False]
    assert keep_top_detections(scores, 5).all()


def _released_mask_roi(rois, deltas, probs, im_shape, score_thresh, nms_thresh, max_det):
    """``MaskROI.forward`` class-agnostic (the panoptic candidates): inclusive boxes, scores, classes."""
    proposal = released_clip_boxes(released_bbox_transform(rois, deltas, (10.0, 10.0, 5.0, 5.0)), im_shape)
    num_classes = probs.shape[1]
    probs = probs[:, 1:].reshape(-1)
    boxes = proposal.reshape(len(rois), -1, 4)[:, 1:, :].reshape(-1, 4)
    classes = np.tile(np.arange(1, num_classes), len(rois))
    inds = np.where(probs > score_thresh)[0]
    dets = np.hstack((boxes[inds], probs[inds, None])).astype(np.float32)
    keep = released_nms(dets, nms_thresh) if len(dets) else []
    dets, classes = dets[keep], classes[inds][keep]
    if len(dets) > max_det:
        cut = dets[:, -1] >= np.sort(dets[:, -1])[-max_det]
        dets, classes = dets[cut], classes[cut]
    return dets[:, :4], dets[:, 4], classes


def test_detect_follows_the_released_mask_roi():
    """A random detector with ``box_convention: detectron``: ``detect`` on its own proposals and box
    head outputs gives the released ``MaskROI``'s class-agnostic candidates."""
    torch.manual_seed(0)
    config = SOGNetConfig(box_convention="detectron", rpn_min_size=0.0, backbone="resnet50", fpn_channels=16,
                          box_head_channels=32, mask_head_channels=8, rpn_post_nms_top_n_test=50)  # fmt: skip
    detector = build_detector(config, num_thing_classes=3).eval()
    with torch.no_grad():
        for name, parameter in detector.roi_heads.box_predictor.named_parameters():
            parameter.normal_(0, 0.05 if "cls" in name else 0.1)  # scores spread over (0.3, 0.9): no ties
        images = ImageList(torch.randn(1, 3, 64, 96), [(60, 90)])
        features = detector.backbone(images.tensors)
        proposals, _ = detector.rpn(images, features)
        heads = detector.roi_heads
        logits, deltas = heads.box_predictor(heads.box_head(heads.box_roi_pool(features, proposals, images.image_sizes)))
        probs = torch.softmax(logits, dim=-1).numpy()
        inclusive_rois = proposals[0].numpy().astype(np.float64) - np.array([0, 0, 1.0, 1.0])
        boxes, scores, classes = _released_mask_roi(inclusive_rois, deltas.numpy().astype(np.float64), probs, (60, 90), 0.3, 0.5, 10)
        (ours,) = detect(detector, images, features, score_threshold=0.3, nms_threshold=0.5, max_detections=10, class_agnostic=True)
    assert len(scores) > 3
    np.testing.assert_allclose(ours["boxes"].numpy(), _continuous(boxes), atol=1e-3)
    np.testing.assert_allclose(ours["scores"].numpy(), scores, atol=1e-6)
    assert ours["labels"].tolist() == classes.tolist()
