"""Check panopticlab's SOGNet / UPSNet against the released modules themselves, on the same random weights.

Builds the released network with the released code (``released_sognet_keys.build_released_network``:
the repository read with git, stand-ins for the compiled operators), gives it random weights and
BatchNorm statistics, converts its ``state_dict()`` with ``convert_released`` and loads it into the
config's model. Then both run, module by module, on the same random inputs, and the report gives the
parameter counts and the largest output difference of each module:

* ``resnet_backbone`` (res2..res5 of a random normalised input), ``fpn`` (P2..P6), ``rpn`` (scores and
  deltas on every level), ``rcnn`` and ``mask_branch`` (class scores, box deltas and mask scores of
  random boxes, through the released ``FPNRoIAlign`` level rule), ``fcn_head`` (the semantic score in
  our class order), and SOGNet's ``relation_head`` (O and the resolved mask logits of three instances).

The released code's CUDA operators are run by torchvision's (shown equal to the released kernels,
written out, in ``tests/test_detectron_boxes.py``): ``RoIAlignFunction`` by ``roi_align(aligned=False,
sampling_ratio=2)``, ``DeformConvFunction`` by ``deform_conv2d``; ``FPNRoIAlign``'s CUDA device
becomes the CPU. Everything else of those modules is the released code as it is.

    python tools/released_sognet_reference_check.py --sognet-git /work/.mirror/LaoYang1994+SOGNet/repo \\
        --upsnet-git /work/.mirror/uber-research+UPSNet/repo --report benchmarks/results/released_sognet_reference.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import torch
import torchvision

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from released_sognet_keys import build_released_network  # noqa: E402

from panopticlab.fileio import write_json  # noqa: E402
from panopticlab.models import load_model  # noqa: E402
from panopticlab.models.sognet.overlap_removal import remove_overlaps  # noqa: E402
from panopticlab.models.sognet.released import convert_released, semantic_order  # noqa: E402

CASES = {
    "sognet_r50_coco": ("sognet", "configs/sognet_r50_coco_4gpu_novoid.yaml", "configs/sognet/sognet_r50_coco_released.yaml"),
    "upsnet_r50_coco": ("upsnet", "upsnet/experiments/upsnet_resnet50_coco_16gpu.yaml", "configs/sognet/upsnet_r50_coco_released.yaml"),
    "upsnet_r50_cityscapes": ("upsnet", "upsnet/experiments/upsnet_resnet50_cityscapes_16gpu.yaml", "configs/sognet/upsnet_r50_cityscapes_released.yaml"),
}


def run_operators_on_cpu(package: str, network: torch.nn.Module) -> None:
    """The released CUDA operators -> torchvision's on the CPU (see the module docstring)."""
    fpn_roi_align = sys.modules[f"{package}.operators.modules.fpn_roi_align"]

    def roi_align_function(pooled_height, pooled_width, spatial_scale, sampling_ratio=2):
        return lambda feature, rois: torchvision.ops.roi_align(
            feature, rois, (pooled_height, pooled_width), spatial_scale, sampling_ratio=sampling_ratio, aligned=False
        )

    cpu_torch = types.SimpleNamespace(**{k: getattr(torch, k) for k in dir(torch) if not k.startswith("__")})
    cpu_torch.device = lambda *args, **kwargs: torch.device("cpu")
    fpn_roi_align.torch = cpu_torch
    for module in network.modules():
        if isinstance(module, fpn_roi_align.FPNRoIAlign):
            module.roi_pooling = roi_align_function  # the instance keeps the class it was given at construction

    deform = sys.modules[f"{package}.operators.modules.deform_conv"]

    def deform_conv(data, offset, weight, bias, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, deformable_groups):
        return torchvision.ops.deform_conv2d(data, offset, weight, bias, stride=stride, padding=padding, dilation=dilation)

    deform.DeformConvFunction = types.SimpleNamespace(apply=deform_conv)


