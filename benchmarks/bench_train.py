"""Training throughput: images per second and the share of time spent waiting for data.

Cases (each in fp32 and with bf16 autocast; ``--device cuda`` also fp16 with its scaler):

* ``shapes``: the demo's config (``configs/panoptic_deeplab/shapes_demo.yaml``: timm resnet10t
  up to res4, narrow decoder) on shapes images of its crop size;
* ``shapes_res5``: the same with the ASPP on res5 at rates 6/12/18 (the demo's network before
  ``aspp_feature: res4``);
* ``sognet_shapes``: SOGNet's shapes config (``configs/sognet/shapes.yaml``); ``sognet_shapes_before``:
  the same with the recipe before issue 14 (one anchor size per level, the deformable semantic
  head, crowds as background, 300 proposals); ``sognet_shapes_conv_box_head``: the shapes config
  with four 3x3 convolutions in the box head (``box_head_conv_layers: 4``);
  ``sognet_shapes_box_roi_14``: with the box head on a 14x14 RoIAlign grid instead of 7x7;
* ``r52_512x1024``: detectron2's R52-DSConv Cityscapes network on 512x1024 crops (shapes
  images of 512x1024 stand in for Cityscapes, so the classifier has the shapes classes).

``ours`` is :func:`panopticlab.engine.train` itself (loader workers, the model's data
transform, logging, the per-step bookkeeping), timed from its per-iteration
records after ``--warmup`` iterations. The peer, run side by side: the plain PyTorch loop a
user would write first (augmentation and targets in the main process, ``model(items)``,
backward, Adam step), same model, data, batch and precision. Reported: images/s of both,
ours / plain, and our data-wait share (time blocked in ``next(loader)`` / step time).

    python benchmarks/bench_train.py                                 # CPU, a few iterations
    python benchmarks/bench_train.py --threads 1 --workers 1         # a shared 2-core machine
    python benchmarks/bench_train.py --device cuda --channels-last   # GPU (untested here)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from panopticlab.config import Config, from_dict, load_config, to_dict
from panopticlab.data.build import build_dataset
from panopticlab.data.synthetic import ShapesConfig, generate_split
from panopticlab.data.transforms import training_transforms
from panopticlab.engine import train
from panopticlab.distributed import resolve_device
from panopticlab.fileio import write_json
from panopticlab.models import build_model
from panopticlab.progress import no_progress

ROOT = Path(__file__).resolve().parents[1]
SHAPES_CONFIG = ROOT / "configs" / "panoptic_deeplab" / "shapes_demo.yaml"
R52_CONFIG = ROOT / "configs" / "panoptic_deeplab" / "r52_dsconv_cityscapes.yaml"
SOGNET_CONFIG = ROOT / "configs" / "sognet" / "shapes.yaml"
#: SOGNet's shapes recipe before issue 14
SOGNET_BEFORE = [
    "model.sognet.anchor_sizes=[8,16,32,64,128]",
    "model.sognet.semantic_conv=deformable",
    "model.sognet.crowd_ignore_iof=null",
    "model.sognet.rpn_post_nms_top_n_train=300",
]


def case_configs(args: argparse.Namespace, data_root: Path) -> dict[str, Config]:
    """The cases as configs; data generated under ``data_root``."""
    cases = {}
    shapes = load_config(Config, SHAPES_CONFIG)
    size = shapes.input.crop_size
    cases["shapes"] = (shapes, size[0], size[1], args.shapes_batch)
    # the demo's network before issue 13: the ASPP on res5 at detectron2's rates
    res5 = load_config(Config, SHAPES_CONFIG, ["model.panoptic_deeplab.aspp_feature=res5", "model.panoptic_deeplab.aspp_dilations=[6,12,18]"])
    cases["shapes_res5"] = (res5, size[0], size[1], args.shapes_batch)
    # the demo before its silhouette vote (the add-on model.addons.silhouette)
    voted = load_config(Config, SHAPES_CONFIG, ["model.addons.silhouette=null"])
    cases["shapes_mean_probability"] = (voted, size[0], size[1], args.shapes_batch)
    sognet_cases = (
        ("sognet_shapes", []),
        ("sognet_shapes_before", SOGNET_BEFORE),
        ("sognet_shapes_conv_box_head", ["model.sognet.box_head_conv_layers=4"]),
        ("sognet_shapes_box_roi_14", ["model.sognet.box_roi_resolution=14"]),
    )
    for name, overrides in sognet_cases:
        sognet = load_config(Config, SOGNET_CONFIG, overrides)
        cases[name] = (sognet, *sognet.input.crop_size, args.shapes_batch)
    r52 = load_config(Config, R52_CONFIG, ["model.categories=shapes", "input.crop_size=[512,1024]"])
    cases["r52_512x1024"] = (r52, 512, 1024, args.r52_batch)
    configs = {}
    for name, (config, height, width, batch) in cases.items():
        split = f"{name}_{height}x{width}"
        if not (data_root / split / "panoptic.json").is_file():
            generate_split(data_root, max(8, 2 * batch), ShapesConfig(height=height, width=width), seed=0, split=split)
        overrides = {
            "data": {"root": str(data_root), "train": {"folder": split}, "num_workers": args.workers},
            "solver": {"batch_size": batch, "log_period": 1, "checkpoint_period": 10**9, "tensorboard": False},
            "test": {"eval_period": 0},
            "device": args.device,
        }
        data = to_dict(config)
        for section, values in overrides.items():
            data[section] = {**data[section], **values} if isinstance(values, dict) else values
        configs[name] = from_dict(Config, data)
    return configs


def run_ours(config: Config, output_dir: Path, warmup: int, iters: int) -> dict[str, float]:
    """images/s and data-wait share of ``train`` over the iterations after ``warmup``."""
    config.solver.max_iter = warmup + iters
    config.output_dir = str(output_dir)
    train(config, overwrite=True, progress=no_progress)
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()][warmup:]
    step_time = sum(r["time_per_iter"] for r in records)
    data_time = sum(r["time_per_iter"] * r["data_wait_share"] for r in records)
    return {"images_per_s": len(records) * config.solver.batch_size / step_time, "data_wait_share": data_time / step_time}


def run_plain(config: Config, warmup: int, iters: int) -> dict[str, float]:
    """The peer: augmentation, targets, forward, backward and step all in the main process."""
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    model = build_model(config).to(device).train()
    if config.solver.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    dataset = build_dataset(config, "train", instances=model.uses_instances)
    make_targets = model.data_transform()
    i = config.input
    augment = training_transforms(tuple(i.crop_size), i.min_scale, i.max_scale, i.flip)
    batch_size = config.solver.batch_size
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.solver.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=config.solver.amp == "fp16")
    times = []
    for step in range(warmup + iters):
        start = time.perf_counter()
        items = [make_targets(augment(dataset[(step * batch_size + k) % len(dataset)])) for k in range(batch_size)]
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = sum(model(items).values())
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss.item()  # wait for the device, as our loop does once a step
        times.append(time.perf_counter() - start)
    return {"images_per_s": iters * batch_size / sum(times[warmup:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cases", nargs="+", default=["shapes", "shapes_res5", "r52_512x1024"])
    parser.add_argument("--precisions", nargs="+", default=None, help="default: fp32 bf16 (+ fp16 on cuda)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--r52-iters", type=int, default=None, help="iterations of the R52 case (default --iters)")
    parser.add_argument("--shapes-batch", type=int, default=8)
    parser.add_argument("--r52-batch", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--data", type=Path, default=Path("outputs") / "bench_train_data")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    precisions = args.precisions or (["fp32", "bf16", "fp16"] if device.type == "cuda" else ["fp32", "bf16"])

    configs = case_configs(args, args.data)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.cases:
            iters = args.r52_iters if name.startswith("r52") and args.r52_iters else args.iters
            for precision in precisions:
                config = configs[name]
                config.solver.amp = "off" if precision == "fp32" else precision
                config.solver.channels_last = args.channels_last
                config.solver.compile = args.compile
                ours = run_ours(config, Path(tmp) / f"{name}_{precision}", args.warmup, iters)
                plain = run_plain(config, args.warmup, iters)
                row = {
                    "case": name,
                    "precision": precision,
                    "batch_size": config.solver.batch_size,
                    "crop_size": list(config.input.crop_size),
                    "iterations": iters,
                    "parameters": sum(p.numel() for p in build_model(config).parameters()),
                    "ours": ours,
                    "plain_loop": plain,
                    "ours_over_plain": ours["images_per_s"] / plain["images_per_s"],
                }
                rows.append(row)
                print(
                    f"{name:14s} {precision:5s} batch {row['batch_size']:2d} | ours {ours['images_per_s']:7.2f} img/s, "
                    f"data wait {100 * ours['data_wait_share']:4.1f}% | plain loop {plain['images_per_s']:7.2f} img/s "
                    f"| ours/plain {row['ours_over_plain']:.2f}",
                    flush=True,
                )

    probe = build_model(configs[args.cases[0]])
    result = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "workers": args.workers,
        "warmup": args.warmup,
        "channels_last": args.channels_last,
        "compile": args.compile,
        "reads_instances": probe.uses_instances,
        "shapes_config": str(SHAPES_CONFIG),
        "command": " ".join(sys.argv),
        "rows": rows,
    }
    out = args.output or Path("outputs") / f"bench_train_{device.type}.json"
    write_json(out, result, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
