"""The state-dict keys and shapes of SOGNet's and UPSNet's released models, from their own definitions.

The released checkpoints (SOGNet-50 COCO, UPSNet-50 COCO / Cityscapes) cannot be downloaded here, but
their model definitions are public: this tool builds the released networks with the released code
and writes what their ``state_dict()`` holds (key, shape, dtype) and the parameter count to JSON, for
``tests/data/released_keys/``. The converters (``panopticlab convert sognet|upsnet``) are tested
against those lists, so a key list is the released code's, not ours.

How the released code is made to build on current PyTorch without its CUDA extensions:

* the repository is read with git (``git archive``) into a scratch folder, never modified on disk;
* modules that are compiled in the original build (``*/_ext/*``, the Cython ``bbox`` and ``nms``
  modules) and the data-loading packages (:data:`DATA_PACKAGES`: OpenCV, SciPy...) are replaced by stand-ins whose every attribute raises when *called*:
  building a network only defines its layers (``nn.Conv2d``, ``nn.Linear``, ``nn.BatchNorm2d`` and
  the released ``DeformConv`` module, whose parameters are plain ``nn.Parameter``\\ s), it calls none
  of the compiled operators;
* ``collections.Sequence`` and its siblings (removed in Python 3.10) point to ``collections.abc``;
* ``easydict`` (the released config container) is a 20-line stand-in (attribute access to nested
  dicts) and ``yaml.load`` gets PyYAML's safe loader (the released call passes no loader, which
  PyYAML >= 6 refuses);
* ``Tensor.cuda()`` returns the tensor itself (the released ``DeformConv`` creates its weight on
  the GPU);
* the released config module is loaded and ``update_config`` applied to the released experiment
  YAML *before* the model modules are imported, as the released ``train.py`` / ``test.py`` do.

    python tools/released_sognet_keys.py --project sognet --repo /work/.mirror/LaoYang1994+SOGNet/repo \\
        --experiment configs/sognet_r50_coco_4gpu_novoid.yaml --output tests/data/released_keys/sognet_r50_coco.json
    python tools/released_sognet_keys.py --project upsnet --repo /work/.mirror/uber-research+UPSNet/repo \\
        --experiment upsnet/experiments/upsnet_resnet50_coco_16gpu.yaml --output tests/data/released_keys/upsnet_r50_coco.json
"""

from __future__ import annotations

import argparse
import collections
import collections.abc
import importlib
import importlib.abc
import importlib.machinery
import io
import json
import subprocess
import sys
import tarfile
import tempfile
import types
from pathlib import Path

#: the released packages, their model constructor and the modules compiled in the original build
PROJECTS = {
    "sognet": {"package": "sognet", "builder": ("sognet.models.sognet", "resnet_50_sognet")},
    "upsnet": {"package": "upsnet", "builder": ("upsnet.models.resnet_upsnet", "resnet_50_upsnet")},
}
COMPILED = ("._ext.", ".bbox.bbox.", ".nms.cpu_nms.", ".nms.gpu_nms.", ".nms.nms_kernel.", ".rpn.anchors.")  # whole module names
#: third-party packages the released modules import for data loading and training only
DATA_PACKAGES = ("cv2", "scipy", "skimage", "horovod", "tensorboardX", "numba", "matplotlib", "networkx")


class _Unavailable:
    """Something of a module that is not here: a compiled operator of the original build raises when
    called; a data-loading package's function does nothing (the released modules call a few at import,
    e.g. ``matplotlib.use``)."""

    def __init__(self, name: str, raises: bool):
        self._name, self._raises = name, raises

    def __getattr__(self, attribute: str) -> "_Unavailable":
        return _Unavailable(f"{self._name}.{attribute}", self._raises)

    def __call__(self, *args, **kwargs):
        if self._raises:
            raise RuntimeError(f"{self._name}: a compiled operator of the released build (not available here)")
        return _Unavailable(f"{self._name}()", self._raises)


class _StandInModule(types.ModuleType):
    def __getattr__(self, attribute: str) -> _Unavailable:
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        return _Unavailable(f"{self.__name__}.{attribute}", self.__name__.split(".")[0] not in DATA_PACKAGES)


