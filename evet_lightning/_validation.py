"""Argument checks shared by every layer: one definition of each rule, one error message.

Real numbers and integers of any kind are accepted (Python, numpy and 0-d tensor scalars, via
:class:`numbers.Real` and :func:`operator.index`); ``bool`` never counts as a number.
"""

from __future__ import annotations

import math
import numbers
import operator

import torch
from torch import Tensor

__all__ = ["MAX_ALPHA", "check_alpha", "check_index_vector", "check_int", "check_threshold", "real_number"]

#: The largest alpha accepted (decision 27). At 1e6 Eq. (5) already maps every pixel farther than 1e-6 from 0.5 to
#: 0 or 1; larger values change nothing more, and above float32's maximum (3.4e38) alpha itself would overflow
#: to inf, and inf * (0.5 - 0.5) is NaN.
MAX_ALPHA = 1e6


def real_number(value: object) -> float | None:
    """``float(value)`` for a finite real number that is not a bool, else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, Tensor):
        if value.numel() != 1 or value.is_complex() or value.dtype == torch.bool:
            return None
        value = value.item()
    if not isinstance(value, numbers.Real):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def check_int(name: str, value: object, low: int) -> int:
    """``operator.index(value)`` when it is an integer (not a bool) ``>= low``; ``ValueError`` naming ``name``."""
    try:
        number = None if isinstance(value, bool) else operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        number = None
    if number is None or number < low:
        what = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise ValueError(f"Expected `{name}` to be {what}, but got {value!r}")
    return number


def check_threshold(threshold: object) -> float:
    """Gamma of Eq. (2): a real number in (0, 1]."""
    number = real_number(threshold)
    if number is None or not 0 < number <= 1:
        raise ValueError(f"Expected `threshold` to be a float in (0, 1], but got {threshold!r}")
    return number


def check_alpha(alpha: object, name: str = "alpha") -> float:
    """A boost strength of Eq. (5): a real number in [0, :data:`MAX_ALPHA`]."""
    number = real_number(alpha)
    if number is None or not 0 <= number <= MAX_ALPHA:
        what = "a float in [0, 1e6] or 'auto'" if name == "alpha" else "a float in [0, 1e6]"
        raise ValueError(f"Expected `{name}` to be {what}, but got {alpha!r}")
    return number


def check_index_vector(name: str, value: object, device: torch.device) -> Tensor:
    """``value`` as a 1-D int64 tensor on ``device``; a ``ValueError`` naming ``name`` for any other shape or type."""
    if not isinstance(value, Tensor) or value.ndim != 1:
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"Expected `{name}` to be a 1-D integer tensor of shape (P,), but got {shape}")
    if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        raise ValueError(f"Expected `{name}` to be an integer tensor, but got {value.dtype}")
    return value.to(device=device, dtype=torch.long)
