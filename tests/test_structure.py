"""The package's import structure: no circles between cogdiff modules (function-local imports count too), the
library never imports the workflow layer, and the fused kernels load without the attention front end."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "cogdiff"
WORKFLOW_MODULES = ("cogdiff.workflows", "cogdiff.compare", "cogdiff.report", "cogdiff.demo", "cogdiff.study")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def imported(name: str, path: Path, known) -> set:
    """The cogdiff modules that ``path`` imports anywhere in it (a submodule if the imported name is one)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            base = (f"{base}.{node.module}" if node.module else base) if node.level else node.module or ""
            for a in node.names:
                target = f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                if target in known and target != name:
                    out.add(target)
    return out


def import_graph() -> dict:
    known = modules()
    return {name: imported(name, path, known) for name, path in known.items()}


def circles(graph: dict) -> list:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    graph = import_graph()
    assert "cogdiff.kernels.reference" in graph["cogdiff.attention"]  # the graph sees relative imports
    assert "cogdiff.kernels.cog_triton" in graph["cogdiff.attention"]  # and function-local ones
    assert circles(graph) == []


def test_library_never_imports_the_workflow_layer():
    graph = import_graph()
    upward = {
        (m, t) for m, targets in graph.items() if not m.startswith(WORKFLOW_MODULES)
        for t in targets if t.startswith(WORKFLOW_MODULES)
    }
    assert upward == set()


def test_kernels_load_without_the_attention_front_end():
    pytest.importorskip("triton")
    code = "import sys, cogdiff.kernels.cog_triton; print('cogdiff.attention' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "False"
