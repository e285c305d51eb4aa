"""Logits from whatever a model's forward returns."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

__all__ = ["logits_from_output"]


def logits_from_output(output: Any, output_transform: Callable[[Any], Tensor] | None = None) -> Tensor:
    """The ``(B, K)`` logits in ``output``: ``output_transform(output)`` when given, else ``output`` itself."""
    logits = output_transform(output) if output_transform is not None else output
    if not isinstance(logits, Tensor):
        raise ValueError(
            f"Expected the model to return a logits tensor, but got {type(logits).__name__}; "
            "pass `output_transform=` (model output -> (B, K) logits)"
        )
    return logits
