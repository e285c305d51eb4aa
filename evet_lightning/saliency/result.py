"""What one EVET call returns (:class:`EVETResult`), per image or per (image, class) pair."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from evet_lightning.functional.alpha import AlphaCurve

__all__ = ["EVETResult"]


@dataclass(frozen=True)
class EVETResult:
    """Everything one EVET call computed for ``B`` images and ``V = n + 1`` views (view 0 = identity)."""

    saliency: Tensor
    """``(B, H, W)`` float32 in [0, 1]: the EVET map J*(x)."""
    original: Tensor
    """``(B, H, W)`` float32 in [0, 1]: the un-enhanced map J(x) (view 0 of the same run)."""
    weights: Tensor
    """``(V, B)`` the weights w_v of Eq. (4); 0 for filtered views."""
    kept: Tensor
    """``(V, B)`` bool, the filter decisions of Eq. (2)."""
    targets: Tensor
    """``(B,)`` the class k explained for each image (given, or the argmax on the untransformed image)."""
    view_scores: Tensor
    """``(V, B)`` ``f_k(Phi(x, M_v))``; ``view_scores[0]`` is the perturbed-image probability O of J(x)."""
    clean_scores: Tensor
    """``(B,)`` ``f_k(x)``, the target probability Y of the clean image (model in eval mode)."""
    saliency_scores: Tensor | None
    """``(B,)`` ``f_k(Phi(x, J*(x)))`` when the call asked for it (``score_saliency=True``), else ``None``."""
    finite: Tensor
    """``(B,)`` bool: the image and its logits were finite. Maps of other images are zeros, not NaN."""
    alpha: float
    """The alpha of Eq. (5) behind ``saliency``: the fixed value, or the one ``alpha="auto"`` chose."""
    fused_mean: Tensor
    """``(B, H, W)`` ``M_hat`` (Eq. 4): with ``fused_sigma``, :func:`~evet_lightning.functional.fusion.blend`
    gives the EVET map at any alpha without recomputing a view."""
    fused_sigma: Tensor
    """``(B, H, W)`` the normalized per-pixel standard deviation of the kept views (sigma of Eq. 7)."""
    alpha_grid: Tensor | None = None
    """``(A,)`` the grid ``alpha="auto"`` chose from (``None`` for a fixed alpha)."""
    alpha_scores: Tensor | None = None
    """``(A, B)`` ``f_k(Phi(x, J*_a(x)))`` for each alpha of the grid (``None`` for a fixed alpha)."""
    alpha_energy: Tensor | None = None
    """``(A, B)`` energy pointing game of each alpha's map, when ``masks`` were given with ``alpha="auto"``."""
    alpha_curve: AlphaCurve | None = None
    """Per-alpha sums over this call's images (``None`` for a fixed alpha); ``.average_drop`` etc. are the
    trade-off curves."""
    alpha_objective: Tensor | None = None
    """``(A,)`` the objective's value for each alpha (lower is better); ``alpha`` is its first minimum."""
    image_index: Tensor | None = None
    """``(P,)`` for :meth:`EVET.explain_pairs`: the image of each (image, class) pair, whose class is ``targets``;
    every other per-image field then holds one entry per pair. ``None`` for a plain call (one entry per image)."""
