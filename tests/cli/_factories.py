"""What ``evet-lightning evaluate`` loads by import path in the CLI tests: ``--model tests.cli._factories:<name>``,
``--output-transform`` and ``--reshape-transform``. The models themselves are in ``tests/_helpers/models.py``."""

from __future__ import annotations

import torch
from torch import nn

from tests._helpers.models import mlp, scores_cnn, softmax_cnn
from tests._helpers.models import torchvision_vit as tiny_vit
from tests._helpers.models import untrained_small_cnn as tiny_cnn

__all__ = [
    "NOT_CALLABLE",
    "broken",
    "coco_cnn",
    "drop_class_token",
    "make_tokens_to_map",
    "mlp",
    "not_a_module",
    "scores_cnn",
    "scores_of",
    "softmax_cnn",
    "tiny_cnn",
    "tiny_vit",
    "tokens_to_map",
    "voc_cnn",
]


def not_a_module() -> int:
    """Returns something that is not a model."""
    return 3


def broken() -> nn.Module:
    """Fails when called."""
    raise RuntimeError("this factory is broken on purpose")


NOT_CALLABLE = 5


def scores_of(output: dict[str, torch.Tensor]) -> torch.Tensor:
    """The output transform of :func:`scores_cnn`."""
    return output["scores"]


def tokens_to_map(tokens: torch.Tensor) -> torch.Tensor:
    """A user's reshape transform for :func:`tiny_vit`: ``(B, 1 + 16, C)`` -> ``(B, C, 4, 4)``."""
    return tokens[:, 1:].reshape(tokens.shape[0], 4, 4, tokens.shape[-1]).permute(0, 3, 1, 2)


def drop_class_token(tokens: torch.Tensor) -> torch.Tensor:
    """A wrong reshape transform: ``(B, 1 + 16, C)`` -> ``(B, 16, C)``, still tokens, not a map."""
    return tokens[:, 1:]


def make_tokens_to_map(height: int = 4, width: int = 4) -> object:
    """A reshape transform's factory, named where the transform itself belongs."""
    return tokens_to_map


def voc_cnn() -> nn.Module:
    """An untrained multi-label SmallCNN with one logit per VOC class (20), the same weights on every call."""
    from evet_lightning.models import SmallCNN

    torch.manual_seed(0)
    return SmallCNN(num_classes=20, width=4)


def coco_cnn() -> nn.Module:
    """An untrained multi-label SmallCNN with one logit per class of the tiny COCO fixture (3)."""
    from evet_lightning.models import SmallCNN

    torch.manual_seed(0)
    return SmallCNN(num_classes=3, width=4)
