"""The import graph of `quart_iot` has no cycle: no two modules import each other, even
through others, and even from inside a function (STYLE.md)."""

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "quart_iot"

# Cycles in code other engineers are rewriting this session, each as a set of modules of the
# cycle (a comment names who fixes it); a cycle not listed here fails the test.
KNOWN_CYCLES: set[frozenset[str]] = set()


def module_names() -> dict[str, Path]:
    """Every module of the package by its dotted name (a package by its own name)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def imported(name: str, path: Path, modules: dict[str, Path]) -> Iterator[str]:
    """The package's modules that `name` imports, at its top level or inside a function."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = absolute(node, package)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"  # `from package import module`
                if submodule in modules:
                    yield submodule
                elif base in modules:
                    yield base


def absolute(node: ast.ImportFrom, package: str) -> str:
    """The module a `from ... import` names, relative imports resolved."""
    if not node.level:
        return node.module or ""
    parts = package.split(".")
    base = ".".join(parts[: len(parts) - node.level + 1])
    return f"{base}.{node.module}" if node.module else base


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: set(imported(name, path, modules)) - {name} for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_the_graph_sees_imports_of_every_kind() -> None:
    graph = import_graph()
    assert "quart_iot.store.extension" in graph["quart_iot.store"]  # from a package's __init__
    assert "quart_iot.store" in graph["quart_iot.app"]  # `from quart_iot.store import name`
    assert "quart_iot.blueprints.configs" in graph["quart_iot.app"]  # `from pkg import module`
    assert "quart_iot.oidc.keys" in graph["quart_iot.oidc.extension"]  # inside a function


def test_cycles_are_found() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e", "d"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}}) == [["a", "b"], ["c", "d"]]


def test_the_package_has_no_import_cycle() -> None:
    components = [set(component) for component in cycles(import_graph())]
    unexpected = [
        sorted(component)
        for component in components
        if not any(known <= component for known in KNOWN_CYCLES)
    ]
    assert unexpected == [], "modules that import each other (through the others listed)"
    # A cycle that was fixed leaves the known list, so the list cannot hide a new one.
    fixed = [known for known in KNOWN_CYCLES if not any(known <= c for c in components)]
    assert fixed == []
