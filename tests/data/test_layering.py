"""The package's import layers: data/ and models/ never import each other, and no module-level import cycle.

Read from the source (``ast``), so the test sees imports whatever has already been imported. Imports inside
functions are left out: they run after every module is loaded, which is how a lower module may use a higher one
lazily.
"""

from __future__ import annotations

import ast
from pathlib import Path

import evet_lightning

PACKAGE = Path(evet_lightning.__file__).parent


def module_imports() -> dict[str, set[str]]:
    """``{module: {evet_lightning modules it imports at module level}}``."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.parse(path.read_text()).body:  # module level only
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{alias.name}" for alias in node.names]
            for target in names:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target.startswith("evet_lightning") and target != name:
                    targets.add(target)
        graph[name] = targets
    return graph


def _subpackage(module: str) -> str:
    """``evet_lightning.data.photos`` -> ``data``; ``evet_lightning`` -> ``""``."""
    return [*module.split("."), ""][1]


def test_data_and_models_do_not_import_each_other() -> None:
    graph = module_imports()
    crossing = [
        (source, target)
        for source, targets in graph.items()
        for target in targets
        if {_subpackage(source), _subpackage(target)} == {"data", "models"}
    ]
    assert crossing == []


def test_no_module_level_import_cycle() -> None:
    graph = module_imports()
    visiting: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> None:
        if module in done:
            return
        assert module not in visiting, " -> ".join([*visiting[visiting.index(module) :], module])
        visiting.append(module)
        for target in sorted(graph[module]):
            visit(target)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
