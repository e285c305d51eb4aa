"""Logits from whatever a model's forward returns (the bottom layer: ``functional/`` and ``saliency/`` both read them).

Classifiers do not all return a tensor: torchvision's GoogLeNet and Inception return named tuples in training
mode, Hugging Face models return a ``ModelOutput`` mapping with a ``logits`` key (and attribute), and custom
models return ``(logits, features)`` pairs or dicts. :func:`logits_from_output` is the one place that turns such an
output into the ``(N, K)`` logits every explainer and every score in this package works with.

Binary classifiers (decision 26): ``(N, 1)`` logits z, one logit per image for the positive class, are read as the
two-class logits ``[-z/2, z/2]``, whose softmax is ``[1 - sigmoid(z), sigmoid(z)]``: class 1 is the positive class
with probability ``sigmoid(z)``, class 0 the negative one, and a CAM of class 1 (0) follows the gradient of z (-z),
scaled by 1/2. ``(N,)`` outputs (``model(x).squeeze(-1)``) are refused: with one image they cannot be told from the
K logits of a multi-class model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["LogitsModel", "OutputTransform", "logits_from_output", "not_logits", "require_graph"]

#: A callable that takes the model's output and returns its ``(N, K)`` logits.
OutputTransform = Callable[[Any], Tensor]

_RECOGNISED = (
    "a tensor, a tuple or list whose first element is the logits, a mapping with a 'logits' key, or an object "
    "with a `.logits` tensor attribute"
)


def logits_from_output(
    output: object, output_transform: OutputTransform | None = None, *, num_images: int | None = None
) -> Tensor:
    """The logits in a model's ``output`` for ``num_images`` images (``None``: not checked).

    With ``output_transform`` the result is ``output_transform(output)``, which must be a tensor. Without it:

    - a tensor is the logits;
    - a mapping (a dict, a Hugging Face ``ModelOutput``) holds them under ``"logits"``;
    - any other object with a tensor attribute ``logits`` (a dataclass, a named tuple with a ``logits`` field)
      holds them there;
    - a tuple or list holds them first (torchvision's ``GoogLeNetOutputs`` and ``InceptionOutputs``).

    The logits must be ``(N, K)``, one row per image (``N = num_images`` when given); ``(N, 1)`` (a binary
    classifier's one logit z) is returned as the two-class logits ``[-z/2, z/2]`` (the module docstring).

    Raises:
        ValueError: the output is none of these, or its logits are not ``(N, K)`` (or not one row per image); the
            message names its type or shape, what returned it and the fix (an ``output_transform=`` callable,
            ``out.unsqueeze(-1)`` for ``(N,)`` logits).

    Example:
        >>> import torch
        >>> logits = torch.zeros(2, 3)
        >>> logits_from_output((logits, "aux")) is logits, logits_from_output({"logits": logits}) is logits
        (True, True)
        >>> logits_from_output({"scores": logits}, output_transform=lambda out: out["scores"]) is logits
        True
        >>> logits_from_output(torch.tensor([[2.0]]))  # a binary classifier's logit z = 2
        tensor([[-1.,  1.]])
    """
    if output_transform is not None:
        transformed = output_transform(output)
        if not isinstance(transformed, Tensor):
            raise ValueError(
                "Expected `output_transform` to return the logits as a tensor, but it returned "
                f"{type(transformed).__name__}"
            )
        return _class_logits(transformed, "`output_transform` returned", num_images)
    if isinstance(output, Tensor):
        return _class_logits(output, "the model returned", num_images)
    if isinstance(output, Mapping):
        value = output.get("logits")
        if isinstance(value, Tensor):
            return _class_logits(value, "the model returned", num_images)
    elif isinstance(getattr(output, "logits", None), Tensor):
        return _class_logits(output.logits, "the model returned", num_images)  # type: ignore[attr-defined]
    elif isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return _class_logits(output[0], "the model returned", num_images)
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


def _class_logits(logits: Tensor, source: str, num_images: int | None = None) -> Tensor:
    """``(N, K)`` logits as they are; ``(N, 1)`` as ``[-z/2, z/2]``; any other shape, or ``N != num_images``, a
    ``ValueError``."""
    shape = tuple(logits.shape)
    if logits.ndim == 1:
        raise ValueError(
            f"Expected logits of shape (N, K), but {source} shape {shape}; a binary classifier returning one "
            "logit per image (`model(x).squeeze(-1)`) needs `output_transform=lambda out: out.unsqueeze(-1)` "
            "(read as class 1 = sigmoid(logit))"
        )
    if logits.ndim != 2 or 0 in shape:
        raise ValueError(
            f"Expected logits of shape (N, K) with K >= 1, but {source} shape {shape}; pass `output_transform=`, "
            "a callable that takes the model's output and returns the (N, K) logits"
        )
    if num_images is not None and shape[0] != num_images:
        fix = "make it return" if source.startswith("`output_transform`") else "pass `output_transform=` returning"
        raise ValueError(
            f"Expected one row of logits per image, ({num_images}, K) for {num_images} images, but {source} shape "
            f"{shape}; {fix} the (N, K) logits of all N images"
        )
    if logits.is_complex() or not (logits.is_floating_point()):
        raise ValueError(f"Expected floating-point logits, but {source} {logits.dtype}")
    if shape[1] == 1:
        half = logits / 2
        return torch.cat([-half, half], dim=1)
    return logits


def not_logits(logits: Tensor) -> str | None:
    """Why ``(N, K)`` model outputs are evidently not logits, or ``None`` when they may be.

    Probabilities (every row in [0, 1], summing to 1) and log-probabilities (every row <= 0 with a logsumexp of 0:
    a final ``log_softmax``) give plausible numbers that mean something else: EVET applies the softmax itself, and a
    CAM explains the output it is given (``p_k`` or ``log p_k``) instead of the logit. The text follows the
    model's name ("... outputs probabilities ..."); rows that are not finite are ignored; ``K = 1`` is never flagged.

    Example:
        >>> not_logits(torch.tensor([[0.2, 0.8]]))[:34]
        'outputs probabilities (rows in [0,'
        >>> not_logits(torch.tensor([[0.2, 0.8]]).log())[:38]
        'outputs log-probabilities (rows <= 0 w'
        >>> not_logits(torch.tensor([[2.0, -1.0]])) is None
        True
    """
    rows = logits.detach().float()
    rows = rows[torch.isfinite(rows).all(dim=1)]
    if rows.ndim != 2 or rows.shape[0] == 0 or rows.shape[1] < 2:
        return None
    fix = "return the logits (drop the final {}), or pass `output_transform=` returning them"
    if bool(((rows >= 0) & (rows <= 1)).all()) and bool(((rows.sum(dim=1) - 1).abs() <= 1e-4).all()):
        return (
            "outputs probabilities (rows in [0, 1] summing to 1), not logits; EVET applies the softmax itself, so "
            "every score is the softmax of those probabilities and a CAM explains p_k instead of the logit: "
            + fix.format("softmax")
        )
    if bool((rows <= 0).all()) and bool((rows.logsumexp(dim=1).abs() <= 1e-4).all()):
        return (
            "outputs log-probabilities (rows <= 0 whose logsumexp is 0), not logits; the scores are right "
            "(softmax(log p) = p) but a CAM explains log p_k instead of the logit, so its maps differ: "
            + fix.format("log_softmax")
        )
    return None


def require_graph(logits: Tensor) -> Tensor:
    """``logits`` when they carry an autograd graph (gradient explainers need one), else a ``ValueError``.

    Called with logits computed while gradients were enabled from inputs (or an activation) that require grad;
    logits that do not require grad then come from a model that detached its output or ran under
    ``torch.no_grad()`` inside its ``forward``.
    """
    if not logits.requires_grad:
        raise ValueError(
            "Expected the model's output to carry an autograd graph (gradient-based saliency differentiates it), "
            "but it does not require grad: the model's forward detaches its output or runs under torch.no_grad() "
            "or torch.inference_mode(); compute the logits with autograd enabled"
        )
    return logits


class LogitsModel(nn.Module):
    """``model`` whose forward returns the ``(N, K)`` logits tensor (:func:`logits_from_output`), for libraries that
    call a module and expect logits (pytorch-grad-cam's targets, Captum, zennit)."""

    def __init__(self, model: nn.Module, output_transform: OutputTransform | None) -> None:
        super().__init__()
        self.model = model
        self.output_transform = output_transform

    def forward(self, images: Tensor) -> Tensor:
        return logits_from_output(self.model(images), self.output_transform, num_images=images.shape[0])
