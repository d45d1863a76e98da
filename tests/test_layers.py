"""The package reads top to bottom: no module imports, directly or through others, a module that imports it
(imports inside functions count too). The schema (`config.py`) is the bottom layer."""

from __future__ import annotations

import ast
from pathlib import Path

import cnnvis_cli

PACKAGE = Path(cnnvis_cli.__file__).parent


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imports_of(path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that `path` imports anywhere in its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name in known}


def import_graph() -> dict[str, set[str]]:
    known = module_names()
    return {name: imports_of(path, known) - {name} for name, path in known.items()}


def cycle_through(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A chain of imports from `start` back to itself, if there is one."""
    stack, seen = [(start, [start])], set()
    while stack:
        name, chain = stack.pop()
        for imported in graph[name]:
            if imported == start:
                return [*chain, start]
            if imported not in seen:
                seen.add(imported)
                stack.append((imported, [*chain, imported]))
    return None


def test_no_module_imports_itself_through_others() -> None:
    graph = import_graph()
    cycles = [cycle for name in sorted(graph) if (cycle := cycle_through(graph, name))]
    assert not cycles, "import cycle: " + " -> ".join(cycles[0])


def test_the_schema_is_the_bottom_layer() -> None:
    assert import_graph()["cnnvis_cli.config"] <= {"cnnvis_cli.errors"}


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycle_through({"a": {"b"}, "b": {"c"}, "c": {"a"}}, "a") == ["a", "b", "c", "a"]
    assert cycle_through({"a": {"b"}, "b": set()}, "a") is None
