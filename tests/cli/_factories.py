"""Model factories for ``evet-lightning evaluate --model tests.cli._factories:<name>`` in the CLI tests."""

from __future__ import annotations

import torch
from torch import nn

from evet_lightning.models import SmallCNN


def tiny_cnn() -> nn.Module:
    """An untrained 4-class :class:`SmallCNN` (width 4), the same weights on every call."""
    torch.manual_seed(0)
    return SmallCNN(num_classes=4, width=4)


def mlp() -> nn.Module:
    """A classifier with no spatial layer: a CAM has nothing to explain."""
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4))


def not_a_module() -> int:
    """Returns something that is not a model."""
    return 3


def broken() -> nn.Module:
    """Fails when called."""
    raise RuntimeError("this factory is broken on purpose")


NOT_CALLABLE = 5


def softmax_cnn() -> nn.Module:
    """:func:`tiny_cnn` followed by a softmax: it outputs probabilities, not logits."""
    return nn.Sequential(tiny_cnn(), nn.Softmax(dim=1))
