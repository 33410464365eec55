"""Export Panoptic-DeepLab's network to ONNX, and run an exported file in place of the network.

:func:`export_onnx` writes the network (image -> the three head outputs, pixel normalisation
inside) with dynamic batch, height and width, through torch's dynamo-based exporter, then runs the
file with onnxruntime beside the eager network on the sample size and on a second size and
refuses it (nothing is left behind) when an output differs by more than ``tolerance``. The
post-processing stays panopticlab's (:mod:`~panopticlab.models.panoptic_deeplab.postprocess`):
:class:`OnnxNetwork` takes the network's place in a :class:`PanopticDeepLab`, so ``predict``
gives the PyTorch path's results from onnxruntime's head outputs.

What is not exported: SOGNet / UPSNet (their detection stage loops over images and instances in
Python), test-time augmentation (``predict`` still applies it, around the exported network), and
the post-processing itself (see docs/export.md).

Needs the ``export`` extra (``pip install 'panopticlab[export]'``: onnx, onnxscript, onnxruntime).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from panopticlab.errors import InputError
from panopticlab.models.base import PanopticModel

#: the exported graph's input and output names
INPUT_NAME = "images"
OUTPUT_NAMES = ("sem_seg", "center", "offset")


def _require(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise InputError(f"ONNX export needs the {module} package: pip install 'panopticlab[export]'") from None


class _Heads(nn.Module):
    """The network with tuple outputs (ONNX graphs have positional outputs)."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        outputs = self.network.forward_heads(images)
        return outputs["sem_seg"], outputs["center"], outputs["offset"]


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and how closely onnxruntime followed the eager network."""

    path: str
    size_bytes: int
    opset: int
    checked_sizes: list[tuple[int, int]]
    max_abs_difference: dict[str, float]


def export_onnx(
    model: PanopticModel,
    output: str | os.PathLike,
    *,
    sample_size: tuple[int, int] = (512, 1024),
    check_size: tuple[int, int] | None = None,
    tolerance: float = 1e-4,
    opset: int = 18,
    overwrite: bool = False,
) -> ExportReport:
    """Export a Panoptic-DeepLab model's network to an ONNX file (see the module docstring).

    Args:
        model: a :class:`~panopticlab.models.panoptic_deeplab.model.PanopticDeepLab`.
        output: the ``.onnx`` file; refused if it exists, unless ``overwrite``.
        sample_size: (height, width) of the example the graph is traced with.
        check_size: a second size the file is checked at (default: the sample size minus one
            output-stride step in each dimension), so the dynamic axes are exercised.
        tolerance: the largest absolute difference allowed between onnxruntime and eager, per
            output, relative to that output's largest magnitude (at least 1).

    Raises:
        InputError: not a Panoptic-DeepLab model, the output exists, a missing package, or a
            file that does not reproduce the network.
    """
    network = getattr(model, "network", None)
    if network is None or not hasattr(network, "forward_heads") or isinstance(network, OnnxNetwork):
        raise InputError(
            f"ONNX export covers Panoptic-DeepLab only, not {type(model).__name__} (its detection stage "
            "loops in Python; see docs/export.md)"
        )
    output = Path(output)
    if output.exists() and not overwrite:
        raise InputError(f"{output}: already exists (pass --overwrite to replace it)")
    for package in ("onnx", "onnxscript"):  # the exporter imports them itself
        _require(package)
    ort = _require("onnxruntime")
    height, width = sample_size
    if check_size is None:
        check_size = (max(32, height - 32), max(32, width - 32))
    heads = _Heads(network).eval()
    device = next(network.parameters()).device
    sample = torch.rand(1, 3, height, width, device=device) * 255
    dynamic = {INPUT_NAME: {0: torch.export.Dim.AUTO, 2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO}}
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".export-") as scratch:
        staged = Path(scratch) / output.name
        with torch.no_grad():
            torch.onnx.export(
                heads, (sample,), str(staged), dynamo=True, dynamic_shapes=dynamic, input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES), opset_version=opset, verbose=False, external_data=False,
            )  # fmt: skip
        session = ort.InferenceSession(str(staged), providers=["CPUExecutionProvider"])
        differences = dict.fromkeys(OUTPUT_NAMES, 0.0)
        for size, batch in ((sample_size, 1), (check_size, 2)):
            images = torch.rand(batch, 3, *size) * 255
            with torch.no_grad():
                expected = heads(images.to(device))
            got = session.run(None, {INPUT_NAME: images.numpy()})
            for name, e, g in zip(OUTPUT_NAMES, expected, got):
                e = e.float().cpu()
                difference = float((torch.from_numpy(g) - e).abs().max()) / max(1.0, float(e.abs().max()))
                differences[name] = max(differences[name], difference)
        worst = max(differences, key=differences.get)
        if differences[worst] > tolerance:
            raise InputError(
                f"{output}: the exported graph differs from the network ({worst}: {differences[worst]:.2e} > {tolerance:g}); nothing written"
            )
        os.replace(staged, output)
    return ExportReport(str(output), output.stat().st_size, opset, [tuple(sample_size), tuple(check_size)], differences)


class OnnxNetwork(nn.Module):
    """An exported network run by onnxruntime, in the place of :class:`PanopticDeepLabNetwork`.

    ``forward_heads(images)`` takes float [B, 3, H, W] RGB 0..255 (any device; computed on the CPU)
    and returns the head outputs as the network does, on the images' device.

    Args:
        path: the ``.onnx`` file from :func:`export_onnx`.
        threads: onnxruntime's intra-op threads (default: torch's).
    """

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None):
        super().__init__()
        ort = _require("onnxruntime")
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: ONNX file not found")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own types for a bad file
            raise InputError(f"{path}: not a readable ONNX file ({type(e).__name__}: {str(e).splitlines()[0]})") from None
        names = [o.name for o in self.session.get_outputs()]
        if [i.name for i in self.session.get_inputs()] != [INPUT_NAME] or names != list(OUTPUT_NAMES):
            raise InputError(f"{path}: not a panopticlab Panoptic-DeepLab export (inputs/outputs {names})")
        self.path = str(path)
        # an empty parameter, so that model.device works as with the network it replaces
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)

    def forward_heads(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = self.session.run(None, {INPUT_NAME: images.detach().float().cpu().numpy()})
        return {name: torch.from_numpy(o).to(images.device) for name, o in zip(OUTPUT_NAMES, outputs)}

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_heads(images)
