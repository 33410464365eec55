"""Deterministic weights for a released SOGNet / UPSNet network, the same on every machine and torch version.

The end-to-end reference run (``released_sognet_end_to_end.py``) and the regression test that
replays it (``tests/test_sognet_released_end_to_end.py``) must load the very same checkpoint, and a
checkpoint of the released R50 networks is 180 MB: too big to commit. So the checkpoint is made
from the released key list (``tests/data/released_keys/*.json``, from the released code) and a
seed, by integer hashing only (numpy ``uint64`` arithmetic, which wraps by definition): no
pseudo-random generator whose stream could change between versions, no transcendental function
whose last bit could differ between CPUs.

The values follow ``released_sognet_reference_check.randomise``'s rules (fan-in scaled weights,
BatchNorm statistics away from the identity, each residual block's last BatchNorm scaled by 0.2 so
that the signal stays of order 1), and then the test-time knobs that make the merge busy:

* the box classifier's bias of a few thing classes (``CLASS_BIAS``) raised, so that tens of
  candidates pass the panoptic score threshold 0.6 and several classes take part;
* the RPN's and the box head's regressions and the RPN's objectness scaled down (``HEAD_SCALE``):
  a random RPN's deltas reach exp(+-10) (degenerate boxes of zero width) and its objectness
  saturates the sigmoid at exactly 1.0 for most anchors, its box classifier the softmax (ties
  everywhere), which a trained one does not;
* nothing else: the mask, semantic and relation heads are random, so masks overlap and the
  relation decides.

``offset_scale`` scales the weights of the deformable semantic head's offset convolutions
(``conv_offset``). At 1 (the end-to-end reports) they are fan-in scaled like the rest, and the
offsets average 55 pixels (most samples fall outside the feature map): the network is then
chaotic, a last-bit change anywhere (another thread count, another CPU's kernels) flips a few
hundred final pixels (measured: 341 for SOGNet between 1 and 2 threads), which makes it the most
sensitive detector of a rule that differs when both programs run on one machine. The regression
test's fixtures use 0.1 (offsets of a few pixels, as a trained deformable convolution has), with
which 1 and 2 threads give the same maps to a pixel or two, so a fixture made on one CPU holds on
another.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import torch

KEYS = Path(__file__).resolve().parents[1] / "tests" / "data" / "released_keys"
_MASK = np.uint64(0xFFFFFFFF)

#: released box-classifier column (1 = the first thing class) -> logit bias
CLASS_BIAS = {1: 6.0, 3: 6.0, 17: 3.0, 45: 6.0}
#: weights of the RPN and box-head outputs -> a factor
HEAD_SCALE = {"rpn.bbox_pred.weight": 0.01, "rcnn.bbox_pred.weight": 0.01, "rpn.cls_score.weight": 0.02, "rcnn.cls_score.weight": 0.05}


def _hashed_normal(name: str, count: int, seed: int) -> np.ndarray:
    """float64 [count], mean 0, variance 1 (the sum of four hashed uniforms, scaled)."""
    key = np.uint64(zlib.crc32(f"{seed}:{name}".encode()))
    index = np.arange(4 * count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (index * np.uint64(0x9E3779B1) + key) & _MASK
        x = ((x ^ (x >> np.uint64(16))) * np.uint64(0x85EBCA6B)) & _MASK
        x = ((x ^ (x >> np.uint64(13))) * np.uint64(0xC2B2AE35)) & _MASK
        x = x ^ (x >> np.uint64(16))
    uniform = (x.astype(np.float64) + 0.5) / 2.0**32
    return (uniform.reshape(count, 4).sum(axis=1) - 2.0) * np.sqrt(3.0)


def released_weights(
    name: str, seed: int = 0, class_bias: dict[int, float] | None = None, offset_scale: float = 1.0
) -> dict[str, torch.Tensor]:
    """The state dict of the released network ``name`` (a key list in ``tests/data/released_keys``)."""
    description = json.loads((KEYS / f"{name}.json").read_text())
    state = {}
    for key, spec in description["keys"].items():
        shape = spec["shape"]
        if spec["dtype"] == "int64":
            state[key] = torch.zeros(shape, dtype=torch.int64)
            continue
        count = int(np.prod(shape)) if shape else 1
        noise = _hashed_normal(key, count, seed).reshape(shape)
        if key.endswith("running_var"):
            value = np.abs(noise) * 0.5 + 0.5
        elif key.endswith("running_mean") or (len(shape) == 1 and key.endswith("bias")):
            value = noise * 0.1
        elif len(shape) == 1:  # BatchNorm scales
            value = (1.0 + 0.1 * noise) * (0.2 if key.endswith("bn3.weight") else 1.0)
        else:
            value = noise / np.sqrt(count / shape[0]) * HEAD_SCALE.get(key, 1.0)
            if key.endswith("conv_offset.weight"):
                value = value * offset_scale
        state[key] = torch.from_numpy(value.astype(np.float32))
    # each class's row of zero mean: the box head's features are >= 0 (ReLU), so a row's mean alone
    # would make one class win every box
    classifier = state["rcnn.cls_score.weight"]
    classifier -= classifier.mean(dim=1, keepdim=True)
    bias = state["rcnn.cls_score.bias"]
    for column, value in (CLASS_BIAS if class_bias is None else class_bias).items():
        if column < len(bias):
            bias[column] += value
    return state
