"""The server package's import graph, every import counted (also those only for type checking):
its modules import downwards only, and only the runtime service (above the run queue, for the
admin API) imports the coordinator; drivers get the round services instead."""

from __future__ import annotations

import ast
import graphlib
import pathlib

import quorum.server

PACKAGE = pathlib.Path(quorum.server.__file__).parent


def _imports() -> dict[str, set[str]]:
    """Each module of quorum.server -> the modules of quorum.server it imports."""
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    graph: dict[str, set[str]] = {}
    for name in modules:
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        found: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "quorum.server":
                found |= {alias.name for alias in node.names if alias.name in modules}
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module.removeprefix("quorum.server."))
            elif isinstance(node, ast.Import):
                found |= {a.name.removeprefix("quorum.server.") for a in node.names}
        graph[name] = found & modules
    return graph


def test_the_server_package_has_no_import_circle() -> None:
    sorter = graphlib.TopologicalSorter(_imports())
    sorter.prepare()  # raises CycleError naming the circle


def test_only_the_runtime_service_imports_the_coordinator() -> None:
    importers = {name for name, imported in _imports().items() if "coordinator" in imported}
    assert importers == {"runtime"}


def test_the_graph_is_read() -> None:
    # A parser that found nothing would pass the tests above.
    graph = _imports()
    assert {"services", "phases", "sessions"} <= graph["rounds"]
    assert "task_book" in graph["services"]
