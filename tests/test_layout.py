"""The package layout stays a tree a newcomer can read bottom-up: no import circles, no borrowed privates.

Every module under rag/, web/, eval/ and indexes/ is parsed with ``ast`` (nothing is imported) and
each ``import``/``from ... import`` of one of these packages becomes an edge of a module graph:
- module-level imports (what runs when the module is imported), and
- imports inside functions and methods (the lazy ones: Ray, torch, a model only when used).
Neither graph may hold a cycle. The second is the stricter one: a lazy import hides a circle from
Python, not from the next person, who then cannot tell which module sits on which. Importing
``a.b.c`` also runs ``a/__init__`` and ``a/b/__init__``, so those count as edges too, except the
packages the importing module lives in (Python has loaded them first) unless it names them itself.

No module may ``from X import _name`` from another module: a name the rest of the code needs is
made public where it is defined.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("rag", "web", "eval", "indexes")


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the packages (a package is its __init__.py)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _known(name: str) -> str | None:
    """The longest prefix of ``name`` that is one of our modules (``rag.store.database.Store`` -> the module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _imports(module: str, path: Path) -> list[tuple[str, str, tuple[str, ...], bool]]:
    """(target module, the text as written, names taken, inside a function) for each import of ours."""
    is_package = path.name == "__init__.py"
    out = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if (target := _known(alias.name)) is not None:
                        out.append((target, alias.name, (), in_function))
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: from the importing module's package
                    package = module.split(".") if is_package else module.split(".")[:-1]
                    package = package[:len(package) - (child.level - 1)]
                    base = ".".join(package + ([base] if base else []))
                if _known(base) is None:
                    continue
                for alias in child.names:  # `from a.b import c` takes the submodule a.b.c when there is one
                    submodule = f"{base}.{alias.name}"
                    target = submodule if submodule in MODULES else _known(base)
                    out.append((target, base, (alias.name,) if target != submodule else (), in_function))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), False)
    return out


IMPORTS = {module: _imports(module, path) for module, path in MODULES.items()}


def _graph(lazy: bool) -> dict[str, set[str]]:
    """Module -> the modules importing it runs (``lazy``: also those imported inside functions)."""
    graph: dict[str, set[str]] = {module: set() for module in MODULES}
    for module, imports in IMPORTS.items():
        own = set(_ancestors(module))
        for target, _, _, in_function in imports:
            if in_function and not lazy:
                continue
            implicit = [a for a in _ancestors(target) if a in MODULES and a not in own]
            graph[module].update(a for a in [*implicit, target] if a != module)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), each as a closed path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

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
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return components


def _describe(component: list[str], graph: dict[str, set[str]]) -> str:
    members = set(component)
    return "; ".join(f"{a} -> {b}" for a in component for b in sorted(graph[a] & members))


def test_the_modules_are_found():
    assert {"rag.library", "rag.store.database", "rag.ingest.pipeline", "rag.cluster.library", "web.api",
            "eval.cli", "indexes.base"} <= set(MODULES)
    assert any(in_function for imports in IMPORTS.values() for *_, in_function in imports)


@pytest.mark.parametrize("lazy", [False, True], ids=["module-level imports", "with imports inside functions"])
def test_no_import_cycles(lazy):
    graph = _graph(lazy)
    cycles = _cycles(graph)
    assert not cycles, "import circles: " + " | ".join(_describe(c, graph) for c in cycles)


def test_no_module_imports_another_modules_private_names():
    borrowed = [f"{module}: from {written} import {name}"
                for module, imports in IMPORTS.items()
                for target, written, names, _ in imports if target != module
                for name in names if name.startswith("_") and not name.startswith("__")]
    assert not borrowed, "private names taken across modules (make them public where defined): " + "; ".join(borrowed)


def test_the_checks_see_a_circle_and_a_private_import(tmp_path):
    """The graph code itself: a made-up circle through a lazy import is found, a straight line is not."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from rag.ingest.pipeline import _hidden, Ingester\n", encoding="utf-8")
    assert _imports("rag.m", source) == [("rag.ingest.pipeline", "rag.ingest.pipeline", ("_hidden",), True),
                                         ("rag.ingest.pipeline", "rag.ingest.pipeline", ("Ingester",), True)]
