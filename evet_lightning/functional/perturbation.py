"""Perturbation Phi(x, M) of Eq. (3) and the target-class probability f_k used by EVET and the metrics."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from evet_lightning.functional.activation import Activation, target_class_probabilities

__all__ = ["Baseline", "Normalization", "check_baseline", "perturb", "resolve_baseline", "target_probabilities"]

#: A baseline x_d: a name (``"black"``, ``"zeros"``, ``"blur"``), a tensor broadcastable to the
#: images, or a callable ``images -> x_d``.
Baseline = str | Tensor | Callable[[Tensor], Tensor]
#: Per-channel ``(mean, std)`` the images were normalized with, or ``None`` for raw pixel values.
Normalization = tuple[Sequence[float], Sequence[float]] | None

_BASELINE_NAMES = ("black", "zeros", "blur")


def _gaussian_blur(images: Tensor, sigma: float, radius: int | None = None) -> Tensor:
    """Separable Gaussian blur, normalized to sum 1, edges padded by replication.

    The kernel has ``2 * radius + 1`` taps; ``radius=None`` takes ``max(1, round(3 * sigma))``.
    """
    if radius is None:
        radius = max(1, round(3 * sigma))
    coords = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-(coords**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    horizontal = kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    vertical = kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    padded = F.pad(images, (radius, radius, 0, 0), mode="replicate")
    out = F.conv2d(padded, horizontal, groups=channels)
    out = F.pad(out, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(out, vertical, groups=channels)


def check_baseline(baseline: object) -> None:
    """Raise ``ValueError`` unless ``baseline`` is a known name, a tensor or a callable."""
    if isinstance(baseline, str):
        if baseline not in _BASELINE_NAMES:
            raise ValueError(
                f"Expected `baseline` to be one of {_BASELINE_NAMES}, a tensor or a callable, but got {baseline!r}"
            )
    elif not isinstance(baseline, Tensor) and not callable(baseline):
        raise ValueError(
            f"Expected `baseline` to be one of {_BASELINE_NAMES}, a tensor or a callable, but got {baseline!r}"
        )


def resolve_baseline(images: Tensor, baseline: Baseline = "black", normalization: Normalization = None) -> Tensor:
    """Return the distorted image x_d of Eq. (3) for ``images`` of shape ``(B, C, H, W)``.

    - ``"black"``: zero intensity in pixel space, i.e. ``(0 - mean) / std`` per channel when
      ``normalization=(mean, std)`` is given, else zeros.
    - ``"zeros"``: zeros of the input, whatever the normalization.
    - ``"blur"``: a Gaussian blur of the images (sigma = 1/16 of the shorter side).
    - a tensor broadcastable to ``images``, or a callable ``images -> x_d`` of the same shape.

    The result has the images' shape, dtype and device.
    """
    check_baseline(baseline)
    if isinstance(baseline, Tensor):
        x_d = baseline.to(device=images.device, dtype=images.dtype)
    elif callable(baseline) and not isinstance(baseline, str):
        x_d = baseline(images)
        if not isinstance(x_d, Tensor):
            raise ValueError(f"Expected the `baseline` callable to return a Tensor, but got {type(x_d).__name__}")
    elif baseline == "zeros":
        return torch.zeros_like(images)
    elif baseline == "black":
        if normalization is None:
            return torch.zeros_like(images)
        mean, std = _normalization_tensors(normalization, images)
        return ((0.0 - mean) / std).expand_as(images).clone()
    else:  # "blur"
        return _gaussian_blur(images, sigma=max(min(images.shape[-2:]) / 16.0, 0.5))
    try:
        return torch.broadcast_to(x_d, images.shape)
    except RuntimeError as err:
        raise ValueError(
            f"Expected `baseline` to broadcast to the images' shape {tuple(images.shape)}, but got {tuple(x_d.shape)}"
        ) from err


def _normalization_tensors(
    normalization: tuple[Sequence[float], Sequence[float]], images: Tensor
) -> tuple[Tensor, Tensor]:
    mean = torch.as_tensor(normalization[0], dtype=images.dtype, device=images.device).reshape(1, -1, 1, 1)
    std = torch.as_tensor(normalization[1], dtype=images.dtype, device=images.device).reshape(1, -1, 1, 1)
    if mean.shape[1] not in (1, images.shape[1]) or std.shape[1] not in (1, images.shape[1]):
        raise ValueError(
            f"Expected `normalization` to have 1 or {images.shape[1]} values per statistic, "
            f"but got {mean.shape[1]} means and {std.shape[1]} stds"
        )
    if bool((std <= 0).any()):
        raise ValueError("Expected every `normalization` std to be positive")
    return mean, std


def perturb(
    images: Tensor, saliency: Tensor, baseline: Baseline = "black", normalization: Normalization = None
) -> Tensor:
    """Eq. (3): ``Phi(x, M) = x * M + x_d * (1 - M)``.

    Args:
        images: ``(B, C, H, W)``.
        saliency: ``(B, H, W)`` or ``(B, 1, H, W)`` in [0, 1]; it is resized bilinearly to the image size
            when it is smaller (the paper: "we upsample M into the input size if necessary").
        baseline: see :func:`resolve_baseline`.
        normalization: ``(mean, std)`` the images were normalized with, for the ``"black"`` baseline.

    Returns:
        ``(B, C, H, W)`` perturbed images in the images' dtype.

    Example:
        >>> x = torch.ones(1, 3, 2, 2)
        >>> perturb(x, torch.tensor([[[1.0, 0.5], [0.0, 1.0]]]))[0, 0]
        tensor([[1.0000, 0.5000],
                [0.0000, 1.0000]])
    """
    if images.ndim != 4:
        raise ValueError(f"Expected `images` to have shape (B, C, H, W), but got {tuple(images.shape)}")
    if saliency.ndim == 3:
        saliency = saliency.unsqueeze(1)
    if saliency.ndim != 4 or saliency.shape[1] != 1 or saliency.shape[0] != images.shape[0]:
        raise ValueError(
            f"Expected `saliency` to have shape (B, H, W) or (B, 1, H, W) with B={images.shape[0]}, "
            f"but got {tuple(saliency.shape)}"
        )
    saliency = saliency.to(device=images.device, dtype=images.dtype)
    if saliency.shape[-2:] != images.shape[-2:]:
        saliency = F.interpolate(saliency, size=images.shape[-2:], mode="bilinear", align_corners=False)
    x_d = resolve_baseline(images, baseline, normalization)
    return images * saliency + x_d * (1.0 - saliency)


def target_probabilities(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    max_batch_size: int | None = None,
    *,
    activation: Activation = "softmax",
) -> Tensor:
    """Probability f_k of each image's target class, as float32 ``(B,)`` on the images' device: the softmax over
    the classes, or with ``activation="sigmoid"`` (multi-label models, decision 45) the sigmoid of its logit.

    Runs under ``torch.no_grad()``, in chunks of ``max_batch_size`` images when given. The model's mode is
    not changed: call it in whatever mode the scores should come from.
    """
    if targets.shape != (images.shape[0],):
        raise ValueError(f"Expected `targets` to have shape ({images.shape[0]},), but got {tuple(targets.shape)}")
    chunk = max_batch_size if max_batch_size else images.shape[0]
    out = []
    with torch.no_grad():
        for start in range(0, images.shape[0], max(chunk, 1)):
            logits = model(images[start : start + chunk]).float()
            out.append(target_class_probabilities(logits, targets[start : start + chunk], activation))
    if not out:
        return images.new_zeros(0, dtype=torch.float32)
    return torch.cat(out).to(images.device)
