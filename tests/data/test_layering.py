"""The package's import layers (docs/design.md, "Layout and layers"): every import goes down, data/ and models/ never
import each other, and no module-level import cycle.

Read from the source (``ast``), so the test sees imports whatever has already been imported. The layering tests see
every import, also those inside functions (a lazy import that runs back up the layers is still a dependency on a
higher layer); the cycle test sees the module-level ones, the ones that run when a module is loaded.
"""

from __future__ import annotations

import ast
from pathlib import Path

import evet_lightning

PACKAGE = Path(evet_lightning.__file__).parent


#: The layers, bottom first: a module may import modules of a lower layer and of its own subpackage only.
#: The package's ``__init__`` is the public facade over callbacks/ and saliency/, which cli/ reads its version from.
LAYERS: tuple[frozenset[str], ...] = tuple(
    frozenset(names.split())
    for names in (
        "_validation _model_state _outputs",
        "functional imagenet",
        "saliency metrics visualization data models",
        "callbacks",
        "<package>",
        "evaluation",
        "cli",
        "__main__",
    )
)


def imported_names(tree: ast.Module, *, lazy: bool) -> list[str]:
    """Dotted names ``tree`` imports (``from a.b import c`` gives ``a.b.c``), inside functions too when ``lazy``."""
    names = []
    for node in ast.walk(tree) if lazy else tree.body:
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module, "a relative import (this package imports absolutely)"
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def module_imports(*, lazy: bool = True) -> dict[str, set[str]]:
    """``{module: {evet_lightning modules it imports}}``: every import, or only module-level ones (``lazy=False``)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for target in imported_names(ast.parse(path.read_text()), lazy=lazy):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target.startswith("evet_lightning") and target != name:
                targets.add(target)
        graph[name] = targets
    return graph


def _subpackage(module: str) -> str:
    """``evet_lightning.data.photos`` -> ``data``; ``evet_lightning`` -> ``""``."""
    return [*module.split("."), ""][1]


def _layer(module: str) -> int:
    subpackage = _subpackage(module) or "<package>"
    return next(index for index, names in enumerate(LAYERS) if subpackage in names)


def test_every_module_is_in_a_layer() -> None:
    for module in module_imports():
        _layer(module)


def test_every_import_goes_down_the_layers() -> None:
    upward = [
        (source, target)
        for source, targets in module_imports().items()
        for target in targets
        if _subpackage(source) != _subpackage(target) and _layer(target) >= _layer(source)
    ]
    assert upward == []


def test_a_lazy_import_up_the_layers_is_caught() -> None:
    """The scan sees imports inside functions, like the one functional/deletion_insertion.py used to make."""
    source = "import torch\n\n\ndef logits():\n    from evet_lightning.saliency.outputs import logits_from_output\n"
    assert imported_names(ast.parse(source), lazy=False) == ["torch"]
    assert imported_names(ast.parse(source), lazy=True) == [
        "torch",
        "evet_lightning.saliency.outputs.logits_from_output",
    ]
    assert _layer("evet_lightning.saliency.outputs") > _layer("evet_lightning.functional.deletion_insertion")


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
    graph = module_imports(lazy=False)
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
