"""Imports flow downwards only: no import circle among medsam_lib's modules.

The graph is read from the source with ``ast`` (nothing imported): every ``import`` and ``from ... import``
anywhere in a module (top level, inside functions, relative or absolute) is an edge to the medsam_lib
module it names (``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg``).
"""
from __future__ import annotations

import ast
from pathlib import Path

import medsam_lib

PACKAGE_ROOT = Path(medsam_lib.__file__).resolve().parent

# Import edges (importer, imported) of circles another change of issue 17 is removing; being removed in
# issue 17: the integrator empties this list. An edge listed here that no longer exists fails the test.
KNOWN_CYCLE_EDGES_BEING_REMOVED: list[tuple[str, str]] = []  # none left (issue 17 removed store -> build)


def module_names(root: Path, package: str) -> dict[str, Path]:
    """{dotted module name: file} of every .py file under ``root`` (a package's __init__ is the package)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """{module: the package's modules it imports}, from every import statement in its source."""
    modules = module_names(root, package)

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                           for alias in node.names]
            for target in targets:
                if target == package or target.startswith(package + "."):
                    found = known(target)
                    if found is not None and found != name:
                        graph[name].add(found)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle (a → b → ... → a) per strongly connected group of modules (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(_circle_in(graph, group) for group in groups)


def _circle_in(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A shortest circle through the group's first module, staying inside the group (breadth first)."""
    start = min(group)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for succ in sorted(graph[node] & group):
                if succ == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if succ not in previous:
                    previous[succ] = node
                    following.append(succ)
        frontier = following
    raise AssertionError(f"no circle in strongly connected group {sorted(group)}")


def test_medsam_lib_has_no_import_circle():
    graph = import_graph(PACKAGE_ROOT, "medsam_lib")
    stale = [edge for edge in KNOWN_CYCLE_EDGES_BEING_REMOVED if edge[1] not in graph.get(edge[0], set())]
    assert not stale, f"these imports are gone: remove them from KNOWN_CYCLE_EDGES_BEING_REMOVED: {stale}"
    for importer, imported in KNOWN_CYCLE_EDGES_BEING_REMOVED:
        graph[importer].discard(imported)
    cycles = find_cycles(graph)
    assert not cycles, "import circles in medsam_lib:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_check_finds_circles_through_function_level_and_relative_imports(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from .low import thing\n")
    (package / "top.py").write_text("from .sub import low\n")
    (package / "sub" / "low.py").write_text("thing = 1\n\ndef later():\n    from .. import top\n    return top\n")
    (package / "alone.py").write_text("import pkg.sub.low\nfrom pkg.sub import thing\n")
    graph = import_graph(package, "pkg")
    assert graph["pkg.top"] == {"pkg.sub.low"} and graph["pkg.sub.low"] == {"pkg.top"}
    assert graph["pkg.alone"] == {"pkg.sub.low", "pkg.sub"} and graph["pkg.sub"] == {"pkg.sub.low"}
    assert find_cycles(graph) == [["pkg.sub.low", "pkg.top", "pkg.sub.low"]]
    (package / "sub" / "low.py").write_text("thing = 1\n")
    assert find_cycles(import_graph(package, "pkg")) == []
