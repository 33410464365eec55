"""Export Panoptic-DeepLab to ONNX (the network) or TorchScript (network + post-processing).

:func:`export_onnx` writes the network (image -> the three head outputs, pixel normalisation
inside) with dynamic batch, height and width, through torch's dynamo-based exporter, then runs the
file with onnxruntime beside the eager network on the sample size and on a second size and
refuses it (nothing is left behind) when an output differs by more than ``tolerance``. The
post-processing stays panopticlab's (:mod:`~panopticlab.models.panoptic_deeplab.postprocess`):
:class:`OnnxNetwork` takes the network's place in a :class:`PanopticDeepLab`, so ``predict``
gives the PyTorch path's results from onnxruntime's head outputs.

:func:`export_torchscript` writes one TorchScript file that maps an image to the panoptic map and
its segment table: the network traced, then scripted together with the model's test-time
augmentation and the post-processing, whose functions (``postprocess.py``, ``tta.py``) are written
in TorchScript's subset of Python so that the file runs the very code ``predict`` runs. The file is
checked against ``predict`` at two image sizes before it is written.

What is not exported: SOGNet / UPSNet beyond their backbone + FPN (their detection stage loops
over images and instances in Python; see docs/export.md).

ONNX needs the ``export`` extra (``pip install 'panopticlab[export]'``: onnx, onnxscript,
onnxruntime); TorchScript needs torch only.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from panopticlab.errors import InputError
from panopticlab.models.base import PanopticModel
from panopticlab.models.panoptic_deeplab.postprocess import image_segment_table
from panopticlab.models.panoptic_deeplab.tta import is_single_pass, tta_average, tta_input, tta_passes

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
    """What an export wrote: for ONNX, how closely onnxruntime followed the eager network
    (``max_abs_difference``); a TorchScript file equals ``predict`` (no opset, no differences)."""

    path: str
    size_bytes: int
    opset: int | None
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
    network = _exportable_network(model, "ONNX")
    output = _new_output(output, overwrite)
    for package in ("onnx", "onnxscript"):  # the exporter imports them itself
        _require(package)
    ort = _require("onnxruntime")
    height, width = sample_size
    check_size = check_size or _second_size(sample_size)
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


def _exportable_network(model: PanopticModel, format_name: str) -> nn.Module:
    """The model's PyTorch network, or InputError when the model cannot be exported."""
    network = getattr(model, "network", None)
    if network is None or not hasattr(network, "forward_heads") or isinstance(network, OnnxNetwork):
        raise InputError(
            f"{format_name} export covers Panoptic-DeepLab only, not {type(model).__name__} (its detection stage "
            "loops in Python; see docs/export.md)"
        )
    return network


def _second_size(sample_size: tuple[int, int]) -> tuple[int, int]:
    """The size a file is checked at besides the sample's: one 32-pixel step smaller (at least 32)."""
    return max(32, sample_size[0] - 32), max(32, sample_size[1] - 32)


def _new_output(output: str | os.PathLike, overwrite: bool) -> Path:
    output = Path(output)
    if output.exists() and not overwrite:
        raise InputError(f"{output}: already exists (pass --overwrite to replace it)")
    return output


class PanopticDeepLabScript(nn.Module):
    """Network + test-time augmentation + post-processing in one module that TorchScript compiles.

    ``forward(image)`` takes uint8 or float [3, H, W] RGB 0..255 and returns

    * ``id_map`` int32 [H, W]: segment ids (0 = VOID);
    * ``segments`` int64 [S, 8]: per segment ``(id, category_id, isthing, area, x, y, w, h)``,
      dataset category ids and the COCO bbox, things first (ids 1..S in order);
    * ``scores`` float64 [S]: detectron2's instance score of each thing, NaN for stuff.

    These are the fields of :meth:`PanopticDeepLab.predict`'s :class:`PanopticResult`.

    Args:
        network: image batch float [B, 3, H, W] -> (sem_seg logits, center, offset) at [B, *, H, W]
            (the traced network).
        model: the Panoptic-DeepLab model whose categories and inference settings are exported.
    """

    def __init__(self, network: nn.Module, model: PanopticModel):
        super().__init__()
        s = model.inference
        self.network = network
        self.thing_ids = [int(t) for t in model.thing_ids]
        self.register_buffer("category_ids", torch.tensor(model.categories.ids, dtype=torch.long), persistent=False)
        self.stuff_area = int(s.stuff_area)
        self.threshold = float(s.center_threshold)
        self.nms_kernel = int(s.nms_kernel)
        self.top_k = int(s.top_k)
        self.mean_probability_vote = s.class_vote == "mean_probability"
        self.tta_scales = [float(scale) for scale in s.tta_scales]
        self.tta_flip = bool(s.tta_flip)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        images = image.float().unsqueeze(0)
        height, width = images.shape[-2], images.shape[-1]
        if is_single_pass(self.tta_scales, self.tta_flip):
            sem_seg, center, offset = self.network(images)
        else:
            passes = tta_passes(self.tta_scales, self.tta_flip)
            outputs: list[tuple[Tensor, Tensor, Tensor]] = []
            for scale, flipped in passes:
                outputs.append(self.network(tta_input(images, scale, flipped)))
            sem_seg, center, offset = tta_average(outputs, passes, height, width)
        table = image_segment_table(
            sem_seg[0], center[0, 0], offset[0], self.thing_ids, self.stuff_area, self.threshold,
            self.nms_kernel, self.top_k, self.mean_probability_vote,
        )  # fmt: skip
        stats = table.stats[1:]
        count = stats.shape[0]
        ids = torch.arange(1, count + 1, device=stats.device)
        isthing = (ids <= table.num_instances).long()
        category = self.category_ids.to(stats.device)[stats[:, 0]]
        segments = torch.cat((ids[:, None], category[:, None], isthing[:, None], stats[:, 1:]), dim=1)
        scores = torch.where(isthing > 0, table.score[1:], float("nan"))
        return table.id_map.to(torch.int32), segments, scores


