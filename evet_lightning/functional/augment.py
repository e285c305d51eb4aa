"""Training augmentation that keeps a classifier meaningful on the perturbed images Phi(x, M) of Eq. (3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["background_dropout"]


def background_dropout(
    images: Tensor,
    masks: Tensor,
    probability: float = 0.5,
    grid: int = 4,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Darken smooth random parts of the background of a random subset of images; the object stays visible.

    Faithfulness metrics (average drop, increase in confidence, win) and EVET's filter feed the classifier
    ``x * M + x_d * (1 - M)``: images whose unimportant parts are black. A classifier trained only on full
    scenes has never seen such images and may answer anything for them (on the synthetic shapes, one class for
    every perturbed image), which makes those metrics meaningless. Like random erasing, this augmentation
    shows the classifier such images during training: with probability ``probability`` an image is multiplied
    by ``max(field ** gamma, keep * mask)``, where ``field`` is bicubic-upsampled ``grid x grid`` uniform noise,
    ``gamma ~ U(1, 4)`` (darker or lighter backgrounds) and ``keep ~ U(0.4, 1)`` (the object dimmed at most to
    40%), so the label stays determined by the image.

    Args:
        images: ``(B, C, H, W)`` in pixel space (black = 0).
        masks: ``(B, H, W)`` bool, the object of each image.
        probability: fraction of images augmented, in [0, 1].
        grid: resolution of the random field (smaller = smoother).
        generator: optional RNG for reproducibility (on the images' device).

    Returns:
        ``(B, C, H, W)`` augmented images (the others unchanged).

    Example:
        >>> images, masks = torch.ones(2, 3, 8, 8), torch.zeros(2, 8, 8, dtype=torch.bool)
        >>> masks[:, 2:5, 2:5] = True
        >>> out = background_dropout(images, masks, probability=1.0, generator=torch.Generator().manual_seed(0))
        >>> bool((out[:, :, 2:5, 2:5] >= 0.4).all()), bool((out <= 1).all())
        (True, True)
    """
    if not 0 <= probability <= 1:
        raise ValueError(f"Expected `probability` to be a float in [0, 1], but got {probability!r}")
    if masks.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(f"Expected `masks` to have shape (B, H, W) matching the images, but got {tuple(masks.shape)}")
    batch, _, height, width = images.shape

    def uniform(*shape: int) -> Tensor:
        return torch.rand(*shape, device=images.device, generator=generator)

    field = uniform(batch, 1, grid, grid)
    field = F.interpolate(field, size=(height, width), mode="bicubic", align_corners=False).clamp(0, 1)
    gamma = 1 + 3 * uniform(batch, 1, 1, 1)
    keep = 0.4 + 0.6 * uniform(batch, 1, 1, 1)
    multiplier = torch.maximum(field**gamma, keep * masks.unsqueeze(1).to(images.dtype))
    chosen = (uniform(batch, 1, 1, 1) < probability).to(images.dtype)
    return images * (chosen * multiplier.to(images.dtype) + (1 - chosen))
