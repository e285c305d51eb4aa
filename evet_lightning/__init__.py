"""EVET saliency enhancement and explanation-quality metrics for PyTorch Lightning."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from evet_lightning.callbacks import EVETCallback
    from evet_lightning.saliency.evet import EVET, EVETResult

__version__ = "0.1.0"

__all__ = ["EVET", "EVETCallback", "EVETResult", "__version__"]

#: The module of each public name, imported on first use: the ``evet-lightning`` command imports this package
#: before its ``main`` runs, and torch and Lightning take seconds to import, so a Ctrl+C in those seconds would be a
#: traceback instead of ``main``'s one line (exit 130).
_PUBLIC = {
    "EVET": "evet_lightning.saliency.evet",
    "EVETResult": "evet_lightning.saliency.evet",
    "EVETCallback": "evet_lightning.callbacks",
}


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
