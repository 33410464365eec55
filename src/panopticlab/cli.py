"""The ``panopticlab`` command.

Each sub-command is a pair of functions: ``_add_<name>(subparsers)`` declares its
arguments and ``_run_<name>(args) -> int`` calls the library. Imports of heavy modules
happen inside the run functions so that ``panopticlab --help`` stays fast.

The library logs (``logging``) and returns results; the command decides what is shown: the
library's INFO records on stderr while it runs (:func:`panopticlab.logs.show_logs`; ``-q``
keeps warnings only), its results (tables, paths) on stdout. Config overrides are
``KEY=VALUE`` words after the other arguments, on every command that reads a config.

A user mistake (:class:`~panopticlab.errors.InputError`) is printed on one line and the
command exits with status 2, like argparse's own usage errors.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path
from typing import Callable, Sequence

from panopticlab.errors import InputError


def _add_synth(subparsers) -> None:
    from panopticlab.data.synthetic import ShapesConfig

    defaults = ShapesConfig()
    p = subparsers.add_parser("synth", help="generate the built-in overlapping-shapes dataset")
    p.add_argument("--out", required=True, type=Path, help="dataset folder; the split is written to OUT/SPLIT")
    p.add_argument("--num-images", type=int, default=500)
    p.add_argument("--split", default="train")
    p.add_argument("--height", type=int, default=defaults.height)
    p.add_argument("--width", type=int, default=defaults.width)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overlap", type=float, default=defaults.overlap, help="chance that an object is placed to overlap another")
    p.add_argument("--crowd", type=float, default=defaults.crowd, help="chance of a crowd clump per image")
    p.add_argument("--void", type=float, default=defaults.void, help="chance of VOID blobs/border per image")
    p.add_argument(
        "--depth-rule",
        choices=["random", "size", "vertical", "class"],
        default=defaults.depth_rule,
        help="which of two overlapping things is in front: random (the placement order), size (smaller), "
        "vertical (lower in the image), class (a fixed class ranking)",
    )
    p.add_argument("--depth-consistency", type=float, default=defaults.depth_consistency, help="share of overlapping pairs that obey the rule")
    p.add_argument("--classes-per-image", type=int, default=defaults.classes_per_image, help="thing classes per image (0: all)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing split (only once the new one is complete)")
    p.add_argument("--pictures", type=int, default=0, metavar="N", help="also draw the first N images to OUT/SPLIT_pictures")


def _run_synth(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from panopticlab.data.synthetic import ShapesConfig, generate_split
    from panopticlab.progress import progress_bar

    if args.num_images < 1:
        raise InputError(f"--num-images must be at least 1, got {args.num_images}")
    config = replace(
        ShapesConfig(),
        height=args.height,
        width=args.width,
        overlap=args.overlap,
        crowd=args.crowd,
        void=args.void,
        depth_rule=args.depth_rule,
        depth_consistency=args.depth_consistency,
        classes_per_image=args.classes_per_image,
    )
    split_dir = generate_split(
        args.out,
        args.num_images,
        config,
        seed=args.seed,
        split=args.split,
        workers=args.workers,
        overwrite=args.overwrite,
        progress=progress_bar,
    )
    print(f"wrote {args.num_images} images to {split_dir}")
    if args.pictures:
        _draw_split(split_dir, split_dir.parent / f"{split_dir.name}_pictures", args.pictures)
    return 0


def _add_visualize(subparsers) -> None:
    p = subparsers.add_parser(
        "visualize",
        help="draw images with their panoptic segmentation",
        description="Draw image | overlay | segments, with a legend. Give a split folder (images/, panoptic/, "
        "panoptic.json) or the three paths explicitly.",
    )
    p.add_argument("split", nargs="?", type=Path, help="a split folder as written by 'panopticlab synth'")
    p.add_argument("--panoptic-json", type=Path)
    p.add_argument("--panoptic-folder", type=Path)
    p.add_argument("--image-folder", type=Path)
    p.add_argument("--out", required=True, type=Path, help="folder for the pictures")
    p.add_argument("--num", type=int, default=16, help="how many images to draw")


def _run_visualize(args: argparse.Namespace) -> int:
    from panopticlab.data.dataset import CocoPanopticDataset

    explicit = (args.panoptic_json, args.panoptic_folder, args.image_folder)
    if args.split is not None:
        dataset = CocoPanopticDataset.from_split_folder(args.split)
    elif all(p is not None for p in explicit):
        dataset = CocoPanopticDataset(args.image_folder, args.panoptic_json, args.panoptic_folder)
    else:
        raise InputError("visualize needs a split folder, or --panoptic-json, --panoptic-folder and --image-folder")
    written = _draw_dataset(dataset, args.out, args.num)
    print(f"wrote {written} pictures to {args.out}")
    return 0


def _draw_split(split_dir: Path, out: Path, num: int) -> int:
    from panopticlab.data.dataset import CocoPanopticDataset

    return _draw_dataset(CocoPanopticDataset.from_split_folder(split_dir), out, num)


def _draw_dataset(dataset, out: Path, num: int) -> int:
    from panopticlab.visualize import render_ground_truth, save_picture

    count = min(num, len(dataset))
    for k in range(count):
        item = dataset[k]
        image = item["image"].permute(1, 2, 0).numpy()
        picture = render_ground_truth(image, item["panoptic"], dataset.categories)
        save_picture(picture, out / f"{Path(item['file_name']).stem}.png")
    return count


def _add_prepare(subparsers) -> None:
    p = subparsers.add_parser(
        "prepare",
        help="build the derived files of a COCO or Cityscapes tree (resumable; originals untouched)",
        description="coco ROOT: ROOT/panopticlab/semantic_<split>/ (contiguous ids, 255 = VOID) and "
        "ROOT/panopticlab/instances_<split>.json (instances joined to their visible panoptic segments). "
        "cityscapes ROOT: gtFine/cityscapes_panoptic_<split>.json + PNG folder, as cityscapesscripts' "
        "createPanopticImgs writes them, and gtFine/<split>/<city>/*_gtFine_labelTrainIds.png. "
        "Run it again after an interruption to finish. See docs/datasets.md.",
    )
    p.add_argument("dataset", choices=["coco", "cityscapes"])
    p.add_argument("root", type=Path, help="the dataset folder (COCO: holding annotations/; Cityscapes: holding gtFine/)")
    p.add_argument(
        "--splits", nargs="+", default=None, help="default: coco train2017 val2017; cityscapes val train test (those present)"
    )
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--use-train-id", action="store_true", help="cityscapes: categories by trainId (files named *_trainId)")
    p.add_argument("--overwrite", action="store_true", help="rebuild every output, replacing earlier ones")


def _run_prepare(args: argparse.Namespace) -> int:
    from panopticlab.progress import progress_bar

    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers must be at least 1, got {args.workers}")
    if args.dataset == "coco":
        from panopticlab.data.prepare_coco import prepare_coco

        if args.use_train_id:
            raise InputError("--use-train-id applies to cityscapes only")
        reports = prepare_coco(args.root, args.splits, workers=args.workers, overwrite=args.overwrite, progress=progress_bar)
        for r in reports:
            joined = f", {r['matched']} of {r['instances']} instances matched in {r['instances_json']}" if "matched" in r else ""
            state = "already prepared" if r["skipped"] else f"semantic PNGs in {r['semantic_folder']}{joined}"
            print(f"{r['split']}: {r['images']} images, {state}")
    else:
        from panopticlab.data.cityscapes import prepare_cityscapes

        reports = prepare_cityscapes(
            args.root,
            args.splits,
            use_train_id=args.use_train_id,
            workers=args.workers,
            overwrite=args.overwrite,
            progress=progress_bar,
        )
        for r in reports:
            state = "already prepared" if r["skipped"] else f"wrote {r['json']} and {r['panoptic_folder']}/"
            print(f"{r['split']}: {r['images']} images, {state}")
    return 0


def _add_demo(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="the built-in default: shapes data -> train -> evaluate -> report",
        description="Generate the overlapping-shapes data, train Panoptic-DeepLab for a time budget (on a GPU when "
        "there is one), evaluate it on held-out images and write report.html. Shows a header, progress bars and "
        "the PQ table; -v adds the training log.",
    )
    p.add_argument("--output", type=Path, default=Path("outputs/demo"))
    p.add_argument("--minutes", type=float, default=10.0, help="training time budget")
    p.add_argument("--num-images", type=int, default=400, help="training images (validation gets a quarter)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(log_level=logging.WARNING)  # the bars and the tables say it; -v for the log


def _run_demo(args: argparse.Namespace) -> int:
    from panopticlab.demo import plan_demo, result_lines, run_demo
    from panopticlab.evaluation.report import print_results, per_class_table
    from panopticlab.progress import progress_bar
    from rich.console import Console

    if args.minutes <= 0 or args.num_images < 1:
        raise InputError("--minutes must be positive and --num-images at least 1")
    print("\n".join(plan_demo(args.output, minutes=args.minutes, num_train=args.num_images, seed=args.seed).lines()), flush=True)
    metrics, results = run_demo(args.output, minutes=args.minutes, num_train=args.num_images, seed=args.seed, progress=progress_bar)
    console = Console()
    console.print(per_class_table(results))
    print_results(results, console=console)
    print("\n".join(result_lines(metrics, args.output)))
    return 0


def _add_convert(subparsers) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert model-zoo weights to panopticlab's safetensors",
        description="Convert released weights to a .safetensors file that panopticlab.load_model reads. "
        "detectron2: a Panoptic-DeepLab .pkl (detectron2's model zoo, or the Panoptic-DeepLab seed's Xception-65 "
        "and HRNet models; read without running any code from it; the architecture is read from the file). "
        "sognet / upsnet: a released SOGNet or UPSNet .pth (torch.load with weights_only; no code runs) for the "
        "--config it is to be loaded with (configs/sognet/*_released.yaml).",
    )
    p.add_argument("source", choices=["detectron2", "sognet", "upsnet"], help="where the weights come from")
    p.add_argument("input", type=Path, help="e.g. model_final_23d03a.pkl or sognet_r50_coco.pth")
    p.add_argument("output", type=Path, help="e.g. r52_dsconv_cityscapes.safetensors")
    p.add_argument("--config", type=Path, help="sognet / upsnet: the config the weights are for")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def _run_convert(args: argparse.Namespace) -> int:
    if args.source in ("sognet", "upsnet"):
        from panopticlab.models.sognet.released import convert_released

        if args.config is None:
            raise InputError(f"convert {args.source} needs --config (e.g. configs/sognet/{args.source}_r50_coco_released.yaml)")
        summary = convert_released(args.input, args.config, args.output, overwrite=args.overwrite)
        print(f"wrote {summary.destination}: {summary.num_tensors} tensors ({summary.num_values:,} values) for {args.config}")
        return 0
    from panopticlab.models.panoptic_deeplab.detectron2 import convert_detectron2

    report = convert_detectron2(args.input, args.output, overwrite=args.overwrite)
    print(
        f"wrote {report.destination}: {report.num_tensors} tensors, {report.num_parameters:,} parameters, "
        f"{report.num_classes} classes, {report.backbone} backbone, {report.head_variant} heads, "
        f"decoder on {'/'.join(report.low_level_features)}"
    )
    return 0


def _add_export(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export Panoptic-DeepLab to ONNX (the network) or TorchScript (network + post-processing)",
        description="Export a Panoptic-DeepLab config and its weights. onnx: the network, with dynamic batch, "
        "height and width, checked against the eager network with onnxruntime; `panopticlab predict --onnx FILE` "
        "runs it with panopticlab's post-processing. torchscript: one file mapping an image [3, H, W] to the "
        "panoptic id map and its segment table (test-time augmentation and post-processing included), checked "
        "against predict. A file is written only if it passes its check.",
    )
    p.add_argument("--config", required=True, type=Path, help="the model's YAML config")
    p.add_argument("--weights", required=True, type=Path, help="a .safetensors file")
    p.add_argument("--format", required=True, help="onnx or torchscript")
    p.add_argument("--output", required=True, type=Path, help="the file to write, e.g. model.onnx or model.pt")
    p.add_argument("--size", type=int, nargs=2, default=(512, 1024), metavar=("HEIGHT", "WIDTH"), help="the example's size")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def _run_export(args: argparse.Namespace) -> int:
    from panopticlab.export import export_onnx, export_torchscript
    from panopticlab.models import load_model

    if args.format not in ("onnx", "torchscript"):
        raise InputError(f"--format {args.format}: unsupported (onnx or torchscript)")
    model = load_model(args.config, args.weights)
    if args.format == "torchscript":
        report = export_torchscript(model, args.output, sample_size=tuple(args.size), overwrite=args.overwrite)
    else:
        report = export_onnx(model, args.output, sample_size=tuple(args.size), overwrite=args.overwrite)
    sizes = " and ".join(f"{h}x{w}" for h, w in report.checked_sizes)
    written = f"wrote {report.path}: {report.size_bytes / 2**20:.1f} MiB"
    if args.format == "torchscript":
        print(f"{written}, equal to predict at {sizes}")
    else:
        worst = max(report.max_abs_difference.values())
        print(f"{written}, opset {report.opset}, checked with onnxruntime at {sizes} (largest relative difference {worst:.1e})")
    return 0


def _add_evaluate(subparsers) -> None:
    from panopticlab.evaluation.cli import add_evaluate_arguments

    p = subparsers.add_parser("evaluate", help="PQ/SQ/RQ of COCO panoptic predictions (panopticapi's rules)")
    add_evaluate_arguments(p)


def _run_evaluate(args: argparse.Namespace) -> int:
    from panopticlab.evaluation.cli import run_evaluate

    return run_evaluate(args)


def _add_config_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, type=Path, help="experiment YAML (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. solver.max_iter=1000")


#: a config override: a dotted key, '=', a value (a path such as data/x=1.png is not one: '/' before '=')
_OVERRIDE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*=")


def _split_overrides(words: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(other words, KEY=VALUE overrides)`` of a command's positional words."""
    overrides = [w for w in words if _OVERRIDE.match(w)]
    return [w for w in words if not _OVERRIDE.match(w)], overrides


