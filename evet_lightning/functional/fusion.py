"""EVET's fusion step, Eq. (2)-(7) of Oh et al. (WACV 2021), and the per-image min-max normalization."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from evet_lightning._validation import check_alpha, check_threshold

__all__ = [
    "DEFAULT_ALPHA",
    "FusionParts",
    "FusionResult",
    "blend",
    "fuse_maps",
    "fuse_maps_detailed",
    "fusion_parts",
    "min_max_normalize",
]

#: alpha of :func:`fuse_maps` when none is given: the first fixed default, mid-way in the range that improved all
#: three metrics on the synthetic shapes. :class:`~evet_lightning.EVET` and the callback default to
#: ``alpha="auto"`` instead, which chooses alpha on the data (docs/design.md, decisions 9-11): a fixed 0.5 made
#: average drop worse on real photographs with a pretrained model.
DEFAULT_ALPHA = 0.5


class FusionResult(NamedTuple):
    """What :func:`fuse_maps_detailed` returns."""

    saliency: Tensor
    """``(B, H, W)`` the fused, min-max normalized map J*(x)."""
    weights: Tensor
    """``(V, B)`` the weights w_v of Eq. (4); 0 for filtered views."""
    kept: Tensor
    """``(V, B)`` bool, which views passed the filter of Eq. (2); view 0 always does."""


def min_max_normalize(maps: Tensor) -> Tensor:
    """Scale each ``(..., H, W)`` map to [0, 1]; a constant map becomes all zeros (never NaN).

    Example:
        >>> min_max_normalize(torch.tensor([[[1.0, 3.0], [2.0, 5.0]], [[4.0, 4.0], [4.0, 4.0]]]))
        tensor([[[0.0000, 0.5000],
                 [0.2500, 1.0000]],
        <BLANKLINE>
                [[0.0000, 0.0000],
                 [0.0000, 0.0000]]])
    """
    flat = maps.flatten(-2)
    low = flat.min(dim=-1, keepdim=True).values
    span = flat.max(dim=-1, keepdim=True).values - low
    safe_span = torch.where(span > 0, span, torch.ones_like(span))
    normalized = torch.where(span > 0, (flat - low) / safe_span, torch.zeros_like(flat))
    return normalized.reshape(maps.shape)


def _std_upper_bound(count: Tensor) -> Tensor:
    """Largest sample standard deviation (ddof=1) of ``count`` values in [0, 1]; 1 where ``count <= 1``."""
    low = torch.floor(count / 2)
    high = torch.ceil(count / 2)
    bound = torch.sqrt(low * high / (count * (count - 1)).clamp_min(1))
    return torch.where(count > 1, bound, torch.ones_like(bound))


def _check_inputs(maps: Tensor, scores: Tensor, valid: Tensor | None, threshold: float, alpha: float) -> None:
    if maps.ndim != 4:
        raise ValueError(f"Expected `maps` to have shape (V, B, H, W), but got {tuple(maps.shape)}")
    if scores.shape != maps.shape[:2]:
        raise ValueError(
            f"Expected `scores` to have shape {tuple(maps.shape[:2])} (V, B), but got {tuple(scores.shape)}"
        )
    if valid is not None and (valid.shape != maps.shape or valid.dtype != torch.bool):
        raise ValueError(
            f"Expected `valid` to be a bool tensor of shape {tuple(maps.shape)}, "
            f"but got {valid.dtype} of shape {tuple(valid.shape)}"
        )
    check_threshold(threshold)
    check_alpha(alpha)


class FusionParts(NamedTuple):
    """The alpha-independent part of the fusion: everything Eq. (5)-(7) needs besides alpha."""

    mean: Tensor
    """``(B, H, W)`` ``M_hat``, the per-pixel weighted mean of the kept valid views (Eq. 4)."""
    sigma: Tensor
    """``(B, H, W)`` the normalized per-pixel standard deviation of the kept valid views, in [0, 1]."""
    weights: Tensor
    """``(V, B)`` the weights w_v of Eq. (4); 0 for filtered views."""
    kept: Tensor
    """``(V, B)`` bool, which views passed the filter of Eq. (2); view 0 always does."""


def fusion_parts(maps: Tensor, scores: Tensor, valid: Tensor | None = None, *, threshold: float = 0.99) -> FusionParts:
    """Eq. (2)-(4) and sigma: filter, weights, ``M_hat`` and ``sigma``; :func:`blend` adds alpha's Eq. (5)-(7)."""
    _check_inputs(maps, scores, valid, threshold, 0.0)
    maps = maps.float()
    scores = scores.float()
    # Eq. (2): keep view v when s_v > threshold * s_0; view 0 is always kept.
    kept = scores > threshold * scores[:1]
    kept[0] = True
    # Eq. (4): weights proportional to the kept views' scores; uniform over kept views if they all score 0.
    kept_scores = scores * kept
    total = kept_scores.sum(dim=0, keepdim=True)
    uniform = kept.float() / kept.float().sum(dim=0, keepdim=True)
    weights = torch.where(total > 0, kept_scores / total.clamp_min(torch.finfo(torch.float32).tiny), uniform)

    # Per pixel, a view counts where it was kept and its pixel is valid (view 0 is valid everywhere).
    counts_mask = kept[:, :, None, None].expand_as(maps)
    if valid is not None:
        counts_mask = counts_mask & valid
        counts_mask[0] = kept[0, :, None, None].expand_as(maps[0])
    present = counts_mask.float()
    # Eq. (4) restricted to the pixel's valid views: the weights are renormalized per pixel.
    pixel_weights = weights[:, :, None, None] * present
    weight_sum = pixel_weights.sum(dim=0)
    mean_hat = (pixel_weights * maps).sum(dim=0) / weight_sum.clamp_min(torch.finfo(torch.float32).tiny)
    mean_hat = torch.where(weight_sum > 0, mean_hat, maps[0])

    # sigma: unweighted sample standard deviation (ddof=1) of the kept valid maps, over its upper bound.
    count = present.sum(dim=0)
    plain_mean = (present * maps).sum(dim=0) / count.clamp_min(1)
    squares = (present * (maps - plain_mean) ** 2).sum(dim=0)
    std = torch.sqrt(squares / (count - 1).clamp_min(1))
    sigma = torch.where(count > 1, (std / _std_upper_bound(count)).clamp(0, 1), torch.zeros_like(std))
    return FusionParts(mean_hat, sigma, weights, kept)


