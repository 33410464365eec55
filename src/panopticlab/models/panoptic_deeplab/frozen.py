"""The network traced, frozen and optimised for inference by TorchScript, in the place of the eager one.

``torch.jit.freeze`` inlines the weights as constants and folds BatchNorm into the convolutions;
``torch.jit.optimize_for_inference`` then, on a CPU, runs the convolutions through oneDNN with
pre-packed weights and fuses the elementwise ops after them. A trace records the input's size in
its resizing ops, so one optimised graph is kept per input shape (built at its first call: a few
seconds). Outputs equal the eager network's up to float rounding (5e-9 relative in
``benchmarks/bench_inference.py``), not bit for bit, which is why this is an option
(``predict --frozen``) and not the default.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

#: the head outputs, in the order the traced graph returns them
OUTPUTS = ("sem_seg", "center", "offset")
#: optimised graphs kept (one per input shape), the least recently built dropped first
MAX_GRAPHS = 8


class _Heads(nn.Module):
    """``forward_heads`` as a tuple (a trace needs one)."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        heads = self.network.forward_heads(images)
        return heads["sem_seg"], heads["center"], heads["offset"]


class FrozenNetwork(nn.Module):
    """A :class:`~.network.PanopticDeepLabNetwork` run as frozen, inference-optimised TorchScript.

    ``forward_heads(images)`` takes and returns what the network's does (float [B, 3, H, W] RGB
    0..255 -> ``sem_seg``, ``center``, ``offset``), fp32, without autograd.

    Args:
        network: the eager network (its weights are read at each new input shape's trace).
    """

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network.eval()
        self._graphs: dict[tuple, torch.jit.ScriptModule] = {}

    def _graph(self, images: Tensor) -> torch.jit.ScriptModule:
        key = (tuple(images.shape), images.dtype, images.device)
        if key not in self._graphs:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TorchScript's deprecation and tracer warnings
                traced = torch.jit.trace(_Heads(self.network).eval(), images, check_trace=False)
                self._graphs[key] = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
            if len(self._graphs) > MAX_GRAPHS:
                self._graphs.pop(next(iter(self._graphs)))
        return self._graphs[key]

    def forward_heads(self, images: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            images = images.float()
            outputs = self._graph(images)(images)
        return dict(zip(OUTPUTS, outputs))

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return self.forward_heads(images)