def _load_experiment(args: argparse.Namespace):
    from panopticlab.config import Config, load_config

    return load_config(Config, args.config, args.overrides)


def _add_train(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model from a config (many GPUs: torchrun --nproc-per-node N -m panopticlab train ...)",
        description="Train on data.train, evaluate on data.test every test.eval_period iterations, write "
        "checkpoints, metrics and the final weights to output_dir.",
    )
    _add_config_arguments(p)
    p.add_argument("--resume", action="store_true", help="continue from output_dir/last_checkpoint")
    p.add_argument("--overwrite", action="store_true", help="start afresh in an output_dir that holds a run")
    p.add_argument("--max-minutes", type=float, default=None, help="stop cleanly after this long (default solver.max_minutes)")


def _run_train(args: argparse.Namespace) -> int:
    from panopticlab.engine import train

    result = train(_load_experiment(args), resume=args.resume, overwrite=args.overwrite, max_minutes=args.max_minutes)
    if os.environ.get("RANK", "0") == "0":  # torchrun: one line, not one per process
        print(f"iteration {result['iteration']}: final weights {result['weights']}")
    return 0


def _add_test(subparsers) -> None:
    p = subparsers.add_parser(
        "test",
        help="evaluate weights on the config's data.test split: PQ/SQ/RQ, mIoU, AP",
        description="Predict data.test, write the predictions in COCO panoptic format and the scores as JSON.",
    )
    _add_config_arguments(p)
    p.add_argument("--weights", required=True, type=Path, help="a .safetensors file (e.g. output_dir/model_final.safetensors)")
    p.add_argument("--output", type=Path, default=None, help="folder for predictions and metrics.json (default output_dir/test)")
    p.add_argument("--overwrite", action="store_true", help="replace earlier predictions there")