class _StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the compiled modules and the data-loading packages and gives them stand-ins."""

    def __init__(self, package: str, real_packages: tuple[str, ...] = ()):
        self.package = package
        self.stand_ins = tuple(p for p in DATA_PACKAGES if p not in real_packages)

    def _wanted(self, name: str) -> bool:
        if name.split(".")[0] in self.stand_ins:
            return True
        return name.startswith(self.package + ".") and any(part in name + "." for part in COMPILED)

    def find_spec(self, name, path=None, target=None):
        if self._wanted(name):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StandInModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def _easydict_module() -> types.ModuleType:
    """``easydict.EasyDict``: a dict whose (nested) items are also attributes."""

    class EasyDict(dict):
        def __init__(self, d=None, **kwargs):
            super().__init__()
            for key, value in {**(d or {}), **kwargs}.items():
                self[key] = value

        def __setitem__(self, key, value):
            if isinstance(value, dict) and not isinstance(value, EasyDict):
                value = EasyDict(value)
            elif isinstance(value, (list, tuple)):
                value = type(value)(EasyDict(v) if isinstance(v, dict) else v for v in value)
            super().__setitem__(key, value)

        def __getattr__(self, key):
            try:
                return self[key]
            except KeyError:
                raise AttributeError(key) from None

        def __setattr__(self, key, value):
            self[key] = value

    module = types.ModuleType("easydict")
    module.EasyDict = EasyDict
    return module


def _git(repo: Path, *arguments: str) -> bytes:
    """A git command on the repository (a work tree or a bare git directory)."""
    git_dir = repo / ".git" if (repo / ".git").exists() else repo
    return subprocess.run(["git", "--git-dir", str(git_dir), *arguments], check=True, capture_output=True).stdout


def extract(repo: Path, folder: Path) -> None:
    """The repository's HEAD tree into ``folder``."""
    archive = _git(repo, "archive", "HEAD")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")


def build_released_network(
    project: str, repo: Path, experiment: str, real_packages: tuple[str, ...] = ()
) -> tuple[object, tempfile.TemporaryDirectory]:
    """The released network of ``project`` under ``experiment``, built by the released code (see the
    module docstring), and the scratch folder holding the code (keep it alive while the code runs).
    ``real_packages``: data packages of :data:`DATA_PACKAGES` imported for real (the end-to-end
    run needs OpenCV's resize)."""
    import yaml

    spec = PROJECTS[project]
    package = spec["package"]
    scratch = tempfile.TemporaryDirectory()
    extract(repo, Path(scratch.name))
    sys.path.insert(0, scratch.name)
    sys.meta_path.insert(0, _StandInFinder(package, real_packages))
    sys.modules["easydict"] = _easydict_module()
    for name in ("Sequence", "Mapping", "Iterable", "MutableMapping"):  # Python < 3.10 aliases the code imports
        setattr(collections, name, getattr(collections.abc, name))
    load = yaml.load
    yaml.load = lambda stream, Loader=yaml.SafeLoader: load(stream, Loader)  # the released call passes no loader
    config_module = importlib.import_module(f"{package}.config.config")
    config_module.update_config(str(Path(scratch.name) / experiment))
    module_name, builder = spec["builder"]
    import torch

    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # the released DeformConv makes its weight with .cuda()
    return getattr(importlib.import_module(module_name), builder)(), scratch


def released_state_dict(project: str, repo: Path, experiment: str) -> dict:
    """Build the released network of ``project`` under ``experiment`` and describe its state dict."""
    network, _scratch = build_released_network(project, repo, experiment)
    module_name, builder = PROJECTS[project]["builder"]
    state = network.state_dict()
    return {
        "project": project,
        "experiment": experiment,
        "builder": f"{module_name}.{builder}",
        "commit": _git(repo, "rev-parse", "HEAD").decode().strip(),
        "parameters": sum(p.numel() for p in network.parameters()),
        "keys": {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")} for k, v in state.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", choices=sorted(PROJECTS), required=True)
    parser.add_argument("--repo", type=Path, required=True, help="the released repository (a git directory)")
    parser.add_argument("--experiment", required=True, help="the released experiment YAML, relative to the repository")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    description = released_state_dict(args.project, args.repo, args.experiment)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(description, indent=1) + "\n")
    print(f"{args.output}: {len(description['keys'])} keys, {description['parameters']:,} parameters")


if __name__ == "__main__":
    main()