def randomise(network: torch.nn.Module, seed: int) -> None:
    """Weights of fan-in scale (activations of order 1 through the ResNet) and non-trivial BN statistics."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in network.state_dict().items():
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if name.endswith("running_var"):
                tensor.copy_(noise.abs() * 0.5 + 0.5)
            elif name.endswith("running_mean") or (tensor.dim() == 1 and name.endswith("bias")):
                tensor.copy_(noise * 0.1)
            elif tensor.dim() == 1:  # BatchNorm scales
                tensor.copy_(1.0 + 0.1 * noise)
            else:
                tensor.copy_(noise / tensor[0].numel() ** 0.5)
        # the residual stages grow the signal: scale each block's last BN so that it stays of order 1
        for name, module in network.named_modules():
            if name.endswith("bn3"):
                module.weight.mul_(0.2)


def largest_difference(ours: torch.Tensor, released: torch.Tensor) -> dict:
    difference = (ours.double() - released.double()).abs().max().item()
    return {"max_abs": difference, "max_abs_released": released.abs().max().item(), "relative": difference / max(released.abs().max().item(), 1e-12)}


def compare(name: str, project: str, experiment: str, config: str, git_dir: Path, seed: int) -> dict:
    network, scratch = build_released_network(project, git_dir, experiment)
    run_operators_on_cpu(project, network)
    network.eval()
    randomise(network, seed)
    with tempfile.TemporaryDirectory() as folder:
        checkpoint, weights = Path(folder) / "released.pth", Path(folder) / "converted.safetensors"
        torch.save(network.state_dict(), checkpoint)
        convert_released(checkpoint, ROOT / config, weights)
        model = load_model(ROOT / config, weights).eval()
    report = {
        "released_parameters": sum(p.numel() for p in network.parameters()) + sum(b.numel() for n, b in network.named_buffers() if "num_batches" not in n),
        # parameters and BatchNorm statistics, not the input normalisation's mean and std (released: in the data loader)
        "panopticlab_parameters": sum(p.numel() for p in model.parameters())
        + sum(b.numel() for n, b in model.named_buffers() if not n.startswith("pixel_")),
        "modules": {},
    }
    modules = report["modules"]
    generator = torch.Generator().manual_seed(seed + 1)
    data = torch.randn(1, 3, 128, 192, generator=generator) * 50
    detector = model.detector
    with torch.no_grad():
        res = network.resnet_backbone(data)
        ours = detector.backbone.body(data)
        for k, (released, key) in enumerate(zip(res, ("0", "1", "2", "3"))):
            modules[f"resnet_backbone.res{k + 2}"] = largest_difference(ours[key], released)
        fpn = network.fpn(*res)
        ours_fpn = list(detector.backbone.fpn({str(k): r for k, r in enumerate(res)}).values())
        for k, (released, o) in enumerate(zip(fpn, ours_fpn)):
            modules[f"fpn.p{k + 2}"] = largest_difference(o, released)
        logits, deltas = detector.rpn.head(list(fpn))
        for k, p in enumerate(fpn):
            cls_score, bbox_pred, _ = network.rpn(p)
            modules[f"rpn.p{k + 2}.cls_score"] = largest_difference(logits[k], cls_score)
            modules[f"rpn.p{k + 2}.bbox_pred"] = largest_difference(deltas[k], bbox_pred)
        # boxes of every FPN level (inclusive, released form) on the 128 x 192 input
        inclusive = torch.tensor([[3.0, 5.0, 40.0, 50.0], [10.0, 2.0, 130.0, 120.0], [0.0, 0.0, 191.0, 127.0], [50.5, 20.2, 60.7, 33.9],
                                  [-5.0, 60.0, 200.0, 140.0], [20.0, 10.0, 500.0, 480.0]])  # fmt: skip
        rois = torch.cat([torch.zeros(len(inclusive), 1), inclusive], dim=1)
        continuous = [inclusive + torch.tensor([0.0, 0.0, 1.0, 1.0])]
        features = {str(k): p for k, p in enumerate(fpn[:4])}
        rcnn = network.rcnn(list(fpn[:4]), rois)
        heads = detector.roi_heads
        scores, box_deltas = heads.box_predictor(heads.box_head(heads.box_roi_pool(features, continuous, [(128, 192)])))
        modules["rcnn.cls_score"] = largest_difference(scores, rcnn["cls_score"])
        modules["rcnn.bbox_pred"] = largest_difference(box_deltas, rcnn["bbox_pred"])
        mask_score = network.mask_branch(list(fpn[:4]), rois)
        ours_mask = heads.mask_predictor(heads.mask_head(heads.mask_roi_pool(features, continuous, [(128, 192)])))
        modules["mask_branch.mask_score"] = largest_difference(ours_mask, mask_score)
        fcn = network.fcn_head(*fpn[:4])["fcn_score"]
        semantic, _ = model.semantic_head(list(fpn[:4]))
        modules["fcn_head.fcn_score"] = largest_difference(semantic, fcn[:, semantic_order(model.labels.things, model.labels.stuff)])
        if model.relation is not None:
            things = torch.tensor([0, 16, 2])
            mask = torch.randn(1, 3, 40, 60, generator=generator) * 3
            boxes = inclusive[:3]
            new_mask, relation = network.relation_head(mask, torch.cat([torch.zeros(3, 1), boxes], dim=1), things + 1)
            ours_relation = model.relation(things, boxes + torch.tensor([0.0, 0.0, 1.0, 1.0]))
            modules["relation_head.O"] = largest_difference(ours_relation, relation)
            modules["relation_head.new_mask"] = largest_difference(remove_overlaps(mask[0], ours_relation), new_mask[0])
    report["largest_relative_difference"] = max(m["relative"] for m in modules.values())
    print(f"{name}: {report['released_parameters']:,} / {report['panopticlab_parameters']:,} parameters, "
          f"largest relative difference {report['largest_relative_difference']:.2e}")  # fmt: skip
    for module, figures in modules.items():
        print(f"  {module:32s} {figures['max_abs']:.2e} (of {figures['max_abs_released']:.2e})")
    scratch.cleanup()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sognet-git", type=Path, required=True)
    parser.add_argument("--upsnet-git", type=Path, required=True)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(2)
    results = {}
    for name in args.cases:
        project, experiment, config = CASES[name]
        git_dir = args.sognet_git if project == "sognet" else args.upsnet_git
        # each released project in a fresh interpreter: the two packages and their configs are module-level state
        if len(args.cases) > 1:
            command = [sys.executable, __file__, "--sognet-git", str(args.sognet_git), "--upsnet-git", str(args.upsnet_git), "--cases", name,
                       "--seed", str(args.seed), "--report", str(Path(tempfile.gettempdir()) / f"released_check_{name}.json")]  # fmt: skip
            subprocess.run(command, check=True)
            results[name] = json.loads((Path(tempfile.gettempdir()) / f"released_check_{name}.json").read_text())["results"][name]
        else:
            results[name] = compare(name, project, experiment, config, git_dir, args.seed)
    if args.report:
        write_json(args.report, {"torch": torch.__version__, "seed": args.seed, "results": results})
        print(f"wrote {args.report}")


if __name__ == "__main__":
    main()