def blend(mean: Tensor, sigma: Tensor, alpha: float | Tensor) -> Tensor:
    """Eq. (5)-(7) then min-max per image: ``J* = sigma * M_hat + (1 - sigma) * clamp(M_hat + alpha (M_hat - 0.5))``.

    ``mean`` and ``sigma`` are ``(B, H, W)``; a float ``alpha`` gives ``(B, H, W)``, a tensor of ``A`` alphas
    gives ``(A, B, H, W)`` (one map per alpha, as :class:`~evet_lightning.EVET` does for ``alpha="auto"``).

    Example:
        >>> mean = torch.tensor([[[0.2, 0.6], [0.4, 1.0]]])
        >>> blend(mean, torch.zeros_like(mean), torch.tensor([0.0, 1.0]))[:, 0, 0]
        tensor([[0.0000, 0.5000],
                [0.0000, 0.7000]])
    """
    # alpha is bounded (decision 27), but as a float32 it must not overflow to inf: inf * (0.5 - 0.5) is NaN.
    largest = torch.finfo(mean.dtype).max
    if isinstance(alpha, Tensor):
        alpha = alpha.double().clamp(max=largest).to(device=mean.device, dtype=mean.dtype).view(-1, *([1] * mean.ndim))
    else:
        alpha = min(float(alpha), largest)
    boosted = (mean + alpha * (mean - 0.5)).clamp(0, 1)
    return min_max_normalize(sigma * mean + (1 - sigma) * boosted)


def fuse_maps_detailed(
    maps: Tensor,
    scores: Tensor,
    valid: Tensor | None = None,
    *,
    threshold: float = 0.99,
    alpha: float = DEFAULT_ALPHA,
) -> FusionResult:
    """:func:`fuse_maps`, also returning the per-view weights and filter decisions."""
    _check_inputs(maps, scores, valid, threshold, alpha)
    parts = fusion_parts(maps, scores, valid, threshold=threshold)
    return FusionResult(blend(parts.mean, parts.sigma, alpha), parts.weights, parts.kept)


def fuse_maps(
    maps: Tensor,
    scores: Tensor,
    valid: Tensor | None = None,
    *,
    threshold: float = 0.99,
    alpha: float = DEFAULT_ALPHA,
) -> Tensor:
    """Fuse per-view saliency maps into the EVET map J*(x), Eq. (2)-(7).

    Args:
        maps: ``(V, B, H, W)`` maps in [0, 1], already mapped back to the original frame; index 0 is the
            untransformed view.
        scores: ``(V, B)`` target-class probabilities of the perturbed images, ``f_k(Phi(x, M_v))``.
        valid: ``(V, B, H, W)`` bool, which pixels of each view carry evidence (``None``: all). Invalid pixels
            are left out of the per-pixel weighted mean and standard deviation; view 0 is always valid.
        threshold: Gamma of Eq. (2); view v is kept when ``s_v > threshold * s_0``.
        alpha: boost strength of Eq. (5).

    Returns:
        ``(B, H, W)`` float32 in [0, 1]: ``sigma * M_hat + (1 - sigma) * M_tilde``, min-max normalized per
        image, where ``M_hat`` is the weighted mean of the kept views, ``sigma`` their per-pixel sample
        standard deviation divided by its upper bound for values in [0, 1], and
        ``M_tilde = clamp(M_hat + alpha * (M_hat - 0.5), 0, 1)``. A constant result becomes all zeros.

    Example:
        >>> view = torch.tensor([[[0.2, 0.6], [0.4, 1.0]]])
        >>> maps = torch.stack([view, view])  # two identical views: sigma = 0, the boosted map wins
        >>> fuse_maps(maps, torch.tensor([[0.9], [0.95]]), alpha=1.0)
        tensor([[[0.0000, 0.7000],
                 [0.3000, 1.0000]]])
    """
    return fuse_maps_detailed(maps, scores, valid, threshold=threshold, alpha=alpha).saliency
