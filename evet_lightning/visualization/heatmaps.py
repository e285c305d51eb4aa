"""Heatmap rendering for the EVET callback, in torch only (no numpy, cv2 or PIL).

Convention:
    - Images are ``(C, H, W)`` (one image) or ``(B, C, H, W)``; saliency maps ``(H, W)`` or ``(B, H, W)`` in [0, 1].
    - Rendered pictures are RGB ``uint8`` in ``(3, H, W)`` layout (``(B, 3, H, W)`` for a batch), the layout that
      :func:`torchvision.io.write_png`, TensorBoard's ``add_image`` and ``wandb.Image`` accept.
    - Colours are those of matplotlib's ``jet``: blue (0) -> cyan -> yellow -> red (1), piecewise linear.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from evet_lightning.functional.perturbation import Normalization

__all__ = ["captions", "denormalize", "display_images", "heatmap_panel", "jet_colormap", "overlay", "write_png"]


def jet_colormap(values: Tensor) -> Tensor:
    """Map values in [0, 1] to jet RGB colours in [0, 1].

    Args:
        values: ``(..., H, W)`` float; NaN is shown as 0 and values outside [0, 1] are clamped.

    Returns:
        ``(..., 3, H, W)`` float32 in [0, 1].

    Example:
        >>> jet_colormap(torch.tensor([[0.0, 0.5, 1.0]]))[:, 0]  # one row: dark blue, green, dark red
        tensor([[0.0000, 0.5000, 0.5000],
                [0.0000, 1.0000, 0.0000],
                [0.5000, 0.5000, 0.0000]])
    """
    values = torch.nan_to_num(values.float(), nan=0.0).clamp(0.0, 1.0)
    # jet is three clipped "tents" centred at 3/4 (red), 1/2 (green) and 1/4 (blue) of the range.
    channels = [(1.5 - (4.0 * values - centre).abs()).clamp(0.0, 1.0) for centre in (3.0, 2.0, 1.0)]
    return torch.stack(channels, dim=-3)


def denormalize(images: Tensor, normalization: Normalization) -> Tensor:
    """Undo ``(x - mean) / std`` per channel: ``x * std + mean``; ``normalization=None`` returns ``images``.

    Args:
        images: ``(C, H, W)`` or ``(B, C, H, W)``.
        normalization: ``(mean, std)``, one value per channel, or ``None``.
    """
    if normalization is None:
        return images
    mean, std = (torch.as_tensor(values, dtype=images.dtype, device=images.device) for values in normalization)
    return images * std.view(-1, 1, 1) + mean.view(-1, 1, 1)


def display_images(images: Tensor, normalization: Normalization = None) -> Tensor:
    """Images as RGB in [0, 1], ready to be shown: ``(B, C, H, W)`` -> ``(B, 3, H, W)`` float32.

    With ``normalization`` the images are denormalized and clamped to [0, 1]. Without it, images already in
    [0, 1] are shown as they are, and other images are min-max scaled per image (their scale is unknown).
    One channel is repeated to grey RGB; more than three channels show the first three. NaN/Inf show as 0.
    """
    images = torch.nan_to_num(images.detach().float(), nan=0.0, posinf=0.0, neginf=0.0)
    if normalization is not None:
        images = denormalize(images, normalization).clamp(0.0, 1.0)
    elif images.numel() and (images.min() < 0.0 or images.max() > 1.0):
        flat = images.flatten(1)
        low = flat.min(dim=1, keepdim=True).values
        span = (flat.max(dim=1, keepdim=True).values - low).clamp_min(1e-12)
        images = ((flat - low) / span).view_as(images)
    if images.shape[1] == 1:
        return images.expand(-1, 3, -1, -1)
    return images[:, :3]


def overlay(images: Tensor, saliency: Tensor, opacity: float = 0.5) -> Tensor:
    """Blend jet-coloured ``saliency`` over ``images``: ``(1 - opacity) * image + opacity * jet(saliency)``.

    Args:
        images: ``(B, 3, H, W)`` RGB in [0, 1] (see :func:`display_images`).
        saliency: ``(B, H, W)`` in [0, 1].
        opacity: weight of the heatmap, in [0, 1].

    Returns:
        ``(B, 3, H, W)`` float32 in [0, 1].
    """
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"Expected `opacity` to be a float in [0, 1], but got {opacity!r}")
    return ((1.0 - opacity) * images + opacity * jet_colormap(saliency)).clamp(0.0, 1.0)


def heatmap_panel(
    images: Tensor,
    original: Tensor,
    saliency: Tensor,
    normalization: Normalization = None,
    opacity: float = 0.5,
) -> Tensor:
    """Side-by-side panels ``image | original-map overlay | EVET-map overlay`` at the input size.

    Args:
        images: ``(B, C, H, W)`` the explained images (normalized as the model saw them).
        original: ``(B, H, W)`` the un-enhanced maps J(x), in [0, 1].
        saliency: ``(B, H, W)`` the EVET maps J*(x), in [0, 1].
        normalization: ``(mean, std)`` the images were normalized with, to show them in pixel colours.
        opacity: weight of the heatmaps in the overlays.

    Returns:
        ``(B, 3, H, 3 W)`` RGB ``uint8``.

    Example:
        >>> panel = heatmap_panel(torch.rand(2, 1, 8, 6), torch.rand(2, 8, 6), torch.rand(2, 8, 6))
        >>> panel.shape, panel.dtype
        (torch.Size([2, 3, 8, 18]), torch.uint8)
    """
    if images.ndim != 4 or original.shape != (images.shape[0], *images.shape[-2:]) or saliency.shape != original.shape:
        raise ValueError(
            "Expected `images` (B, C, H, W) and `original`, `saliency` (B, H, W) of the same size, but got "
            f"{tuple(images.shape)}, {tuple(original.shape)} and {tuple(saliency.shape)}"
        )
    shown = display_images(images, normalization)
    original, saliency = original.detach().to(shown.device), saliency.detach().to(shown.device)
    panels = torch.cat([shown, overlay(shown, original, opacity), overlay(shown, saliency, opacity)], dim=-1)
    return (panels * 255.0).round().clamp(0, 255).to(torch.uint8)


def write_png(image: Tensor, path: str | os.PathLike[str]) -> None:
    """Write one ``(3, H, W)`` (or ``(1, H, W)``) ``uint8`` image as PNG, creating parent directories."""
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"Expected a (3, H, W) uint8 image, but got {tuple(image.shape)} {image.dtype}")
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    with warnings.catch_warnings():
        # torchvision >= 0.29 deprecates its image codecs in favour of TorchCodec; write_png still works.
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import write_png as _write_png

        _write_png(image.detach().cpu().contiguous(), os.fspath(path))


def captions(
    targets: Sequence[int], clean: Sequence[float], original: Sequence[float], enhanced: Sequence[float]
) -> list[str]:
    """``"class k, p(x)=Y, original O -> EVET O*"`` for each sample (probabilities with 3 decimals)."""
    return [
        f"class {k}, p(x)={y:.3f}, original {o:.3f} -> EVET {e:.3f}"
        for k, y, o, e in zip(targets, clean, original, enhanced, strict=True)
    ]