def _run_test(args: argparse.Namespace) -> int:
    from panopticlab.engine import test
    from panopticlab.evaluation.report import print_results
    from panopticlab.progress import progress_bar

    results = test(_load_experiment(args), args.weights, args.output, overwrite=args.overwrite, progress=progress_bar)
    if os.environ.get("RANK", "0") == "0":
        print_results(results)
    return 0


def _add_predict(subparsers) -> None:
    p = subparsers.add_parser(
        "predict",
        help="panoptic segmentation of images: COCO panoptic PNG + JSON and an overlay per image",
        description="Segment image files and folders of images. Config overrides (KEY=VALUE, e.g. "
        "model.panoptic_deeplab.tta_flip=true) may be given among them.",
    )
    p.add_argument("--config", required=True, type=Path, help="the model's YAML config")
    weights = p.add_mutually_exclusive_group(required=True)
    weights.add_argument("--weights", type=Path, help="a .safetensors file")
    weights.add_argument("--onnx", type=Path, help="an exported network (panopticlab export), run by onnxruntime")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_KEY=VALUE", help="image files or folders of images, and config overrides")
    p.add_argument("--output", required=True, type=Path, help="folder for the results")
    p.add_argument("--batch-size", type=int, default=None, help="images per batch (default test.batch_size)")
    p.add_argument(
        "--frozen", action="store_true",
        help="Panoptic-DeepLab: run the network as frozen TorchScript optimised for inference (oneDNN on CPUs; "
        "outputs equal up to float rounding; one trace per image size)",
    )  # fmt: skip
    p.add_argument(
        "--bf16", action="store_true",
        help="Panoptic-DeepLab: run the network under bfloat16 autocast (heads handed on as float32; results "
        "differ from fp32 by rounding; faster only where bf16 is native: recent GPUs, AVX512-BF16/AMX CPUs)",
    )  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace earlier results in --output")


