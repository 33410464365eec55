"""Check the seed backbones against the seed's own definitions, on the same random weights.

Reads ``segmentation/model/backbone/xception.py``, ``hrnet.py`` and
``segmentation/config/hrnet_config.py`` from a local copy of bowenc0221/panoptic-deeplab (a git
directory, read with ``git show``; nothing of it is copied into panopticlab), runs them with two
shims (``torchvision.models.utils``, which newer torchvision lacks, and yacs' ``CfgNode``), and:

* writes each backbone's state-dict key list with shapes (``--keys-out``: the JSON files under
  ``tests/data/seed_keys/`` that the tests compare our modules with, as with the detectron2 lists);
* loads the seed module's random weights into ours (strict) and reports the parameter counts and
  the largest output difference per feature on a random image (``--report``).

    python tools/seed_reference_check.py --seed-git /work/.mirror/bowenc0221+panoptic-deeplab/repo \
        --keys-out tests/data/seed_keys --report benchmarks/results/seed_backbones_reference.json
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import types
from pathlib import Path

import torch

from panopticlab.fileio import write_json
from panopticlab.models.seed_backbones import build_seed_backbone

ALL = ("res2", "res3", "res4", "res5")


def load_seed_module(git_dir: Path, path: str, name: str, extra: dict | None = None) -> types.ModuleType:
    source = subprocess.run(["git", "-C", str(git_dir), "show", f"HEAD:{path}"], check=True, capture_output=True, text=True).stdout
    module = types.ModuleType(name)
    module.__dict__.update(extra or {})
    exec(compile(source, f"{git_dir.name}:{path}", "exec"), module.__dict__)
    return module


def install_shims() -> None:
    utils = types.ModuleType("torchvision.models.utils")
    utils.load_state_dict_from_url = torch.hub.load_state_dict_from_url
    sys.modules["torchvision.models.utils"] = utils

    class CfgNode(dict):
        __getattr__ = dict.__getitem__

        def __setattr__(self, key, value):
            self[key] = value

    yacs, config = types.ModuleType("yacs"), types.ModuleType("yacs.config")
    config.CfgNode = CfgNode
    sys.modules["yacs"], sys.modules["yacs.config"] = yacs, config


def key_list(module: torch.nn.Module) -> list[list]:
    return [[k, list(v.shape)] for k, v in module.state_dict().items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed-git", type=Path, required=True)
    parser.add_argument("--keys-out", type=Path)
    parser.add_argument("--report", type=Path)
    parser.add_argument("--size", type=int, nargs=2, default=(128, 256))
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    install_shims()
    xception = load_seed_module(args.seed_git, "segmentation/model/backbone/xception.py", "seed_xception")
    hrnet_config = load_seed_module(args.seed_git, "segmentation/config/hrnet_config.py", "seed_hrnet_config")
    hrnet = load_seed_module(args.seed_git, "segmentation/model/backbone/hrnet.py", "seed_hrnet")

    references = {"xception65": xception.Xception65(replace_stride_with_dilation=[False, False, True])}
    for width in (18, 32, 48):
        references[f"hrnet_w{width}"] = hrnet.HighResolutionNet(hrnet_config.MODEL_CONFIGS[f"hrnet{width}"])
    image = torch.randn(1, 3, *args.size)
    report = {"seed_repository": "bowenc0221/panoptic-deeplab", "input_size": list(args.size), "backbones": {}}
    for name, reference in references.items():
        # random BN statistics too, so a swapped or missing norm shows in the outputs
        with torch.no_grad():
            for m in reference.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.2, 0.2)
        ours = build_seed_backbone(name, out_features=ALL)
        ours.load_state_dict(reference.state_dict(), strict=True)
        reference.eval(), ours.eval()
        with torch.no_grad():
            expected, got = reference(image), ours(image)
        differences = {k: float((expected[k] - got[k]).abs().max()) for k in ALL}
        scale = {k: float(expected[k].abs().max()) for k in ALL}
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        report["backbones"][name] = {
            "parameters_seed": count(reference),
            "parameters_ours": count(ours),
            "max_abs_difference": differences,
            "max_abs_output": scale,
            "feature_shapes": {k: list(got[k].shape) for k in ALL},
        }
        print(name, report["backbones"][name])
        if args.keys_out:
            write_json(args.keys_out / f"seed_{name}.json", {"source": "bowenc0221/panoptic-deeplab " + (
                "segmentation/model/backbone/xception.py Xception65(replace_stride_with_dilation=[False, False, True])"
                if name == "xception65" else f"segmentation/model/backbone/hrnet.py HighResolutionNet(MODEL_CONFIGS['hrnet{name[7:]}'])"
            ), "keys": key_list(reference)})  # fmt: skip
    if args.report:
        write_json(args.report, report)


if __name__ == "__main__":
    main()
