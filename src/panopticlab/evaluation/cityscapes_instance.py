"""Cityscapes instance-level AP: the "AP" column of Cityscapes tables, by cityscapesscripts.

:func:`cityscapes_instance_ap` feeds predicted instance masks to cityscapesscripts'
``evalInstanceLevelSemanticLabeling`` (the ``cityscapes`` extra: ``pip install
'panopticlab[cityscapes]'``; a clear error says so when it is missing). It is not COCO AP:
overlaps 0.5:0.95, no area ranges, ground-truth objects under 100 px and groups ignored.
:class:`CityscapesInstanceEvaluator` is the evaluator protocol around it.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import types
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from panopticlab import distributed
from panopticlab.data.cityscapes import INSTANCE_LABELS
from panopticlab.errors import InputError
from panopticlab.evaluation.instance import encode_id_map
from panopticlab.structures import PanopticResult

#: One predicted instance: a mask (bool [H, W] array or COCO RLE dict), its label id, its score.
Detection = tuple[Any, int, float]


def cityscapes_instance_ap(
    gt_folder: str | os.PathLike,
    predictions: Mapping[str, Sequence[Detection]],
    *,
    work_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Cityscapes instance-level AP of predicted masks, by cityscapesscripts' evaluator.

    The predictions are written in the evaluator's format (per image a text file of
    ``mask.png label_id score`` lines and one binary PNG per mask) in a temporary folder, and
    ``evalInstanceLevelSemanticLabeling``'s own matching and AP functions are run on them. Its
    side files (the ``gtInstances.json`` cache beside the installed module, ``matches.json``
    in the working directory) are not written.

    Args:
        gt_folder: the ``gtFine/<split>`` folder; image ``<city>_<seq>_<frame>`` is scored
            against ``<city>/<image id>_gtFine_instanceIds.png`` there.
        predictions: image id -> its detections ``(mask, label_id, score)``, with label ids
            of the 8 instance classes (person 24 ... bicycle 33). Every image given is scored,
            including those without detections; images not given are not.
        work_dir: where to put the temporary folder (default: the system's).

    Returns:
        ``AP`` (mean over overlaps 0.5:0.95 and the classes with ground truth), ``AP50``,
        ``per_class`` (name -> ``{"AP", "AP50"}``, NaN for a class without ground truth), in [0, 1];
        ``num_images``.
    """
    cs_eval, instances2dict = _import_cityscapes_evaluation()
    gt_folder = Path(gt_folder)
    instance_label_ids = {label.id for label in INSTANCE_LABELS}
    gt_files = []
    for image_id in predictions:
        gt = gt_folder / str(image_id).split("_")[0] / f"{image_id}_gtFine_instanceIds.png"
        if not gt.is_file():
            raise InputError(f"{gt}: not found (the ground truth of image {image_id!r})")
        gt_files.append(str(gt.resolve()))
    if not gt_files:
        raise InputError("cityscapes_instance_ap: no images to evaluate")

    with tempfile.TemporaryDirectory(prefix="cityscapes_instances.", dir=work_dir) as tmp:
        tmp_path = Path(tmp).resolve()
        prediction_files = []
        for image_id, detections in predictions.items():
            lines = []
            for k, (mask, label_id, score) in enumerate(detections):
                if int(label_id) not in instance_label_ids:
                    raise InputError(
                        f"image {image_id!r}, detection {k}: label id {label_id} is not one of the Cityscapes "
                        f"instance classes {sorted(instance_label_ids)}"
                    )
                if isinstance(mask, Mapping):
                    rle = dict(mask)
                    if isinstance(rle.get("counts"), str):
                        rle["counts"] = rle["counts"].encode("ascii")
                    mask = mask_utils.decode(rle)
                mask_name = f"{image_id}_{k}.png"
                Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255).save(tmp_path / mask_name)
                lines.append(f"{mask_name} {int(label_id)} {float(score)!r}\n")
            txt = tmp_path / f"{image_id}_pred.txt"
            txt.write_text("".join(lines))
            prediction_files.append(str(txt))

        args = _evaluator_arguments(cs_eval, tmp_path)
        output = io.StringIO()
        try:
            with contextlib.redirect_stdout(output):
                cs_eval.setInstanceLabels(args)
                gt_instances = instances2dict(gt_files, False)
                matches = cs_eval.matchGtWithPreds(prediction_files, gt_files, gt_instances, args)
                aps = cs_eval.evaluateMatches(matches, args)
                averages = cs_eval.computeAverages(aps, args)
        except SystemExit:  # cityscapesscripts' printError exits the process
            raise RuntimeError(f"cityscapesscripts stopped: {output.getvalue().strip()[-500:]}") from None
    return {
        "AP": float(averages["allAp"]),
        "AP50": float(averages["allAp50%"]),
        "per_class": {
            name: {"AP": float(scores["ap"]), "AP50": float(scores["ap50%"])}
            for name, scores in averages["classes"].items()
        },
        "num_images": len(gt_files),
    }


