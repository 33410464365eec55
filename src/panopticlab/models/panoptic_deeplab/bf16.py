"""The network run under bfloat16 autocast, in the place of the fp32 one (``predict --bf16``).

Convolutions and matrix products run in bfloat16 (8 bits of mantissa), everything else as
autocast decides; the head outputs are handed to the post-processing as float32, so the
grouping (offsets of up to hundreds of pixels) is not done in bfloat16. Results differ from
fp32: at bfloat16's rounding a few pixels on class borders change class, and a centre may move
(``benchmarks/bench_inference.py --bf16`` reports how many pixels agree). It pays only where
the device computes bfloat16 natively (GPUs since Ampere, CPUs with AVX512-BF16 or AMX); on other
CPUs PyTorch falls back to its reference convolution, 66x slower than fp32 at 128x256 on an
AVX2 machine (``benchmarks/results/bench_inference_bf16_128x256.json``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Bf16Network(nn.Module):
    """A :class:`~.network.PanopticDeepLabNetwork` whose ``forward_heads`` runs under bf16 autocast.

    ``forward_heads(images)``: float [B, 3, H, W] RGB 0..255 -> ``sem_seg`` [B, C, H, W],
    ``center`` [B, 1, H, W], ``offset`` [B, 2, H, W], all float32, without autograd.
    """

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network.eval()

    def forward_heads(self, images: Tensor) -> dict[str, Tensor]:
        with torch.no_grad(), torch.autocast(images.device.type, dtype=torch.bfloat16):
            heads = self.network.forward_heads(images.float())
        return {name: value.float() for name, value in heads.items()}

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return self.forward_heads(images)
