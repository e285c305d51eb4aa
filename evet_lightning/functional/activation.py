"""From logits to the class probability f_k that every score of this package reads (docs/design.md, decision 45).

The task names are torchmetrics': ``"multiclass"`` (one class per image; f_k is the softmax over the classes),
``"multilabel"`` (independent labels trained as sigmoids, e.g. with ``BCEWithLogitsLoss``; f_k = sigmoid(z_k), so
masking one object out cannot raise another class's probability by taking away a competitor's share) and
``"binary"`` (one logit z per image, read as the two classes ``[-z/2, z/2]`` by decision 26, whose softmax is
``[1 - sigmoid(z), sigmoid(z)]``). The paper's text defines f_k as a softmax on every dataset (Eqs. 2, 10), so the
activation can be named explicitly: ``activation="softmax"`` on a multi-label model reproduces the text, the
default sigmoid reproduces how TorchRay's VOC/COCO models were trained and are scored by its own RISE code.

:func:`target_class_probabilities` is the one place where a probability is computed from logits: EVET's Y and O
(Eq. 2 filter, Eq. 4 weights, the alpha curve), the perturbed-image scores of the metrics and the deletion and
insertion curves all call it.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "ACTIVATIONS",
    "TASKS",
    "Activation",
    "Task",
    "check_activation",
    "check_task",
    "check_task_logits",
    "class_probabilities",
    "resolve_activation",
    "target_class_probabilities",
]

#: The tasks, as torchmetrics names them.
TASKS = ("multiclass", "multilabel", "binary")
#: How logits become probabilities.
ACTIVATIONS = ("softmax", "sigmoid")
Task = Literal["multiclass", "multilabel", "binary"]
Activation = Literal["softmax", "sigmoid"]


def check_task(task: object) -> Task:
    """``task`` when it is one of :data:`TASKS`, else a ``ValueError`` naming it.

    Example:
        >>> check_task("multilabel")
        'multilabel'
        >>> check_task("multi-label")
        Traceback (most recent call last):
        ...
        ValueError: Expected `task` to be one of ('multiclass', 'multilabel', 'binary'), but got 'multi-label'
    """
    if not isinstance(task, str) or task not in TASKS:
        raise ValueError(f"Expected `task` to be one of {TASKS}, but got {task!r}")
    return task  # type: ignore[return-value]


def check_activation(activation: object) -> Activation | None:
    """``activation`` when it is ``None`` (by task) or one of :data:`ACTIVATIONS`, else a ``ValueError``."""
    if activation is not None and (not isinstance(activation, str) or activation not in ACTIVATIONS):
        raise ValueError(
            f"Expected `activation` to be one of {ACTIVATIONS} or None (by `task`), but got {activation!r}"
        )
    return activation  # type: ignore[return-value]


def resolve_activation(task: object, activation: object = None) -> Activation:
    """The activation used for ``task``: ``activation`` when given, else sigmoid for ``"multilabel"`` and softmax
    for ``"multiclass"`` and ``"binary"``.

    ``task="binary"`` with ``activation="sigmoid"`` is a ``ValueError``: a binary classifier's one logit z is read
    as ``[-z/2, z/2]`` (decision 26), whose softmax already is ``sigmoid(z)``; a sigmoid of the halves would be
    ``sigmoid(z/2)``.

    Example:
        >>> resolve_activation("multilabel"), resolve_activation("multilabel", "softmax"), resolve_activation("binary")
        ('sigmoid', 'softmax', 'softmax')
    """
    task = check_task(task)
    activation = check_activation(activation)
    if task == "binary" and activation == "sigmoid":
        raise ValueError(
            "Expected `activation` to be None or 'softmax' with task='binary': its one logit z is read as the two "
            "classes [-z/2, z/2] (class 1 has probability sigmoid(z) already); for independent sigmoid outputs "
            "use task='multilabel'"
        )
    if activation is not None:
        return activation
    return "sigmoid" if task == "multilabel" else "softmax"


def check_task_logits(task: Task, logits: Tensor) -> None:
    """A ``ValueError`` when ``task="binary"`` meets logits of other than two classes (one logit z, read as
    ``[-z/2, z/2]``)."""
    if task == "binary" and logits.shape[-1] != 2:
        raise ValueError(
            f"Expected one logit per image (N, 1) with task='binary', but the model returned {logits.shape[-1]} "
            "classes; use task='multiclass' (softmax) or task='multilabel' (independent sigmoids)"
        )


def class_probabilities(logits: Tensor, activation: Activation = "softmax") -> Tensor:
    """``(N, K)`` probabilities of ``(N, K)`` logits: the softmax over the classes or the sigmoid of each logit.

    Computed in float32 at least (float64 logits stay float64).

    Example:
        >>> import torch
        >>> class_probabilities(torch.tensor([[0.0, 0.0]]), "sigmoid"), class_probabilities(torch.tensor([[0.0, 0.0]]))
        (tensor([[0.5000, 0.5000]]), tensor([[0.5000, 0.5000]]))
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"Expected `activation` to be one of {ACTIVATIONS}, but got {activation!r}")
    if logits.ndim != 2:
        raise ValueError(f"Expected logits of shape (N, K), but got {tuple(logits.shape)}")
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return logits.sigmoid() if activation == "sigmoid" else logits.softmax(dim=-1)


def target_class_probabilities(logits: Tensor, targets: Tensor, activation: Activation = "softmax") -> Tensor:
    """``(N,)`` probability of each row's target class k: ``f_k`` of :func:`class_probabilities`.

    Example:
        >>> import torch
        >>> logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
        >>> target_class_probabilities(logits, torch.tensor([0, 0]), "sigmoid")  # sigmoid(2), sigmoid(0)
        tensor([0.8808, 0.5000])
    """
    probabilities = class_probabilities(logits, activation)
    return probabilities.gather(1, targets.view(-1, 1).to(probabilities.device)).squeeze(1)
