"""The rule of what may import what (docs/architecture.md), checked on the source and at run time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import import_graph  # noqa: E402


@pytest.fixture(scope="module")
def report() -> dict:
    return import_graph.report()


def test_no_module_imports_a_higher_layer(report):
    """foundation < config < data < evaluation < models < engine < commands; function-local imports count."""
    assert report["upward_imports"] == []


def test_the_import_graph_has_no_cycle(report):
    assert report["cycles"] == []


def test_no_model_reads_its_config_after_the_build(report):
    assert report["config_reads"]["model_reads_outside_builders"] == {"functions": 0, "reads": 0}


def test_the_engine_names_no_model_family():
    """Names, attributes and strings of the engine's code (docstrings aside) mention no family:
    it knows models through their contract only (no ``predict_relations`` probing, no family switch)."""
    import ast
    import re

    family = re.compile(r"sognet|deeplab|upsnet|relation|heuristic", re.IGNORECASE)
    found = []
    for path in sorted((REPO / "src" / "panopticlab" / "engine").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
            and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            words = []
            if isinstance(node, ast.Name):
                words = [node.id]
            elif isinstance(node, ast.Attribute):
                words = [node.attr]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                words = [node.value]
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                words = [alias.name for alias in node.names] + [getattr(node, "module", None) or ""]
            found += [f"{path.name}:{node.lineno}: {w}" for w in words if family.search(w)]
    assert found == []


def test_the_rules_catch_what_they_forbid(tmp_path):
    """The graph tool itself: an upward import and a cycle in a scratch package are found."""
    package = tmp_path / "panopticlab"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "errors.py").write_text("from panopticlab.data import dataset\n")  # foundation -> data
    (package / "data" / "__init__.py").write_text("")
    (package / "data" / "dataset.py").write_text("def f():\n    from panopticlab import errors\n")
    found = import_graph.report(tmp_path)
    assert [(e["from"], e["to"]) for e in found["upward_imports"]] == [
        ("panopticlab.errors", "panopticlab.data"),
        ("panopticlab.errors", "panopticlab.data.dataset"),
    ]
    assert found["cycles"] == [["panopticlab.data.dataset", "panopticlab.errors"]]


def _modules_loaded_by(statement: str) -> list[str]:
    """The modules a fresh interpreter has loaded after ``statement``."""
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(done.stdout)


def test_importing_the_config_loads_no_model_no_detection_stack_and_no_torch():
    loaded = _modules_loaded_by("from panopticlab.config import Config, load_config")
    assert [m for m in loaded if m.startswith("panopticlab.models")] == []
    assert [m for m in loaded if m.startswith("torchvision.models.detection")] == []
    assert "torch" not in loaded and "pycocotools" not in loaded
    assert "panopticlab.config" in loaded


def test_evaluation_imports_no_model():
    loaded = _modules_loaded_by("import panopticlab.evaluation, panopticlab.evaluation.cityscapes_instance")
    assert [m for m in loaded if m.startswith("panopticlab.models")] == []
    assert [m for m in loaded if m.startswith("torchvision.models.detection")] == []


def _addon_words() -> set[str]:
    """Every add-on's name, class name and module name (models/addons/)."""
    import inspect

    from panopticlab.models import addons
    from panopticlab.models.base import AddOn

    classes = [c for c in vars(addons).values() if inspect.isclass(c) and issubclass(c, AddOn) and c is not AddOn]
    assert classes, "models/addons/ exports no add-on"
    return {w.lower() for c in classes for w in (c.name, c.__name__, c.__module__.rsplit(".", 1)[-1])}


def _files_naming(folder: Path, words: set[str]) -> list[str]:
    """``file:line: word`` for each line of the Python files under ``folder`` that names one of ``words``
    or imports ``panopticlab.models.addons`` (docstrings and comments included)."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            lowered = line.lower()
            found += [f"{path.name}:{number}: {w}" for w in sorted(words) if w in lowered]
            if "models.addons" in lowered or "models import addons" in lowered:
                found.append(f"{path.name}:{number}: imports models.addons")
    return found


@pytest.mark.parametrize("family", ["panoptic_deeplab", "sognet"])
def test_no_family_module_imports_or_names_an_addon(family):
    """The families call add-ons through the contract only (models/base.py), so a new add-on or a
    new family needs no change on the other side."""
    assert _files_naming(REPO / "src" / "panopticlab" / "models" / family, _addon_words()) == []


def test_the_addon_scan_finds_what_it_forbids():
    words = _addon_words()
    assert {"silhouette", "bilateral"} <= words
    assert any("silhouette" in f for f in _files_naming(REPO / "src" / "panopticlab" / "models" / "addons", words))
