"""The package's import graph and its house rules, measured from the source (no import is run).

    python tools/import_graph.py                  # summary on the terminal
    python tools/import_graph.py --output F.json  # everything as JSON
    python tools/import_graph.py --src DIR        # another checkout's src/ (e.g. a git worktree)

What it reads, for every module of ``src/panopticlab``: each ``import`` / ``from ... import``
(module level and inside functions alike, relative ones resolved), kept when it names a
panopticlab module. ``from panopticlab.x import y`` counts as an import of ``panopticlab.x.y``
when that is a module, else of ``panopticlab.x``.

What it reports:

* **layers** (:data:`LAYERS`, lowest first): an *upward* import is one from a module to a module
  of a higher layer; a module may import its own layer and the ones below;
* **cycles**: strongly connected groups of modules (function-local imports included; importing
  ``a.b.c`` also runs package ``a.b``'s ``__init__``, so it counts as an import of that too);
* **longest functions**: by source lines, the signature and docstring included;
* **importers** (``--who-imports PACKAGE``): which modules outside a package import each of its
  modules (by default the add-ons: only ``models/__init__.py`` should);
* **config reads**: attribute reads on a config section, counted per function. A read is an
  attribute chain rooted at a name ``config`` / ``cfg`` or ``self.config``, or at a local variable
  assigned from such a chain (``c = self.config``, ``s = config.solver``), or a ``getattr`` on one.
  ``model_reads_outside_builders`` counts those in ``panopticlab.models`` outside functions named
  ``build_*`` / ``resolve_*``: a model reading its config while it trains or predicts.

``tests/test_architecture.py`` holds the rules (no upward import, no cycle) against this.
"""

from __future__ import annotations

import argparse
import ast
import json
from dataclasses import dataclass, field
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "panopticlab"

#: Lowest first. A module belongs to the first group with a prefix that matches its dotted name
#: (prefix ``panopticlab.x`` covers ``panopticlab.x`` and ``panopticlab.x.*``).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "foundation",
        (
            "panopticlab.errors",
            "panopticlab.fileio",
            "panopticlab.structures",
            "panopticlab.masks",
            "panopticlab.parallel",
            "panopticlab.progress",
            "panopticlab.distributed",
            "panopticlab.resumable",
            "panopticlab.weights",
            "panopticlab.logs",
            "panopticlab.checkpoint",  # before the refactor: safetensors I/O (+ converters, then)
        ),
    ),
    ("config", ("panopticlab.config",)),
    ("data", ("panopticlab.data",)),
    ("evaluation", ("panopticlab.evaluation", "panopticlab.visualize")),
    ("models", ("panopticlab.models",)),
    ("engine", ("panopticlab.engine", "panopticlab.export")),
    ("commands", ("panopticlab.cli", "panopticlab.demo", "panopticlab.__main__", "panopticlab")),
]


def layer_of(module: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes if p != PACKAGE):
            return index
    if module == PACKAGE:
        return len(LAYERS) - 1
    raise KeyError(f"{module} is in no layer of tools/import_graph.py")


@dataclass
class Module:
    name: str
    path: Path
    imports: dict[str, list[int]] = field(default_factory=dict)  # imported module -> line numbers


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def discover(src: Path = SRC) -> dict[str, Module]:
    modules = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        name = module_name(path, src)
        modules[name] = Module(name, path)
    return modules