def export_torchscript(
    model: PanopticModel,
    output: str | os.PathLike,
    *,
    sample_size: tuple[int, int] = (512, 1024),
    check_size: tuple[int, int] | None = None,
    overwrite: bool = False,
) -> ExportReport:
    """Export a Panoptic-DeepLab model, post-processing included, to one TorchScript file.

    The network is traced on a ``sample_size`` image (its operations do not depend on the
    size), then compiled with :class:`PanopticDeepLabScript`. Before the file is written, it is
    loaded back and run on a random image of the sample size and of ``check_size`` (default:
    one output-stride step smaller in each dimension): its id map and segment table must
    equal ``model.predict``'s exactly and its scores to 1e-6, else nothing is written.
    Load it with ``torch.jit.load(path)`` (or ``torch::jit::load`` in C++); no panopticlab needed.

    Raises:
        InputError: not a Panoptic-DeepLab model, a model with add-ons (``model.addons``), the output
            exists, or a file that does not reproduce ``predict``.
    """
    network = _exportable_network(model, "TorchScript")
    if len(model.addons):
        raise InputError(
            f"TorchScript export does not cover add-ons (model.addons: {', '.join(model.addons)}), which run around "
            "the post-processing; export the network with --format onnx and run it with predict --onnx"
        )
    output = _new_output(output, overwrite)
    check_size = check_size or _second_size(sample_size)
    device = next(network.parameters()).device
    with torch.no_grad(), warnings.catch_warnings():
        # torch.jit is deprecated in favour of torch.export, which has no C++ runtime without
        # AOTInductor: TorchScript is still the file a C++ program can load.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the network's input check: constant in a trace
        sample = torch.rand(1, 3, *sample_size, device=device) * 255
        traced = torch.jit.trace(_Heads(network).eval(), (sample,), check_trace=False)
        scripted = torch.jit.script(PanopticDeepLabScript(traced, model))
        output.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=output.parent, prefix=".export-") as scratch:
            staged = Path(scratch) / output.name
            scripted.save(str(staged))
            loaded = torch.jit.load(str(staged), map_location=device)
            for size in (tuple(sample_size), tuple(check_size)):
                _check_script_equals_predict(loaded, model, size, output)
            os.replace(staged, output)
    return ExportReport(str(output), output.stat().st_size, None, [tuple(sample_size), tuple(check_size)], {})


def _check_script_equals_predict(script: torch.jit.ScriptModule, model: PanopticModel, size: tuple[int, int], output: Path) -> None:
    """InputError unless the scripted file gives ``model.predict``'s result on a random image."""
    image = (torch.rand(3, *size) * 255).to(torch.uint8)
    with torch.no_grad():
        id_map, segments, scores = script(image.to(model.device))
    expected = model.predict(image)[0]
    table = [[s.id, s.category_id, int(s.isthing), s.area, *s.bbox] for s in expected.segments]
    want_scores = [s.score if s.isthing else float("nan") for s in expected.segments]
    same = np.array_equal(id_map.cpu().numpy(), expected.id_map) and segments.tolist() == table
    if same:
        same = np.allclose(scores.cpu().numpy(), want_scores, rtol=1e-6, atol=1e-9, equal_nan=True)
    if not same:
        raise InputError(f"{output}: the TorchScript file does not reproduce predict at {size[0]}x{size[1]}; nothing written")


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
