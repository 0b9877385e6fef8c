"""The package's import structure: no cycle among module-level imports, and light subpackages.

``export/`` and ``triton/`` name shared types (``FallbackArtifact``, ``ProfileSet``, tolerances) from
small modules, so importing them does not pull in Polygraphy (a TensorRT tool) or the user-facing
``aitune_triton.config``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "aitune_triton"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level_imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The package modules ``path`` imports when it is imported: its top-level statements (inside
    ``if``/``try`` too, except ``if TYPE_CHECKING:``), not the imports inside functions."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If):
                if not _is_type_checking(node.test):
                    visit(node.body)
                    visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                found.add(base)
                found.update("%s.%s" % (base, alias.name) for alias in node.names)  # a submodule by name

    visit(ast.parse(path.read_text()).body)
    return {m for m in found if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(paths)
    return {name: _module_level_imports(path, name, known) for name, path in paths.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), or a module importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_no_import_cycle_among_module_level_imports():
    graph = import_graph()
    assert len(graph) > 50 and "aitune_triton.export.torch_export" in graph
    assert "aitune_triton.export.fallback_artifact" in graph["aitune_triton.triton.python_model"]
    assert cycles(graph) == []


# The pipeline's steps in order: a step's modules import only earlier steps (and the small shared
# modules at the package's top level), so data flows forward.
PIPELINE = ("export", "tensorrt", "triton", "validate", "tune", "deploy")


def test_the_subpackages_import_only_earlier_steps_of_the_pipeline():
    backward = []
    for name, deps in import_graph().items():
        parts = name.split(".")
        if len(parts) < 3 or parts[1] not in PIPELINE:
            continue
        step = PIPELINE.index(parts[1])
        for dep in deps:
            dep_parts = dep.split(".")
            if len(dep_parts) >= 2 and dep_parts[1] in PIPELINE and PIPELINE.index(dep_parts[1]) > step:
                backward.append("%s -> %s" % (name, dep))
    assert backward == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_export_and_triton_import_neither_polygraphy_nor_the_user_config():
    modules = sorted(_module_name(p) for sub in ("export", "triton") for p in (PACKAGE / sub).glob("*.py"))
    code = ("import importlib, json, sys\n"
            "for name in sys.argv[1:]:\n"
            "    importlib.import_module(name)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'polygraphy'\n"
            "                        or m == 'aitune_triton.config')))\n")
    proc = subprocess.run([sys.executable, "-c", code, *modules], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "aitune_triton.export.torch_export" in modules and "aitune_triton.triton.repository" in modules
    assert json.loads(proc.stdout.splitlines()[-1]) == []
