"""Stability index, Eq. (8)-(9) of Oh et al. (WACV 2021)."""

from __future__ import annotations

import torch
from torch import Tensor

from evet_lightning.functional._checks import (
    _check_binary_mask,
    _check_maps,
    _check_range,
    _check_same_shape,
    _finite_samples,
    _safe_mean,
    _sum_kept,
)

__all__ = ["stability_index", "stability_per_sample"]


def _stability_index_update(
    saliency: Tensor, saliency_transformed: Tensor, valid: Tensor | None = None, validate_args: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    """Sum over samples of ``1 - ||(M1 - M2) * valid||_F / sqrt(#valid)`` (float64), with kept and skipped counts.

    A sample is skipped when either map has NaN/Inf anywhere or when it has no valid pixel.

    Returns:
        ``(sum_similarity, num_samples, num_skipped)``, scalar tensors (float64, int64, int64).
    """
    saliency = _check_maps("saliency", saliency)
    saliency_transformed = _check_maps("saliency_transformed", saliency_transformed)
    _check_same_shape("saliency_transformed", saliency_transformed, "saliency", saliency)
    if valid is None:
        valid = torch.ones_like(saliency, dtype=torch.bool)
    else:
        valid = _check_binary_mask("valid", valid, "saliency", saliency, validate_args)
    finite = _finite_samples(saliency, saliency_transformed)
    if validate_args:
        _check_range("saliency", saliency, finite, 0.0, 1.0)
        _check_range("saliency_transformed", saliency_transformed, finite, 0.0, 1.0)
    similarity, keep = _similarity(saliency, saliency_transformed, valid, finite)
    return _sum_kept(similarity, keep)


def _similarity(saliency: Tensor, saliency_transformed: Tensor, valid: Tensor, finite: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample ``1 - ||(M1 - M2) * valid||_F / sqrt(#valid)`` (float64, 0 where skipped) and the kept samples.

    ``valid`` broadcasts against the maps (``(H, W)`` or ``(N, H, W)``; the maps may carry leading dimensions).
    """
    valid = valid.expand_as(saliency).flatten(-2)
    num_valid = valid.sum(dim=-1)
    keep = finite & (num_valid > 0)
    # Zero the skipped and invalid pixels first so NaN/Inf never reach a sum.
    use = keep.unsqueeze(-1) & valid
    difference = saliency.flatten(-2).to(torch.float64) - saliency_transformed.flatten(-2).to(torch.float64)
    difference = torch.where(use, difference, torch.zeros_like(difference))
    distance = difference.square().sum(dim=-1).sqrt()
    max_distance = num_valid.clamp_min(1).to(torch.float64).sqrt()
    return torch.where(keep, 1.0 - distance / max_distance, 0.0), keep


def stability_per_sample(saliency: Tensor, saliency_transformed: Tensor, valid: Tensor | None = None) -> Tensor:
    """The similarity of Eq. (8)-(9) of each pair of maps, float64, shape ``saliency.shape[:-2]``; NaN where a
    map is not finite or no pixel is valid. Maps ``(..., H, W)`` in [0, 1] (not checked: hot path of the
    alpha choice), ``valid`` bool broadcasting against them (default: every pixel).

    Example:
        >>> stability_per_sample(torch.zeros(2, 1, 2), torch.tensor([[[0.0, 0.0]], [[1.0, 1.0]]])).tolist()
        [1.0, 0.0]
    """
    if valid is None:
        valid = torch.ones(saliency.shape[-2:], dtype=torch.bool, device=saliency.device)
    finite = torch.isfinite(saliency).flatten(-2).all(-1) & torch.isfinite(saliency_transformed).flatten(-2).all(-1)
    similarity, keep = _similarity(saliency, saliency_transformed, valid.bool(), finite)
    return torch.where(keep, similarity, torch.nan)


def _stability_index_compute(sum_similarity: Tensor, num_samples: Tensor, warn: bool = True) -> Tensor:
    """Mean similarity, float32; 0.0 with a warning when there are no samples.

    Example:
        >>> state = _stability_index_update(torch.zeros(1, 2, 2), torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]))
        >>> _stability_index_compute(state[0], state[1])
        tensor(0.5000)
    """
    return _safe_mean(sum_similarity, num_samples, "stability_index", warn)


def stability_index(
    saliency: Tensor, saliency_transformed: Tensor, valid: Tensor | None = None, validate_args: bool = True
) -> Tensor:
    r"""Stability index, Eq. (8)-(9): how little a map changes under a transformation.

    .. math:: SI = \frac{1}{|D|}\sum_{x \in D} 1 - \frac{\|(M_1 - M_2) \odot V\|_F}{\sqrt{\sum V}}

    with ``M1 = J(x)``, ``M2 = T^{-1}(J(T(x)))`` and ``V`` the valid pixels (those of the original frame whose
    pre-image lies inside the transformed canvas; all pixels when ``valid`` is None). For maps in [0, 1],
    ``d_max = sqrt(#valid)`` is the largest possible Frobenius distance over the valid pixels (Eq. 8), so
    SI is in [0, 1]. Higher is better.

    Args:
        saliency: ``(N, H, W)`` float maps in [0, 1] of the untransformed images, ``J(x)``.
        saliency_transformed: ``(N, H, W)`` float maps in [0, 1] mapped back to the original frame,
            ``T^{-1}(J(T(x)))``.
        valid: ``(N, H, W)`` bool (or integer 0/1) validity mask, or None for all pixels.
        validate_args: check that both maps are in [0, 1] and an integer ``valid`` holds only 0/1
            (this synchronizes with the device).

    Returns:
        A float32 scalar in [0, 1].

    Edge cases:
        - A sample with NaN/Inf anywhere in either map (valid pixel or not) is skipped.
        - A sample with no valid pixel is skipped (d_max would be 0).
        - No samples left: 0.0 and a warning, never NaN.

    Raises:
        ValueError: if a map is not a floating point ``(N, H, W)`` tensor, the shapes differ, ``valid`` is
            not bool or integer, or, with ``validate_args``, a map value is outside [0, 1].

    Example:
        >>> import torch
        >>> from evet_lightning.functional import stability_index
        >>> first = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
        >>> second = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
        >>> stability_index(first, second)  # 1 - sqrt(2) / sqrt(4)
        tensor(0.2929)
        >>> stability_index(first, second, valid=torch.tensor([[[True, False], [True, False]]]))
        tensor(1.)
    """
    sum_similarity, num_samples, _ = _stability_index_update(saliency, saliency_transformed, valid, validate_args)
    return _stability_index_compute(sum_similarity, num_samples)