def _run_predict(args: argparse.Namespace) -> int:
    from panopticlab.distributed import native_bf16, resolve_device
    from panopticlab.engine import predict_files
    from panopticlab.models import load_model
    from panopticlab.progress import progress_bar

    images, args.overrides = _split_overrides(args.inputs)
    if not images:
        raise InputError("predict needs at least one image file or folder")
    config = _load_experiment(args)
    if args.onnx is not None:
        from panopticlab.export import OnnxNetwork

        model = load_model(config, None)  # the config's post-processing around the exported network
        if not hasattr(model, "network"):
            raise InputError(f"{args.onnx}: --onnx runs Panoptic-DeepLab exports only, and {args.config} is not one")
        model.network = OnnxNetwork(args.onnx)
    else:
        device = resolve_device(config.device)
        model = load_model(config, args.weights, device=device)
    if args.frozen or args.bf16:
        flag = "--frozen" if args.frozen else "--bf16"
        if args.onnx is not None or not hasattr(model, "network"):
            raise InputError(f"{flag} applies to a Panoptic-DeepLab model run by PyTorch (not with --onnx)")
        if args.frozen and args.bf16:
            raise InputError("--frozen and --bf16 exclude each other (the frozen graph runs in fp32)")
    if args.frozen:
        from panopticlab.models.panoptic_deeplab.frozen import FrozenNetwork

        model.network = FrozenNetwork(model.network)
    if args.bf16:
        from panopticlab.models.panoptic_deeplab.bf16 import Bf16Network

        model.network = Bf16Network(model.network)
        if not native_bf16(device):
            logging.getLogger(__name__).warning(
                f"--bf16: {device} has no native bf16 (a CPU needs AVX512-BF16 or AMX); PyTorch's fallback "
                "convolutions are tens of times slower than fp32 (66x at 128x256 on an AVX2 CPU)"
            )
    batch_size = config.test.batch_size if args.batch_size is None else args.batch_size
    written = predict_files(
        model, images, args.output, batch_size=batch_size, overwrite=args.overwrite, progress=progress_bar
    )
    print(f"wrote {len(written)} predictions to {args.output}")
    return 0


