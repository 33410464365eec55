"""The released SOGNet / UPSNet test path end to end, against panopticlab's ``predict``, stage by stage.

``released_sognet_reference_check.py`` compares the released *modules*; this tool runs the released
*program*'s test path, as ``tools/test_net.py`` runs it, on the same checkpoint as panopticlab:

1. the released network built by the released code (``released_sognet_keys.build_released_network``;
   its CUDA operators run by the torchvision ones ``tests/test_detectron_boxes.py`` shows equal,
   see ``released_sognet_reference_check.run_operators_on_cpu``), the released config updated with
   the released experiment YAML, weights from ``released_sognet_weights.released_weights`` (the
   checkpoint saved as the released trainer saves one: ``torch.save(state_dict)``);
2. the image prepared by the released ``prep_im_for_blob`` and ``im_list_to_blob`` (BGR minus the
   pixel means, ``cv2.resize``, zero padding to a multiple of 32), ``im_info = [h, w, scale]``;
3. ``network(data)`` in eval mode (the released proposals, ``MaskROI``, ``MaskRemoval``, the relation,
   ``SegTerm`` and the panoptic argmax), then ``test_net.py``'s own steps: the panoptic and semantic
   argmax cast to uint8, cropped to ``im_info`` and resized by ``cv2.resize(..., fx=1 / scale,
   INTER_NEAREST)``, and the released ``BaseDataset.get_unified_pan_result`` (majority-class
   relabelling, stuff area limit) -> ``pan_2ch``;
4. the same checkpoint converted by ``convert_released`` and run by panopticlab's ``predict`` with
   the released config.

Stand-ins, only for compiled code and the GPU: ``gpu_nms`` -> the released ``py_nms`` (the same
rule, in numpy); the legacy autograd ``PyramidProposalFunction`` called through its ``forward``;
``Tensor.cuda`` / ``pin_memory`` / ``get_device`` the CPU's; numpy's ``np.float`` alias (removed in
numpy 1.24) restored. OpenCV is the real one.

Both sides record their stages (proposals, the class-agnostic panoptic candidates, the mask removal,
the relation's order, the panoptic logits, the argmax, the final map) and the report gives, per
stage, the largest difference, the segments and the pixels that differ, and the first stage that
differs. ``--fixture DIR`` also writes what the regression test replays (the image, the released
final map and its segments).

    python tools/released_sognet_end_to_end.py --case sognet_r50_coco --git /work/.mirror/LaoYang1994+SOGNet/repo \\
        --image 512x640@512,640 --report benchmarks/results/released_end_to_end/sognet_r50_coco.json
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from released_sognet_keys import build_released_network  # noqa: E402
from released_sognet_reference_check import CASES, run_operators_on_cpu  # noqa: E402
from released_sognet_weights import released_weights  # noqa: E402

from panopticlab.fileio import write_json  # noqa: E402


# -- the released program on the CPU --------------------------------------------------------------


@contextlib.contextmanager
def cpu_tensors():
    """``Tensor.cuda`` / ``pin_memory`` are the tensor itself and ``get_device`` the CPU while the
    released code runs (it moves its outputs to the input's device by these calls)."""
    saved = {name: getattr(torch.Tensor, name) for name in ("cuda", "pin_memory", "get_device")}
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.Tensor.pin_memory = lambda self, *args, **kwargs: self
    torch.Tensor.get_device = lambda self: "cpu"
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(torch.Tensor, name, value)


def run_test_path_on_cpu(package: str) -> None:
    """The released test path's compiled and GPU-only pieces -> their CPU equivalents (the module docstring)."""
    for alias, value in (("float", float), ("int", int), ("bool", bool)):  # numpy < 1.24's aliases, used by the released code
        np.__dict__.setdefault(alias, value)
    nms = sys.modules[f"{package}.nms.nms"]
    cpu_torch = types.SimpleNamespace(**{k: getattr(torch, k) for k in dir(torch) if not k.startswith("__")})
    cpu_torch.device = lambda *args, **kwargs: torch.device("cpu")
    for name in (f"{package}.operators.functions.pyramid_proposal", f"{package}.operators.modules.mask_roi"):
        module = importlib.import_module(name)
        module.gpu_nms_wrapper = lambda thresh, device_id=None: nms.py_nms_wrapper(thresh)
        module.torch = cpu_torch
    function = sys.modules[f"{package}.operators.functions.pyramid_proposal"].PyramidProposalFunction
    function.__call__ = function.forward  # a legacy autograd Function (a non-static forward), called as the released code calls it


class Recorder:
    """Records what the released modules receive and return (forward hooks)."""

    def __init__(self, network: torch.nn.Module, package: str):
        self.stages: dict[str, object] = {}
        self.relation_calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        network.resnet_backbone.register_forward_hook(lambda m, i, o: self.stages.update(input=i[0].clone()))
        network.fpn.register_forward_hook(lambda m, i, o: self.stages.update(fpn=[t.clone() for t in o]))
        network.fcn_head.register_forward_hook(lambda m, i, o: self.stages.update(semantic=o["fcn_score"].clone()))
        network.mask_roi_panoptic.register_forward_hook(self._candidates)
        network.mask_removal.register_forward_hook(self._removal)
        network.seg_term.register_forward_hook(self._instances)
        if hasattr(network, "relation_head"):
            network.relation_head.register_forward_hook(self._relation)
        proposal = sys.modules[f"{package}.operators.modules.pyramid_proposal"].PyramidProposal
        forward = proposal.forward

        def recorded(module, *args, **kwargs):
            rois, scores = forward(module, *args, **kwargs)
            self.stages["proposals"] = (rois.clone(), scores.clone())
            return rois, scores

        proposal.forward = recorded
        model_module = sys.modules[type(network).__module__]
        self.argmax_inputs: list[torch.Tensor] = []
        recording_torch = types.SimpleNamespace(**{k: getattr(model_module.torch, k) for k in dir(model_module.torch) if not k.startswith("__")})

        def recorded_max(tensor, *args, **kwargs):
            if tensor.dim() == 4 and not kwargs.get("keepdim", False):
                self.argmax_inputs.append(tensor.detach().clone())
            return torch.max(tensor, *args, **kwargs)

        recording_torch.max = recorded_max
        model_module.torch = recording_torch
        self.softmax_inputs: list[torch.Tensor] = []
        recording_functional = types.SimpleNamespace(**{k: getattr(model_module.F, k) for k in dir(model_module.F) if not k.startswith("__")})

        def recorded_softmax(tensor, *args, **kwargs):
            if tensor.dim() == 4:
                self.softmax_inputs.append(tensor.detach().clone())
            return torch.nn.functional.softmax(tensor, *args, **kwargs)

        recording_functional.softmax = recorded_softmax
        model_module.F = recording_functional

    def _candidates(self, module, inputs, outputs):
        scores, boxes, classes = outputs
        self.stages["candidates"] = (scores.clone(), boxes.clone(), classes.clone())

    def _removal(self, module, inputs, outputs):
        keep, mask_logits = outputs
        self.stages["removal"] = (keep.clone(), mask_logits.clone())

    def _instances(self, module, inputs, outputs):
        classes, _, boxes = inputs
        self.stages["instances"] = (classes.clone(), boxes.clone() / 4.0)  # called with the boxes x 4, scaled by 1 / 4

    def _relation(self, module, inputs, outputs):
        self.relation_calls.append((inputs[1].clone(), inputs[2].clone()))


def released_dataset_functions(package: str):
    """The released ``BaseDataset`` (its ``prep_im_for_blob``, ``im_list_to_blob``,
    ``get_unified_pan_result``, ``_converter_2ch_single_core``), called unbound on a stand-in ``self``."""
    module = importlib.import_module(f"{package}.dataset.base_dataset")
    return module.BaseDataset


class DistinctColours:
    """Stands in for panopticapi's ``IdGenerator`` (the released ``lib/dataset_devkit``, not in its
    repository): a new colour at every call, so a new segment id, as ``IdGenerator`` gives each
    segment of an image; its own colours only renumber the segments."""

    def __init__(self):
        self.count = 0

    def get_color(self, category: int) -> list[int]:
        self.count += 1
        return [self.count % 256, self.count // 256 % 256, self.count // 65536]


def released_coco_output(dataset, pan_2ch: np.ndarray) -> tuple[list[dict], list[np.ndarray]]:
    """The released ``evaluate_panoptic``'s conversion of one ``pan_2ch`` to what it writes: the
    ``segments_info`` and the RGB PNG array (``_converter_2ch_single_core``, run as released, with
    panopticapi's ``rgb2id``)."""
    utils = types.ModuleType("panopticapi.utils")
    utils.rgb2id = lambda color: int(color[0]) + 256 * int(color[1]) + 256 * 256 * int(color[2])
    package = types.ModuleType("panopticapi")
    package.utils = utils
    saved = {name: sys.modules.get(name) for name in ("panopticapi", "panopticapi.utils")}
    sys.modules.update({"panopticapi": package, "panopticapi.utils": utils})
    try:
        return dataset._converter_2ch_single_core(0, [pan_2ch], DistinctColours())
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def released_run(case: str, git_dir: Path, image_bgr: np.ndarray, test_size: tuple[int, int], checkpoint: Path):
    """The released test path on one BGR uint8 image [H, W, 3] -> its stages and ``pan_2ch``."""
    project, experiment, _ = CASES[case]
    network, scratch = build_released_network(project, git_dir, experiment, real_packages=("cv2",))
    package = project
    config = sys.modules[f"{package}.config.config"].config
    config.test.scales, config.test.max_size = [test_size[0]], test_size[1]
    run_operators_on_cpu(package, network)
    run_test_path_on_cpu(package)
    network.load_state_dict(torch.load(checkpoint, weights_only=True))  # as tools/test_net.py loads it
    network.eval()
    recorder = Recorder(network, package)
    dataset = released_dataset_functions(package)
    self = types.SimpleNamespace()
    started = time.perf_counter()  # from the image (prep_im_for_blob) to pan_2ch, as predict's image to result
    ims, scales = dataset.prep_im_for_blob(self, image_bgr, config.network.pixel_means, config.test.scales, config.test.max_size)
    im, scale = ims[0], scales[0]
    blob = dataset.im_list_to_blob(self, [im.transpose(2, 0, 1)])
    im_info = np.array([[im.shape[0], im.shape[1], scale]], dtype=np.float32)
    import cv2

    with torch.no_grad(), cpu_tensors():
        output = network({"data": torch.from_numpy(blob), "im_info": im_info})
    output = {k: v.cpu().numpy() for k, v in output.items()}
    h, w = int(im_info[0, 0]), int(im_info[0, 1])
    # tools/test_net.py, after im_detect: uint8 maps cropped to im_info, resized back by nearest
    sseg = output["fcn_outputs"].squeeze(0).astype("uint8")[:h, :w]
    sseg = cv2.resize(sseg, None, None, fx=1 / im_info[0, 2], fy=1 / im_info[0, 2], interpolation=cv2.INTER_NEAREST)
    pano = output["panoptic_outputs"].squeeze(0).astype("uint8")[:h, :w]
    pano = cv2.resize(pano, None, None, fx=1 / im_info[0, 2], fy=1 / im_info[0, 2], interpolation=cv2.INTER_NEAREST)
    pan_2ch = dataset.get_unified_pan_result(
        self, [sseg], [pano], [output["panoptic_cls_inds"]], stuff_area_limit=config.test.panoptic_stuff_area_limit
    )[0]
    network_seconds = time.perf_counter() - started
    annotations, pans = released_coco_output(dataset, pan_2ch)
    stages = dict(recorder.stages)
    stages["relation_calls"] = recorder.relation_calls
    # the panoptic logits: the argmax's input (UPSNet's void case) or, without void, the softmax's
    stages["panoptic_logits"] = (recorder.softmax_inputs or recorder.argmax_inputs)[-1]
    stages["panoptic_argmax"] = output["panoptic_outputs"].squeeze(0)[:h, :w]
    stages["panoptic_cls_inds"] = output["panoptic_cls_inds"]
    stages["semantic_argmax"] = sseg
    stages["pano_resized"] = pano
    stages["pan_2ch"] = pan_2ch
    stages["coco_segments_info"], stages["coco_png"] = annotations[0]["segments_info"], pans[0]
    stages["im_info"] = im_info
    stages["num_seg_classes"], stages["num_classes"] = config.dataset.num_seg_classes, config.dataset.num_classes
    stages["seconds"] = network_seconds
    scratch.cleanup()
    return stages


# -- panopticlab on the same checkpoint -------------------------------------------------------------


def panopticlab_run(case: str, image_rgb: np.ndarray, test_size: tuple[int, int], checkpoint: Path, seconds: dict | None = None):
    """``convert_released`` + ``predict`` with the case's released config; the merge's stages recorded."""
    import panopticlab.models.sognet.model as sognet_model
    from panopticlab.models import load_model
    from panopticlab.models.sognet.released import convert_released

    _, _, config = CASES[case]
    overrides = [f"model.sognet.min_size={test_size[0]}", f"model.sognet.max_size={test_size[1]}"]
    with tempfile.TemporaryDirectory() as folder:
        weights = Path(folder) / "converted.safetensors"
        convert_released(checkpoint, ROOT / config, weights)
        model = load_model(ROOT / config, weights, overrides).eval()
    stages: dict[str, object] = {}
    saved = {}

    def record(name, function, stage=None):
        saved[name] = function

        def recorded(*args, **kwargs):
            result = function(*args, **kwargs)
            stages.setdefault(stage or name, []).append((args, kwargs, result))
            return result

        setattr(sognet_model, name, recorded)

    for name in ("detect", "same_class_removal", "released_overlapping_order", "winner_assignment", "relabel_instances", "remove_small_stuff"):
        record(name, getattr(sognet_model, name))
    panoptic_logits = model._panoptic_logits

    def recorded_logits(*args, **kwargs):
        result = panoptic_logits(*args, **kwargs)
        stages["panoptic_logits"] = result.detach().clone()
        return result

    model._panoptic_logits = recorded_logits
    instances = model._instances

    def recorded_instances(images, features, size, input_boxes, labels, **kwargs):
        stages["instances_in"] = (input_boxes.clone(), labels.clone())  # the candidates, in the merge's order
        return instances(images, features, size, input_boxes, labels, **kwargs)

    model._instances = recorded_instances
    model.detector.backbone.register_forward_hook(lambda m, i, o: stages.update(input=i[0].clone(), fpn=[t.clone() for t in o.values()]))
    model.semantic_head.register_forward_hook(lambda m, i, o: stages.update(semantic=o[0].clone()))
    proposals = []
    model.detector.rpn.register_forward_hook(lambda module, inputs, outputs: proposals.append([p.clone() for p in outputs[0]]))
    try:
        started = time.perf_counter()
        result = model.predict(image_rgb)[0]
        elapsed = time.perf_counter() - started
    finally:
        for name, function in saved.items():
            setattr(sognet_model, name, function)
    stages["proposals"] = proposals[0][0]
    stages["seconds"] = elapsed
    return model, result, stages


# -- the comparison ---------------------------------------------------------------------------------


def _continuous(inclusive: torch.Tensor) -> torch.Tensor:
    return inclusive.double() + inclusive.new_tensor([0.0, 0.0, 1.0, 1.0]).double()


def _largest_difference(ours: torch.Tensor, released: torch.Tensor) -> dict:
    difference = float((ours.double() - released.double()).abs().max()) if ours.shape == released.shape else float("inf")
    scale = float(released.abs().max())
    return {"max_abs": difference, "max_abs_released": scale, "equal": difference <= 1e-4 * max(scale, 1.0)}


def _box_sets(released: torch.Tensor, ours: torch.Tensor) -> dict:
    """Two box sets [N, 4] (continuous): counts and, row by row after sorting, the largest difference."""
    figures = {"released": len(released), "panopticlab": len(ours)}
    if len(released) == len(ours) and len(ours):
        a, b = released.double().numpy(), ours.double().numpy()
        a, b = a[np.lexsort(a.T[::-1])], b[np.lexsort(b.T[::-1])]
        figures["max_abs"] = float(np.abs(a - b).max())
    figures["equal"] = len(released) == len(ours) and figures.get("max_abs", 0.0) < 1e-3
    return figures


def _match(released_boxes: torch.Tensor, released_classes: torch.Tensor, boxes: torch.Tensor, classes: torch.Tensor) -> list[int]:
    """For each of our instances, the released instance with the same class and box (-1: none)."""
    matches = []
    for box, label in zip(boxes.double(), classes.tolist()):
        if not len(released_boxes):
            matches.append(-1)
            continue
        difference = (released_boxes.double() - box).abs().max(dim=1).values
        difference[released_classes != label] = float("inf")
        best = int(difference.argmin())
        matches.append(best if difference[best] < 1e-3 else -1)
    return matches


def _segments(pan: np.ndarray) -> np.ndarray:
    return pan.astype(np.int64)


def partition_agreement(released_ids: np.ndarray, released_class: np.ndarray, ours_ids: np.ndarray, ours_class: np.ndarray) -> dict:
    """Two panoptic maps as segment id maps [H, W] with their per-pixel class: the pixels of each
    released segment that lie in its matching segment of ours (the one that holds most of its
    pixels, same class, matched one to one), and the counts."""
    pairs, counts = np.unique(np.stack([released_ids.ravel(), ours_ids.ravel()]), axis=1, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    used_r, used_o, agreeing = set(), set(), 0
    for (r, o), count in zip(pairs.T[order], counts[order]):
        if r in used_r or o in used_o:
            continue
        pixel = np.flatnonzero((released_ids.ravel() == r) & (ours_ids.ravel() == o))[0]
        if released_class.ravel()[pixel] != ours_class.ravel()[pixel]:
            continue
        used_r.add(r), used_o.add(o)
        agreeing += int(count)
    return {"pixels": int(released_ids.size), "pixels_that_differ": int(released_ids.size - agreeing)}


def compare(case: str, released: dict, model, result, ours: dict) -> dict:
    """The stage-by-stage table of one image."""
    from panopticlab.models.sognet.released import semantic_order

    labels = model.labels
    rows = semantic_order(labels.things, labels.stuff)  # our semantic channel -> released class
    num_stuff = released["num_seg_classes"] - released["num_classes"] + 1  # the released stuff channels (id_last_stuff + 1)
    stages = {}
    # 0. the network's input, its FPN levels and the semantic head's stride-4 logits
    stages["input"] = _largest_difference(ours["input"], released["input"])
    for level, (o, r) in enumerate(zip(ours["fpn"], released["fpn"])):
        stages[f"fpn_p{level + 2}"] = _largest_difference(o, r)
    stages["semantic_logits"] = _largest_difference(ours["semantic"], released["semantic"][:, rows])
    with torch.no_grad():  # the same head on the released FPN levels: the head itself, without what reaches it
        own, _ = model.semantic_head(released["fpn"][:4])
    stages["semantic_logits_of_released_fpn"] = _largest_difference(own, released["semantic"][:, rows])
    # 1. proposals
    stages["proposals"] = _box_sets(_continuous(released["proposals"][0][:, 1:]), ours["proposals"])
    # 2. the class-agnostic panoptic candidates (score > 0.6, NMS 0.5, <= 100)
    r_scores, r_boxes, r_classes = released["candidates"]
    detections = ours["detect"][0][2][0]
    candidate_figures = _box_sets(_continuous(r_boxes[:, 1:]), detections["boxes"])
    if len(r_scores) == len(detections["scores"]):
        candidate_figures["scores_max_abs"] = float((r_scores.sort().values.double() - detections["scores"].sort().values.double()).abs().max())
        candidate_figures["classes_equal"] = sorted(r_classes.tolist()) == sorted(detections["labels"].tolist())
        candidate_figures["equal"] = candidate_figures["equal"] and candidate_figures["classes_equal"]
    stages["candidates"] = candidate_figures
    # 3. the same-class mask removal: which candidates stay, in which order
    keep, mask_energy = released["removal"]
    r_kept_boxes = _continuous(r_boxes[keep.long(), 1:]) if len(r_scores) else torch.zeros(0, 4)
    r_kept_classes = r_classes[keep.long()] if len(r_scores) else torch.zeros(0, dtype=torch.int64)
    kept = ours["same_class_removal"][0][2]
    merge_boxes, merge_labels = ours["instances_in"]  # the candidates in the order the merge takes them
    o_kept_boxes, o_kept_classes = merge_boxes[kept], merge_labels[kept] + 1
    removal = _box_sets(r_kept_boxes, o_kept_boxes)
    matches = _match(r_kept_boxes, r_kept_classes, o_kept_boxes, o_kept_classes)
    removal["same_order"] = matches == list(range(len(r_kept_boxes)))
    removal["equal"] = removal["equal"] and sorted(matches) == list(range(len(r_kept_boxes)))
    stages["mask_removal"] = removal
    # 4. the relation's subset and order (SOGNet)
    if "released_overlapping_order" in ours:
        subset = ours["released_overlapping_order"][0][2]
        r_pairs = [tuple(sorted(_match(r_kept_boxes, r_kept_classes, _continuous(b[:, 1:]), c))) for b, c in released["relation_calls"]]
        o_instances = [matches[k] for k in subset.tolist()]
        o_pairs = [tuple(sorted((o_instances[i], o_instances[j]))) for i in range(len(o_instances)) for j in range(i + 1, len(o_instances))] if len(o_instances) > 1 else []
        stages["relation"] = {"released_pairs": r_pairs, "panopticlab_pairs": o_pairs, "equal": r_pairs == o_pairs}
    # 5. the panoptic logits, channels aligned: stuff by class, instances by matched box
    r_classes_final, r_boxes_final = released["instances"]
    h, w = int(released["im_info"][0, 0]), int(released["im_info"][0, 1])
    r_logits = released["panoptic_logits"][0, :, :h, :w].double()
    o_logits = ours["panoptic_logits"].double()
    final_matches = _match(_continuous(r_boxes_final[:, 1:]), r_classes_final, o_kept_boxes, o_kept_classes)
    logit_figures = {"released_channels": int(r_logits.shape[0]), "panopticlab_channels": int(o_logits.shape[0])}
    if r_logits.shape[0] == o_logits.shape[0] and -1 not in final_matches:
        channels = [rows[c] for c in labels.stuff] + [num_stuff + m for m in final_matches] + list(range(num_stuff + len(final_matches), r_logits.shape[0]))
        difference = (r_logits[channels] - o_logits).abs()
        logit_figures["max_abs"] = float(difference.max())
        per_channel = difference.flatten(1).max(dim=1).values
        logit_figures["stuff_max_abs"] = float(per_channel[: len(labels.stuff)].max())
        logit_figures["instance_max_abs"] = float(per_channel[len(labels.stuff) :].max()) if len(per_channel) > len(labels.stuff) else 0.0
        logit_figures["pixels_over_1e-3"] = int((difference.max(dim=0).values > 1e-3).sum())
        if os.environ.get("RELEASED_DUMP"):
            torch.save({"released": r_logits[channels], "ours": o_logits}, os.environ["RELEASED_DUMP"])
        logit_figures["max_abs_released"] = float(r_logits.abs().max())
    logit_figures["equal"] = logit_figures.get("max_abs", float("inf")) <= 1e-4 * max(logit_figures.get("max_abs_released", 1.0), 1.0)
    stages["panoptic_logits"] = logit_figures
    # 6. the argmax, as released class per pixel (stuff class, thing class, void 255) and instance
    r_argmax = released["panoptic_argmax"].astype(np.int64)
    r_inst_classes = r_classes_final.numpy()
    r_class_map = np.where(r_argmax < num_stuff, r_argmax, np.where(r_argmax == 255, 255, 0))
    thing = (r_argmax >= num_stuff) & (r_argmax != 255)
    r_class_map[thing] = r_inst_classes[r_argmax[thing] - num_stuff] + num_stuff - 1
    o_instance, o_category = (t.cpu().numpy() for t in ours["winner_assignment"][0][2])
    seg_of = np.array(rows + [255])  # our contiguous id (-1: void -> 255) -> the released class
    o_class_map = seg_of[np.where(o_category < 0, len(rows), o_category)]
    o_owned = o_instance >= 0  # instance pixels: the instance's class (winner_assignment's category is -1 there)
    o_class_map[o_owned] = o_kept_classes.numpy()[o_instance[o_owned]] + num_stuff - 1
    r_ids = np.where(thing, r_argmax, 1000 + r_class_map)
    o_ids = np.where(o_instance >= 0, num_stuff + np.array(final_matches + [10**6])[np.where(o_instance >= 0, o_instance, len(final_matches))], 1000 + o_class_map)
    argmax = partition_agreement(r_ids, r_class_map, o_ids, o_class_map)
    argmax["equal"] = argmax["pixels_that_differ"] == 0 and r_argmax.shape == o_instance.shape
    stages["panoptic_argmax"] = argmax
    # 7. the final map (get_unified_pan_result's pan_2ch against our result)
    pan_2ch = released["pan_2ch"].astype(np.int64)
    r_final_ids, r_final_class = pan_2ch[..., 0] * 1000 + pan_2ch[..., 1], pan_2ch[..., 0]
    o_class_of_id = {0: 255}
    category_to_contiguous = {c: i for i, c in enumerate(model.categories.ids)}
    for segment in result.segments:
        o_class_of_id[segment.id] = rows[category_to_contiguous[segment.category_id]]
    o_final_class = np.vectorize(o_class_of_id.get)(result.id_map)
    final = partition_agreement(np.where(r_final_class == 255, -1, r_final_ids), r_final_class, np.where(result.id_map == 0, -1, result.id_map), o_final_class)
    r_segments = {int(v) for v in np.unique(r_final_ids[r_final_class != 255])}
    final["released_segments"] = {"thing": sum(1 for v in r_segments if v % 1000), "stuff": sum(1 for v in r_segments if not v % 1000)}
    final["panopticlab_segments"] = {"thing": sum(1 for s in result.segments if s.isthing), "stuff": sum(1 for s in result.segments if not s.isthing)}
    final["released_void_pixels"] = int((r_final_class == 255).sum())
    final["panopticlab_void_pixels"] = int((result.id_map == 0).sum())
    final["equal"] = final["pixels_that_differ"] == 0 and final["released_segments"] == final["panopticlab_segments"]
    stages["final"] = final
    first = next((name for name, figures in stages.items() if not figures["equal"]), None)
    return {"stages": stages, "first_stage_that_differs": first}


def test_image(height: int, width: int, seed: int) -> np.ndarray:
    """uint8 RGB [H, W, 3]: a smooth background and coloured rectangles (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width] / max(height, width)
    image = np.stack([120 + 80 * np.sin(6 * xs + c) * np.cos(4 * ys - c) for c in range(3)], axis=-1)
    for _ in range(12):
        y0, x0 = rng.integers(0, height - 16), rng.integers(0, width - 16)
        y1, x1 = y0 + rng.integers(16, max(17, height // 3)), x0 + rng.integers(16, max(17, width // 3))
        image[y0:y1, x0:x1] = rng.integers(0, 256, 3)
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def parse_image(spec: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """``HxW@MIN,MAX``: an image of H x W pixels tested at short side MIN, long side at most MAX."""
    size, test = spec.split("@")
    height, width = (int(v) for v in size.split("x"))
    low, high = (int(v) for v in test.split(","))
    return (height, width), (low, high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), required=True)
    parser.add_argument("--git", type=Path, required=True, help="the released repository (SOGNet's or UPSNet's)")
    parser.add_argument("--image", action="append", required=True, help="HxW@MIN,MAX, repeatable")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", type=Path)
    parser.add_argument("--fixture", type=Path, help="write the first image, its released final map and segments here")
    parser.add_argument("--class-bias", type=json.loads, help='box-classifier biases, JSON {"column": bias}, replacing the default ones; {"0": 40} (the background) lets no candidate through')
    parser.add_argument("--offset-scale", type=float, default=1.0, help="released_weights' offset_scale (the fixtures: 0.1)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each side per image (the times: the fastest)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from PIL import Image

    results = []
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / "released.pth"
        class_bias = None if args.class_bias is None else {int(k): float(v) for k, v in args.class_bias.items()}
        torch.save(released_weights(args.case, args.seed, class_bias, args.offset_scale), checkpoint)  # as the released trainer saves a model
        for k, spec in enumerate(args.image):
            size, test_size = parse_image(spec)
            image = test_image(*size, seed=args.seed + k)
            seconds: dict[str, list[float]] = {"released": [], "panopticlab": []}
            # each side args.repeats times in turn, in this one process; the time of a side is its fastest (warm) run
            for _ in range(args.repeats):
                released = released_run(args.case, args.git, np.ascontiguousarray(image[..., ::-1]), test_size, checkpoint)
                model, result, ours = panopticlab_run(args.case, image, test_size, checkpoint)
                seconds["released"].append(released["seconds"])
                seconds["panopticlab"].append(ours["seconds"])
            report = compare(args.case, released, model, result, ours)
            report.update({"image": spec, "input_size": [int(v) for v in released["im_info"][0, :2]], "seconds": seconds,
                           "ratio_panopticlab_to_released": min(seconds["panopticlab"]) / min(seconds["released"])})  # fmt: skip
            results.append(report)
            print(f"{args.case} {spec}: first stage that differs: {report['first_stage_that_differs']}")
            for name, figures in report["stages"].items():
                print(f"  {name:16s} {json.dumps(figures)}")
            if args.fixture and k == 0:
                args.fixture.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(args.fixture / "image.png")
                Image.fromarray(released["pan_2ch"]).save(args.fixture / "released_pan_2ch.png")
                # what the released evaluate_panoptic writes from it: the PNG and the segments_info
                Image.fromarray(released["coco_png"]).save(args.fixture / "released_coco.png")
                write_json(args.fixture / "released_segments_info.json", released["coco_segments_info"])
                write_json(args.fixture / "fixture.json", {
                    "case": args.case, "seed": args.seed, "offset_scale": args.offset_scale, "image": spec,
                    "test_size": list(test_size),
                    "made_by": "python tools/released_sognet_end_to_end.py " + " ".join(sys.argv[1:]),
                    "released_commit": subprocess_git_head(args.git),
                    # a convolution's last bit depends on these: the test replays with the same threads
                    "threads": args.threads, "torch": torch.__version__.split("+")[0],
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu": cpu_model(),
                })  # fmt: skip
    if args.report:
        write_json(args.report, {"case": args.case, "seed": args.seed, "class_bias": args.class_bias,
                                 "offset_scale": args.offset_scale, "threads": args.threads, "cpu": cpu_model(), "torch": torch.__version__,
                                 "released_commit": subprocess_git_head(args.git), "images": results})  # fmt: skip
        print(f"wrote {args.report}")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's processor string."""
    import platform

    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def subprocess_git_head(git_dir: Path) -> str:
    import subprocess

    git = git_dir / ".git" if (git_dir / ".git").exists() else git_dir
    return subprocess.run(["git", "--git-dir", str(git), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()


if __name__ == "__main__":
    main()
