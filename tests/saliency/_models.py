"""Tiny randomly initialized models for the saliency tests (built in milliseconds, no weights downloaded)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["LeftRightModel", "TinyCNN", "tiny_cnn"]


class TinyCNN(nn.Module):
    """Conv-ReLU-pool-Conv-BN-ReLU, then a 2x2 adaptive pool and a linear head (spatially varying gradients).

    ``features[5]`` (the last ReLU) is the natural CAM target; ``features[0]`` is an earlier conv layer.
    Works on any input of at least 2x2 pixels and any channel count given as ``in_channels``.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 3, width: int = 4, inplace: bool = False) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(inplace=inplace),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=inplace),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d((2, 2)), nn.Flatten(), nn.Linear(8 * width, num_classes))

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))


def tiny_cnn(seed: int = 0, **kwargs: int | bool) -> TinyCNN:
    """A :class:`TinyCNN` with seeded weights and non-trivial BatchNorm statistics, in eval mode.

    The global RNG state is left untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TinyCNN(**kwargs)  # type: ignore[arg-type]
        bn = model.features[4]
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.1, 0.1)
    return model.eval()


class LeftRightModel(nn.Module):
    """Two classes whose evidence lies in opposite halves of the image, so a horizontal flip swaps the argmax.

    ``features`` (a 1x1 conv) makes channel 0 = the image and channel 1 = 1 - the image; the logit of class 0
    is 4 x the mean of channel 0 over the left half, that of class 1 is 4 x (1 - the mean of channel 1 over the
    right half), i.e. 4 x the mean of the image there. Grad-CAM for class 0 is channel 0 (the image); for class
    1 the channel weight is negative and the map is all zeros. The input gradient (``"Gradient"``) of class 0
    lies in the left half, that of class 1 in the right half.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(1, 2, 1)
        with torch.no_grad():
            self.features.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
            self.features.bias.copy_(torch.tensor([0.0, 1.0]))

    def forward(self, images: Tensor) -> Tensor:
        maps = self.features(images)
        half = maps.shape[-1] // 2
        left = maps[:, 0, :, :half].mean(dim=(1, 2))
        right = maps[:, 1, :, half:].mean(dim=(1, 2))
        return 4.0 * torch.stack([left, 1.0 - right], dim=1)