def _import_cityscapes_evaluation() -> tuple[Any, Callable]:
    try:
        from cityscapesscripts.evaluation import evalInstanceLevelSemanticLabeling as cs_eval
        from cityscapesscripts.evaluation.instances2dict import instances2dict
    except ImportError:
        raise InputError(
            "the Cityscapes instance AP (test.cityscapes_instance_gt) uses cityscapesscripts' evaluator: "
            "pip install 'panopticlab[cityscapes]'"
        ) from None
    if not hasattr(np, "in1d") and not isinstance(cs_eval.np, _NumpyWithIn1d):
        # cityscapesscripts 2.3.0 calls np.in1d, which numpy 2.4 removed; lend that one module
        # np.isin's flattened form (what np.in1d returned) rather than patching numpy itself.
        cs_eval.np = _NumpyWithIn1d("numpy")
    return cs_eval, instances2dict


class _NumpyWithIn1d(types.ModuleType):
    """numpy, plus ``in1d`` = ``isin(...).ravel()``."""

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)

    @staticmethod
    def in1d(a: Any, b: Any) -> np.ndarray:
        return np.isin(a, b).ravel()


def _evaluator_arguments(cs_eval: Any, prediction_folder: Path) -> Any:
    """A copy of the evaluator's module-level settings (overlaps, minimum region sizes...), quiet,
    reading predictions from ``prediction_folder`` and writing no files."""
    args = cs_eval.CArgs()
    args.__dict__.update(vars(cs_eval.args))
    args.quiet = True
    args.JSONOutput = False
    args.colorized = False
    args.predictionPath = str(prediction_folder)
    args.predictionWalk = None
    args.gtInstancesFile = str(prediction_folder / "gtInstances.json")  # not used: we pass the instances
    return args


class CityscapesInstanceEvaluator:
    """The evaluator protocol around :func:`cityscapes_instance_ap`: collects the scored thing
    segments of panoptic predictions (each thing segment is one detection, as detectron2's
    Panoptic-DeepLab reports its Cityscapes AP) and scores them at the end.

    Under ``torch.distributed`` every rank processes its own images; :meth:`evaluate` gathers
    them, scores on rank 0 and hands the result to every rank.

    Args:
        gt_folder: the ``gtFine/<split>`` folder of the images evaluated.
    """

    def __init__(self, gt_folder: str | os.PathLike):
        self.gt_folder = Path(gt_folder)
        if not self.gt_folder.is_dir():
            raise InputError(f"{self.gt_folder}: not a folder (expected gtFine/<split> for the Cityscapes instance AP)")
        _import_cityscapes_evaluation()  # a missing dependency is an error now, not after the predictions
        self.reset()

    def reset(self) -> None:
        self.predictions: dict[str, list[Detection]] = {}

    def process(self, inputs: Sequence[Mapping[str, Any]], outputs: Sequence[PanopticResult]) -> None:
        for item, result in zip(inputs, outputs, strict=True):
            self.add(item["image_id"], result)

    def add(self, image_id: Any, result: PanopticResult) -> None:
        """Add one image's result (dataset category ids = Cityscapes label ids; thing segments need a ``score``)."""
        things = [s for s in result.segments if s.isthing]
        for s in things:
            if s.score is None:
                raise InputError(f"image {image_id!r}, segment {s.id}: the Cityscapes AP needs a score for every thing segment")
        rles = encode_id_map(np.asarray(result.id_map), [s.id for s in things])
        self.predictions[str(image_id)] = [(rle, s.category_id, float(s.score)) for rle, s in zip(rles, things)]

    def evaluate(self) -> dict[str, Any]:
        """``{"cityscapes_instance": cityscapes_instance_ap(...)}`` over every image added (on every rank)."""
        merged = {k: v for part in distributed.all_gather(self.predictions) for k, v in part.items()}
        return {"cityscapes_instance": distributed.broadcast_from_main(lambda: cityscapes_instance_ap(self.gt_folder, merged))}
