"""The schema of an experiment: :class:`Config` and its sections, with their defaults.

Defaults are detectron2's Panoptic-DeepLab R52-DSConv on Cityscapes. The model families'
sections are :class:`~panopticlab.config.panoptic_deeplab.PanopticDeepLabConfig` and
:class:`~panopticlab.config.sognet.SOGNetConfig`; each family's builder resolves its section
(and the few experiment values it depends on, such as ``input.crop_size``) once, when the model
is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from panopticlab.config.addons import AddOnsConfig
from panopticlab.config.loading import Section
from panopticlab.config.panoptic_deeplab import PanopticDeepLabConfig
from panopticlab.config.sognet import SOGNetConfig


@dataclass
class ModelConfig(Section):
    arch: Literal["panoptic_deeplab", "sognet"] = "panoptic_deeplab"
    #: "shapes", "cityscapes", "coco", or a JSON file with the categories
    categories: str = "cityscapes"
    panoptic_deeplab: PanopticDeepLabConfig = field(default_factory=PanopticDeepLabConfig)
    sognet: SOGNetConfig = field(default_factory=SOGNetConfig)
    #: what the model is given beyond its family's method (config/addons.py); none by default
    addons: AddOnsConfig = field(default_factory=AddOnsConfig)

    def problems(self) -> list[tuple[str, str]]:
        # the released SOGNet test merges on the network input's canvas, not the image's
        if self.arch == "sognet" and self.sognet.test_pipeline == "released":
            if self.addons.bilateral is not None and self.addons.bilateral.iterations > 0:
                return [("addons", "bilateral needs model.sognet.test_pipeline: panopticlab (the merge at the image's resolution)")]
            if self.addons.silhouette is not None and self.addons.silhouette.semantic_prior:
                return [("addons", "silhouette's semantic_prior needs model.sognet.test_pipeline: panopticlab")]
        return []


@dataclass
class SplitConfig(Section):
    """Where a split is: either ``folder`` (holding ``images/``, ``panoptic/``, ``panoptic.json``
    and optionally ``instances.json``, as ``panopticlab synth`` writes) or the explicit paths.
    Relative paths are relative to ``data.root``."""

    folder: str = ""
    image_folder: str = ""
    panoptic_json: str = ""
    panoptic_folder: str = ""
    instances_json: Optional[str] = None

    @property
    def is_set(self) -> bool:
        return bool(self.folder or (self.image_folder and self.panoptic_json and self.panoptic_folder))


@dataclass
class DataConfig(Section):
    root: str = "."
    train: SplitConfig = field(default_factory=SplitConfig)
    test: SplitConfig = field(default_factory=SplitConfig)
    num_workers: int = 2

    def problems(self) -> list[tuple[str, str]]:
        return [("num_workers", "must be >= 0")] if self.num_workers < 0 else []


@dataclass
class InputConfig(Section):
    crop_size: tuple[int, int] = (512, 1024)
    min_scale: float = 0.5
    max_scale: float = 2.0
    flip: bool = True

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if min(self.crop_size) < 1:
            found.append(("crop_size", "must be positive"))
        if not 0 < self.min_scale <= self.max_scale:
            found.append(("min_scale", f"must lie in (0, max_scale = {self.max_scale}]"))
        return found


@dataclass
class SolverConfig(Section):
    optimizer: Literal["adam", "sgd"] = "adam"
    base_lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    poly_power: float = 0.9
    warmup_iters: int = 1000
    warmup_factor: float = 0.001
    max_iter: int = 90_000
    #: images per iteration over all processes (detectron2's IMS_PER_BATCH)
    batch_size: int = 32
    #: "poly": warm-up then (1 - it / max_iter) ** poly_power; "step": warm-up then x gamma at each of ``steps``
    lr_scheduler: Literal["poly", "step"] = "poly"
    steps: tuple[int, ...] = ()
    gamma: float = 0.1
    #: clip the gradients' global L2 norm to this value; 0 = no clipping
    clip_grad_norm: float = 0.0
    #: mixed precision: "bf16" (CPU and GPU) or "fp16" (GPU, with a gradient scaler); "auto": bf16
    #: where the hardware computes it natively (GPUs that support it, CPUs with AVX512-BF16 or AMX),
    #: else off (an AVX2 CPU emulates bf16 convolutions about 100x slower than fp32)
    amp: Literal["off", "bf16", "fp16", "auto"] = "off"
    channels_last: bool = False
    compile: bool = False
    #: write a resumable checkpoint every this many iterations (and at the end)
    checkpoint_period: int = 5000
    #: log losses, learning rate, speed and data-wait time every this many iterations
    log_period: int = 20
    #: stop cleanly (final weights and a checkpoint written) after this many minutes; 0 = no limit.
    #: The budget is the run's, over every call: a run resumed with --resume gets what was left
    max_minutes: float = 0.0
    #: with a time budget: the poly decay follows the fraction of the budget spent instead of
    #: iteration / max_iter, and the run ends when the budget is spent (max_iter is no limit then),
    #: so a slow start or a busy spell costs steps, never the end of the schedule
    schedule_by_time: bool = False
    #: also write TensorBoard scalars (needs the ``tensorboard`` package); JSON lines are always written
    tensorboard: bool = True

    def problems(self) -> list[tuple[str, str]]:
        found = [(key, "must be at least 1") for key in ("max_iter", "batch_size", "checkpoint_period", "log_period") if getattr(self, key) < 1]
        if self.warmup_iters < 0:
            found.append(("warmup_iters", "must be >= 0"))
        if self.max_minutes < 0:
            found.append(("max_minutes", "must be >= 0 (0 = no limit)"))
        if self.schedule_by_time and self.lr_scheduler != "poly":
            found.append(("schedule_by_time", "needs lr_scheduler: poly (a step schedule counts iterations)"))
        return found


@dataclass
class TestConfig(Section):
    batch_size: int = 1
    #: evaluate on ``data.test`` every this many training iterations and at the end; 0 = never while training
    eval_period: int = 0
    #: also report instance AP of the thing classes (from the scored panoptic segments)
    compute_ap: bool = True
    #: Cityscapes instance AP (cityscapesscripts' evaluator, the "AP" of Cityscapes tables) against
    #: this ``gtFine/<split>`` folder, relative to ``data.root`` (e.g. ``gtFine/val``); "" = off.
    #: Reported as ``cityscapes_instance`` and as the summary's AP / AP50.
    cityscapes_instance_gt: str = ""

    def problems(self) -> list[tuple[str, str]]:
        found = [("batch_size", "must be at least 1")] if self.batch_size < 1 else []
        if self.eval_period < 0:
            found.append(("eval_period", "must be >= 0 (0 = never while training)"))
        return found


@dataclass
class Config(Section):
    """A whole experiment. Defaults: detectron2's Panoptic-DeepLab R52-DSConv on Cityscapes."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    input: InputConfig = field(default_factory=InputConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    test: TestConfig = field(default_factory=TestConfig)
    output_dir: str = "outputs/run"
    seed: int = 0
    #: "auto" (cuda:LOCAL_RANK when a GPU is there, else cpu), "cpu", "cuda"...
    device: str = "auto"