COMMANDS: dict[str, tuple[Callable, Callable[[argparse.Namespace], int]]] = {
    "synth": (_add_synth, _run_synth),
    "visualize": (_add_visualize, _run_visualize),
    "prepare": (_add_prepare, _run_prepare),
    "demo": (_add_demo, _run_demo),
    "evaluate": (_add_evaluate, _run_evaluate),
    "convert": (_add_convert, _run_convert),
    "export": (_add_export, _run_export),
    "train": (_add_train, _run_train),
    "test": (_add_test, _run_test),
    "predict": (_add_predict, _run_predict),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="panopticlab", description="Panoptic segmentation toolkit.")
    parser.add_argument("-q", "--quiet", action="store_true", help="show warnings only, no progress log")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the progress log (the demo shows warnings only)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add, _ in COMMANDS.values():
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from panopticlab.logs import show_logs

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # KEY=VALUE words after an option (`train --config C --max-minutes 5 solver.base_lr=0.01`)
    # are overrides too; argparse hands a positional list only the words before the options.
    if hasattr(args, "inputs"):  # predict: images and overrides are told apart later
        args.inputs, extra = [*args.inputs, *extra], []
    overrides = [w for w in extra if _OVERRIDE.match(w)]
    if overrides and hasattr(args, "overrides"):
        args.overrides = [*args.overrides, *overrides]
        extra = [w for w in extra if not _OVERRIDE.match(w)]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    level = logging.WARNING if args.quiet else logging.INFO if args.verbose else getattr(args, "log_level", logging.INFO)
    try:
        with show_logs(level):
            return COMMANDS[args.command][1](args)
    except InputError as e:
        print(f"panopticlab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"panopticlab {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
