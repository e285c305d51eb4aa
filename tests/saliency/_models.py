"""Tiny randomly initialized models for the saliency tests (built in milliseconds, no weights downloaded)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = [
    "LeftRightModel",
    "SharedActivationCNN",
    "TinyCNN",
    "TinyViT",
    "shared_activation_cnn",
    "tiny_cnn",
    "tiny_vit",
]


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


class SharedActivationCNN(nn.Module):
    """One ``SiLU`` instance, ``body.act``, applied after the stem and again after the head conv (as EfficientNet ports
    do); ``separate=True`` gives the second use its own module, ``body.head_act``, with identical weights elsewhere.

    The second call's output (``(B, 6, H/2, W/2)``) is the last feature map; the first call's is ``(B, 4, H, W)``.
    ``vector_last=True`` applies ``body.act`` a third time, to the pooled ``(B, 6)`` vector.
    """

    def __init__(self, separate: bool = False, vector_last: bool = False) -> None:
        super().__init__()
        self.body = nn.Module()
        self.body.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.body.head = nn.Conv2d(4, 6, 3, padding=1, stride=2)
        self.body.act = nn.SiLU()
        self.body.head_act = nn.SiLU() if separate else self.body.act
        self.fc = nn.Linear(6, 3)
        self.vector_last = vector_last

    def forward(self, images: Tensor) -> Tensor:
        x = self.body.act(self.body.stem(images))
        x = self.body.head_act(self.body.head(x)).mean(dim=(2, 3))
        if self.vector_last:
            x = self.body.act(x)
        return self.fc(x)


def shared_activation_cnn(seed: int = 0, **kwargs: bool) -> SharedActivationCNN:
    """A seeded :class:`SharedActivationCNN` in eval mode (the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SharedActivationCNN(**kwargs).eval()


class TinyViT(nn.Module):
    """A one-block ViT: ``prefix_tokens`` learned tokens, then 4 x 4 patches; pre-norm attention; head on token 0.

    ``blocks.0.norm1`` is what a CAM should explain (the final ``norm`` has zero gradient on the patch tokens).
    """

    def __init__(self, prefix_tokens: int = 1, dim: int = 24, image_size: int = 16, num_classes: int = 3) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, 4, stride=4)
        self.prefix = nn.Parameter(torch.randn(1, prefix_tokens, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, prefix_tokens + (image_size // 4) ** 2, dim) * 0.02)
        self.blocks = nn.Sequential(_Block(dim))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        tokens = self.patch_embed(images).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.prefix.expand(tokens.shape[0], -1, -1), tokens], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(tokens))[:, 0])


class _Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads=2, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, tokens: Tensor) -> Tensor:
        normed = self.norm1(tokens)
        tokens = tokens + self.attn(normed, normed, normed, need_weights=False)[0]
        return tokens + self.mlp(self.norm2(tokens))


def tiny_vit(seed: int = 0, **kwargs: int) -> TinyViT:
    """A seeded :class:`TinyViT` in eval mode (the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TinyViT(**kwargs).eval()
