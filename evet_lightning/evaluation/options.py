"""Command-line metadata for the fields of a configuration dataclass, and the converters options use.

A field becomes an option by carrying ``metadata=cli_option(...)``; :mod:`evet_lightning.cli` generates the
``argparse`` arguments from the dataclass alone, so adding an option is one edit: the field. The generator
derives what it can from the field:

- the flag: ``--field-name``; a ``bool`` that defaults to ``True`` becomes ``--no-field-name`` (store false);
- the value type: ``convert`` when given, else the field's type (``int``, ``float``, ``str``); a ``Literal``
  type gives the choices;
- required: a field without a default.

``help`` may use ``{default}`` (and format specs such as ``{default:g}``). A converter takes the option's text
and returns the value or raises ``ValueError`` with a message that completes ``argument --flag: ...``. A field
typed ``float | Literal["auto"]`` with a converter that accepts both is parsed by that converter alone.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "OPTION_KEY",
    "CliOption",
    "alpha_grid_value",
    "alpha_value",
    "auto_or_positive_int",
    "CAFFE_NORMALIZATION",
    "cli_option",
    "non_negative_float",
    "non_negative_int",
    "normalization_value",
    "parse_normalization",
    "positive_int",
]

#: The key of :class:`CliOption` in a dataclass field's ``metadata``.
OPTION_KEY = "cli"


@dataclass(frozen=True)
class CliOption:
    """How a configuration field appears on the command line (see the module docstring)."""

    help: str
    metavar: str | None = None
    convert: Callable[[str], Any] | None = None


def cli_option(help: str, *, metavar: str | None = None, convert: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """``field(metadata=cli_option(...))``: make a configuration field a command-line option."""
    return {OPTION_KEY: CliOption(help=help, metavar=metavar, convert=convert)}


def positive_int(text: str) -> int:
    """``"3"`` -> ``3``; ``ValueError`` for anything that is not an integer >= 1."""
    return _integer(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """``"0"`` -> ``0``; ``ValueError`` for anything that is not an integer >= 0."""
    return _integer(text, 0, "a non-negative integer")


def non_negative_float(text: str) -> float:
    """``"0.5"`` -> ``0.5``; ``ValueError`` for a negative, infinite or non-numeric value."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a non-negative number, got {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"expected a non-negative number, got {text!r}")
    return value


def alpha_value(text: str) -> float | Literal["auto"]:
    """``"auto"`` -> ``"auto"``, ``"0.3"`` -> ``0.3``; ``ValueError`` for anything else (a negative number too)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return non_negative_float(text)
    except ValueError:
        raise ValueError(f"expected 'auto' or a non-negative number, got {text!r}") from None


def alpha_grid_value(text: str) -> tuple[float, ...]:
    """``"0,0.25,1"`` -> ``(0.0, 0.25, 1.0)``: comma-separated non-negative numbers, strictly ascending."""
    parts = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not part for part in parts):
        raise ValueError(f"expected comma-separated non-negative numbers (e.g. 0,0.25,1), got {text!r}")
    grid = tuple(non_negative_float(part) for part in parts)
    if any(later <= earlier for earlier, later in itertools.pairwise(grid)):
        raise ValueError(f"expected strictly ascending alphas, got {text!r}")
    return grid


def auto_or_positive_int(text: str) -> int | Literal["auto"]:
    """``"auto"`` -> ``"auto"``, ``"8"`` -> ``8``; ``ValueError`` for anything else."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return positive_int(text)
    except ValueError:
        raise ValueError(f"expected 'auto' or a positive integer, got {text!r}") from None


def _integer(text: str, low: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"expected {what}, got {text!r}") from None
    if value < low:
        raise ValueError(f"expected {what}, got {text!r}")
    return value


#: TorchRay's VOC and COCO ResNet-50s (converted from Caffe): RGB in 0-255 minus the mean, no division by a std.
#: On ``[0, 1]`` pixels that is ``(x - mean / 255) / (1 / 255)`` (decision 53).
CAFFE_NORMALIZATION: tuple[tuple[float, float, float], tuple[float, float, float]] = (
    (123.68 / 255.0, 116.779 / 255.0, 103.939 / 255.0),
    (1.0 / 255.0, 1.0 / 255.0, 1.0 / 255.0),
)


def parse_normalization(text: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``--normalization``'s text -> ``(mean, std)`` for ``[0, 1]`` pixels, or ``None`` for ``none``.

    ``imagenet`` (torchvision's statistics), ``caffe`` (:data:`CAFFE_NORMALIZATION`), ``none`` (``[0, 1]`` pixels
    as they are) or ``MEAN/STD``, each three comma-separated numbers (R,G,B) for ``[0, 1]`` pixels, the stds
    positive; ``ValueError`` for anything else.

    Example:
        >>> parse_normalization("0.5,0.5,0.5/0.25,0.25,0.25")
        ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    """
    from evet_lightning.imagenet import IMAGENET_NORMALIZATION

    name = text.strip().lower()
    if name in ("imagenet", "caffe", "none"):
        return {"imagenet": IMAGENET_NORMALIZATION, "caffe": CAFFE_NORMALIZATION, "none": None}[name]
    expected = "imagenet, caffe, none or MEAN/STD as R,G,B/R,G,B for [0, 1] pixels (e.g. 0.5,0.5,0.5/0.25,0.25,0.25)"
    mean_text, slash, std_text = text.partition("/")
    try:
        mean = tuple(float(part) for part in mean_text.split(","))
        std = tuple(float(part) for part in std_text.split(","))
    except ValueError:
        raise ValueError(f"expected {expected}, got {text!r}") from None
    if not slash or len(mean) != 3 or len(std) != 3 or not all(map(math.isfinite, mean + std)):
        raise ValueError(f"expected {expected}, got {text!r}")
    if not all(value > 0 for value in std):
        raise ValueError(f"expected positive stds in --normalization, got {text!r}")
    return mean, std


def normalization_value(text: str) -> str:
    """``--normalization``'s converter: the text itself, once :func:`parse_normalization` accepts it."""
    parse_normalization(text)
    return text.strip()
