"""No import cycles among the project's packages, lazy (function-level) imports included.

A cycle that only works because one side imports inside a function is still a cycle: it breaks as soon as someone
moves that import to the top, and it hides which module is the lower layer. Graph rules follow Python's semantics:
importing `a.b.c` runs `a/__init__` and `a/b/__init__` first, except for packages that contain the importing module
(those are already being initialised when it runs).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sweeps", "landscape", "analysis", "hydra_plugins")


def _modules(root: Path) -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imported(tree: ast.Module, name: str, is_package: bool) -> set[str]:
    """Every module name an `import` statement anywhere in the module refers to (top level, functions, classes)."""
    package = name if is_package else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            out.add(target)
            out.update(f"{target}.{a.name}" for a in node.names)  # `from pkg import submodule`
    return out


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    modules = _modules(root)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        own_packages = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        if path.name == "__init__.py":
            own_packages.add(name)
        edges = set()
        for target in _imported(ast.parse(path.read_text()), name, path.name == "__init__.py"):
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                explicit = i == len(parts) or (i == len(parts) - 1 and prefix + "." + parts[-1] not in modules)
                if prefix in modules and prefix != name and (explicit or prefix not in own_packages):
                    edges.add(prefix)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan), printed as a path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_path_in(graph, comp) for comp in components]


def _path_in(graph: dict[str, set[str]], comp: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first inside the component)."""
    start = min(comp)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & comp):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if w not in parents:
                    parents[w] = v
                    nxt.append(w)
        frontier = nxt
    return sorted(comp)


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_graph_sees_lazy_and_relative_imports(tmp_path):
    """The checker itself: a function-level import closing a loop is reported; a package importing its own
    submodules (which import their siblings) is not."""
    pkg = tmp_path / "sweeps"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from sweeps import b\n")
    (pkg / "b.py").write_text("def f():\n    from .a import x\n")
    (pkg / "sub" / "__init__.py").write_text("from sweeps.sub._one import y\n")
    (pkg / "sub" / "_one.py").write_text("from sweeps.sub._two import z\n")
    (pkg / "sub" / "_two.py").write_text("import os\n")
    (pkg / "c.py").write_text("from sweeps.sub._two import z\n")  # runs sub/__init__ first
    graph = import_graph(tmp_path)
    assert graph["sweeps.c"] == {"sweeps.sub", "sweeps.sub._two"}
    assert find_cycles(graph) == [["sweeps.a", "sweeps.b", "sweeps.a"]]
