"""The package's import structure: no cycle among its imports (type-only and function-local ones
included), no upward import, no name with two import paths, and light subpackages.

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


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Every package module ``path`` imports anywhere: at the top, under ``if TYPE_CHECKING:``, and
    inside functions. A type-only or deferred import is still a dependency of the design, so a
    cycle or an upward import hidden that way counts."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            submodules = {"%s.%s" % (base, alias.name) for alias in node.names} & known
            found.update(submodules)  # ``from package import module``: that module, not the package's names
            if len(submodules) < len(node.names):
                found.add(base)
    return {m for m in found if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(paths)
    return {name: _imports(path, name, known) for name, path in paths.items()}


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


def test_no_import_cycle_even_counting_type_only_and_local_imports():
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



def test_the_spec_step_imports_no_pipeline_subpackage():
    graph = import_graph()
    assert "aitune_triton.triton.manifest" not in graph["aitune_triton.probe"]
    for name in ("aitune_triton.probe", "aitune_triton.spec", "aitune_triton.source", "aitune_triton.probe_section"):
        assert [d for d in graph[name] if d.split(".")[1] in PIPELINE] == [], name


def _defined_names(path: Path) -> tuple[set[str], set[str]]:
    """(names a module defines at its top level, names it imports anywhere)."""
    tree = ast.parse(path.read_text())
    defined: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            defined.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
    imported = {alias.asname or alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names}
    return defined, imported


def test_every_name_has_one_import_path():
    """``from aitune_triton.X import n`` only where X defines n: a re-export gives a name two paths
    (the package's lazy public names in ``aitune_triton/__init__.py`` are the one exception)."""
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    names = {m: _defined_names(p) for m, p in paths.items()}
    sources = [p for d in ("aitune_triton", "tests", "benchmarks") for p in (ROOT / d).rglob("*.py")]
    twice = []
    for path in sources:
        try:
            tree = ast.parse(path.read_text())
        except SyntaxError:  # the test corpus has a broken model.py on purpose
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and not node.level and node.module in names \
                    and node.module != "aitune_triton":
                defined, imported = names[node.module]
                twice += ["%s: %s.%s" % (path.relative_to(ROOT), node.module, a.name) for a in node.names
                          if a.name not in defined and a.name in imported and "%s.%s" % (node.module, a.name)
                          not in paths]
    assert twice == []
