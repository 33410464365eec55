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
