"""The second base class of :class:`~evet_lightning.EVETCallback`: ``lightning.pytorch.Callback`` when the
``lightning`` package is installed (it declares the same hooks as ``pytorch_lightning.Callback``), so both
``pytorch_lightning.Trainer`` and ``lightning.pytorch.Trainer`` accept the callback; ``object`` otherwise."""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["LightningCallback"]

if TYPE_CHECKING:

    class LightningCallback:
        """``lightning.pytorch.Callback`` for type checkers (it declares the same hooks as ``pl.Callback``)."""

else:
    try:
        from lightning.pytorch import Callback as LightningCallback
    except ImportError:  # only the `pytorch_lightning` distribution is installed
        LightningCallback = object
