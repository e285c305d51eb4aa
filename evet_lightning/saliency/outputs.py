"""Logits from whatever a model's forward returns.

Classifiers do not all return a tensor: torchvision's GoogLeNet and Inception return named tuples in training
mode, Hugging Face models return a ``ModelOutput`` mapping with a ``logits`` key (and attribute), and custom
models return ``(logits, features)`` pairs or dicts. :func:`logits_from_output` is the one place that turns such an
output into the ``(N, K)`` logits every explainer and every score in this package works with.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

__all__ = ["OutputTransform", "logits_from_output"]

#: A callable that takes the model's output and returns its ``(N, K)`` logits.
OutputTransform = Callable[[Any], Tensor]

_RECOGNISED = (
    "a tensor, a tuple or list whose first element is the logits, a mapping with a 'logits' key, or an object "
    "with a `.logits` tensor attribute"
)


def logits_from_output(output: object, output_transform: OutputTransform | None = None) -> Tensor:
    """The logits in a model's ``output``.

    With ``output_transform`` the result is ``output_transform(output)``, which must be a tensor. Without it:

    - a tensor is the logits;
    - a mapping (a dict, a Hugging Face ``ModelOutput``) holds them under ``"logits"``;
    - any other object with a tensor attribute ``logits`` (a dataclass, a named tuple with a ``logits`` field)
      holds them there;
    - a tuple or list holds them first (torchvision's ``GoogLeNetOutputs`` and ``InceptionOutputs``).

    Raises:
        ValueError: the output is none of these; the message names its type and the fix, an
            ``output_transform=`` callable.

    Example:
        >>> import torch
        >>> logits = torch.zeros(2, 3)
        >>> logits_from_output((logits, "aux")) is logits, logits_from_output({"logits": logits}) is logits
        (True, True)
        >>> logits_from_output({"scores": logits}, output_transform=lambda out: out["scores"]) is logits
        True
    """
    if output_transform is not None:
        transformed = output_transform(output)
        if not isinstance(transformed, Tensor):
            raise ValueError(
                "Expected `output_transform` to return the logits as a tensor, but it returned "
                f"{type(transformed).__name__}"
            )
        return transformed
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping):
        value = output.get("logits")
        if isinstance(value, Tensor):
            return value
    elif isinstance(getattr(output, "logits", None), Tensor):
        return output.logits  # type: ignore[attr-defined]
    elif isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise ValueError(
        f"Expected the model to return logits ({_RECOGNISED}), but it returned {_describe(output)}; pass "
        "`output_transform=`, a callable that takes the model's output and returns the (N, K) logits"
    )


def _describe(output: object) -> str:
    if isinstance(output, Mapping):
        keys = ", ".join(repr(key) for key in list(output)[:8])
        return f"a {type(output).__name__} with keys [{keys}]"
    if isinstance(output, (tuple, list)):
        first = type(output[0]).__name__ if output else "nothing"
        return f"a {type(output).__name__} of {len(output)} whose first element is {first}"
    return f"a {type(output).__name__}"