def _resolve(node: ast.ImportFrom, current: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = current.split(".") if is_package else current.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def read_imports(modules: dict[str, Module]) -> None:
    for module in modules.values():
        tree = ast.parse(module.path.read_text(encoding="utf-8"))
        is_package = module.path.name == "__init__.py"
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(node, module.name, is_package)
                for alias in node.names:
                    candidate = f"{base}.{alias.name}"
                    targets.append(candidate if candidate in modules else base)
            for target in targets:
                while target and target not in modules:  # import a.b.c -> the deepest known module
                    target = target.rpartition(".")[0]
                # Importing a.b.c runs the __init__ of a.b too: an edge to each enclosing package
                # (but the root's, which every module would otherwise share).
                while target and target != PACKAGE:
                    if target != module.name and not module.name.startswith(target + "."):
                        module.imports.setdefault(target, []).append(node.lineno)
                    target = target.rpartition(".")[0]


def cycles(modules: dict[str, Module]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in modules[v].imports:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(modules):
        if v not in index:
            visit(v)
    return sorted(found)


def upward_imports(modules: dict[str, Module]) -> list[dict[str, object]]:
    found = []
    for module in modules.values():
        for target, lines in module.imports.items():
            if target == PACKAGE:  # `import panopticlab.x` runs the package's __init__: not a dependency on it
                continue
            if layer_of(target) > layer_of(module.name):
                found.append(
                    {
                        "from": module.name,
                        "to": target,
                        "lines": lines,
                        "from_layer": LAYERS[layer_of(module.name)][0],
                        "to_layer": LAYERS[layer_of(target)][0],
                    }
                )
    return sorted(found, key=lambda e: (e["from"], e["to"]))


def longest_functions(modules: dict[str, Module], count: int = 10) -> list[dict[str, object]]:
    functions = []
    for module in modules.values():
        tree = ast.parse(module.path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append({"function": f"{module.name}:{node.name}", "line": node.lineno, "lines": node.end_lineno - node.lineno + 1})
    return sorted(functions, key=lambda f: -f["lines"])[:count]


_CONFIG_ROOTS = {"config", "cfg"}


def _root_is_config(node: ast.expr, aliases: set[str]) -> bool:
    """``config.x``, ``cfg.x``, ``self.config.x`` or ``alias.x`` (an attribute chain on a config)."""
    while isinstance(node, ast.Attribute):
        if isinstance(node.value, ast.Name) and node.value.id == "self" and node.attr in ("config", "cfg"):
            return True
        node = node.value
    return isinstance(node, ast.Name) and (node.id in _CONFIG_ROOTS or node.id in aliases)


def config_reads(modules: dict[str, Module]) -> dict[str, object]:
    per_function: dict[str, int] = {}
    for module in modules.values():
        if module.name.startswith("panopticlab.config"):
            continue  # the schema's own methods (checks, derived values) are not readers elsewhere
        tree = ast.parse(module.path.read_text(encoding="utf-8"))
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            aliases: set[str] = set()
            reads = 0
            for node in ast.walk(func):
                if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                    value = node.value
                    if isinstance(value, ast.Attribute) and _root_is_config(value, aliases) or (
                        isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name) and value.value.id == "self" and value.attr == "config"
                    ):
                        aliases.add(node.targets[0].id)
            for node in ast.walk(func):
                is_attribute_read = isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load)
                if is_attribute_read and _root_is_config(node.value, aliases) and not _is_inner(node, func):
                    reads += 1
                elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr":
                    if node.args and _root_is_config(ast.Attribute(value=node.args[0], attr="_", ctx=ast.Load()), aliases):
                        reads += 1
            if reads:
                per_function[f"{module.name}:{func.name}"] = per_function.get(f"{module.name}:{func.name}", 0) + reads
    # Model code that reads a config outside a builder reads it while it trains or predicts.
    at_run_time = {
        name: n
        for name, n in per_function.items()
        if name.startswith("panopticlab.models")
        and not name.split(":")[0].endswith(".config")  # a schema module (before the refactor it lived here)
        and not name.split(":")[1].startswith(("build_", "resolve_"))
    }
    return {
        "functions": len(per_function),
        "reads": sum(per_function.values()),
        "model_reads_outside_builders": {"functions": len(at_run_time), "reads": sum(at_run_time.values())},
        "by_function": dict(sorted(per_function.items(), key=lambda kv: -kv[1])),
    }


def _is_inner(node: ast.Attribute, func: ast.AST) -> bool:
    """Whether ``node`` is the inner part of a longer chain (``config.a`` inside ``config.a.b``):
    a chain counts once, as its outermost attribute."""
    for parent in ast.walk(func):
        if isinstance(parent, ast.Attribute) and parent.value is node:
            return True
    return False


def importers(modules: dict[str, Module], prefix: str) -> dict[str, list[str]]:
    """Each module under ``prefix`` (``panopticlab.x`` covers ``panopticlab.x`` and ``panopticlab.x.*``)
    -> the modules outside it that import it."""
    inside = lambda name: name == prefix or name.startswith(prefix + ".")  # noqa: E731
    return {
        target: sorted(m.name for m in modules.values() if target in m.imports and not inside(m.name))
        for target in sorted(name for name in modules if inside(name))
    }


def report(src: Path = SRC, who_imports: tuple[str, ...] = ()) -> dict[str, object]:
    modules = discover(src)
    read_imports(modules)
    edges = sum(len(m.imports) for m in modules.values())
    return {
        "importers": {prefix: importers(modules, prefix) for prefix in who_imports},
        "modules": len(modules),
        "imports": edges,
        "layers": [name for name, _ in LAYERS],
        "cycles": cycles(modules),
        "upward_imports": upward_imports(modules),
        "longest_functions": longest_functions(modules),
        "config_reads": config_reads(modules),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="write the whole report as JSON")
    parser.add_argument("--src", type=Path, default=SRC, help="the src/ folder to read (default: this checkout's)")
    parser.add_argument("--who-imports", nargs="*", default=["panopticlab.models.addons"], metavar="MODULE",
                        help="list the modules outside each of these packages that import it (default: the add-ons)")
    args = parser.parse_args()
    result = report(args.src, tuple(args.who_imports))
    print(f"{result['modules']} modules, {result['imports']} imports between them")
    print(f"cycles: {len(result['cycles'])}")
    for group in result["cycles"]:
        print("  " + " <-> ".join(group))
    print(f"upward imports: {len(result['upward_imports'])}")
    for edge in result["upward_imports"]:
        print(f"  {edge['from']} ({edge['from_layer']}) -> {edge['to']} ({edge['to_layer']}), line {edge['lines'][0]}")
    print("longest functions:")
    for f in result["longest_functions"]:
        print(f"  {f['lines']:4d}  {f['function']}")
    reads = result["config_reads"]
    print(f"config reads: {reads['reads']} in {reads['functions']} functions")
    outside = reads["model_reads_outside_builders"]
    print(f"  by model code outside its builders: {outside['reads']} in {outside['functions']} functions")
    for prefix, found in result["importers"].items():
        print(f"who imports {prefix}:")
        for target, sources in found.items():
            print(f"  {target}: {', '.join(sources) or 'nothing outside it'}")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
