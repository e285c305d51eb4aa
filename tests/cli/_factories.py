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


class _ScoresOnly(nn.Module):
    """:func:`tiny_cnn` whose forward returns ``{"scores": logits}``: no key or attribute EVET recognises."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_cnn()

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"scores": self.net(images)}


def scores_cnn() -> nn.Module:
    """A classifier whose output needs ``--output-transform tests.cli._factories:scores_of``."""
    return _ScoresOnly()


def scores_of(output: dict[str, torch.Tensor]) -> torch.Tensor:
    """The output transform of :func:`scores_cnn`."""
    return output["scores"]


def tiny_vit() -> nn.Module:
    """A 2-block torchvision ViT for 32 px images: 8 px patches, a 4 x 4 grid of 16 channels and a class token."""
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=4
    )


def tokens_to_map(tokens: torch.Tensor) -> torch.Tensor:
    """A user's reshape transform for :func:`tiny_vit`: ``(B, 1 + 16, C)`` -> ``(B, C, 4, 4)``."""
    return tokens[:, 1:].reshape(tokens.shape[0], 4, 4, tokens.shape[-1]).permute(0, 3, 1, 2)
