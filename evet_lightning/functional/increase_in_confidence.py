"""Increase in confidence, Eq. (11) of Oh et al. (WACV 2021)."""

from __future__ import annotations

import torch
from torch import Tensor

from evet_lightning.functional._checks import _check_range, _check_score_pair, _finite_samples, _safe_mean, _sum_kept

__all__ = ["increase_in_confidence"]


def _increase_in_confidence_update(
    scores: Tensor, masked_scores: Tensor, validate_args: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    """Number of samples with ``O > Y`` (as float64), with the kept and skipped sample counts.

    A sample with NaN/Inf in ``scores`` or ``masked_scores`` is skipped.

    Returns:
        ``(num_increased, num_samples, num_skipped)``, scalar tensors (float64, int64, int64).
    """
    scores, masked_scores = _check_score_pair("scores", scores, "masked_scores", masked_scores)
    keep = _finite_samples(scores, masked_scores)
    if validate_args:
        _check_range("scores", scores, keep, 0.0, 1.0)
        _check_range("masked_scores", masked_scores, keep, 0.0, 1.0)
    increased = (masked_scores > scores).to(torch.float64)
    return _sum_kept(increased, keep)


def _increase_in_confidence_compute(num_increased: Tensor, num_samples: Tensor, warn: bool = True) -> Tensor:
    """Fraction of samples whose confidence increased, float32; 0.0 with a warning when there are no samples.

    Example:
        >>> state = _increase_in_confidence_update(torch.tensor([0.8, 0.5]), torch.tensor([0.4, 0.6]))
        >>> _increase_in_confidence_compute(state[0], state[1])
        tensor(0.5000)
    """
    return _safe_mean(num_increased, num_samples, "increase_in_confidence", warn)


def increase_in_confidence(scores: Tensor, masked_scores: Tensor, validate_args: bool = True) -> Tensor:
    r"""Increase in confidence, Eq. (11): :math:`\frac{1}{N}\sum_i 1[Y_i < O_i]` as a fraction (x100 = %).

    Higher is better: keeping only what the map highlights raises the target probability.

    Args:
        scores: ``(N,)`` float, ``Y_i = f_c(x_i)``, the target-class probability of the clean image
            (softmax, or sigmoid for a multi-label model: decision 45).
        masked_scores: ``(N,)`` float, ``O_i = f_c(Phi(x_i, M_i))``, the same on the perturbed image.
        validate_args: check that both are in [0, 1] (this synchronizes with the device).

    Returns:
        A float32 scalar in [0, 1]. A tie (``O_i == Y_i``) is not an increase.

    Edge cases:
        - A sample with NaN/Inf in either input is skipped (it is neither counted nor in N).
        - No samples left: 0.0 and a warning, never NaN.

    Raises:
        ValueError: if an input is not a floating point ``(N,)`` tensor, the shapes differ, or, with
            ``validate_args``, a value is outside [0, 1].

    Example:
        >>> import torch
        >>> from evet_lightning.functional import increase_in_confidence
        >>> increase_in_confidence(torch.tensor([0.8, 0.5, 0.3, 0.2]), torch.tensor([0.4, 0.6, 0.3, 0.9]))
        tensor(0.5000)
    """
    num_increased, num_samples, _ = _increase_in_confidence_update(scores, masked_scores, validate_args)
    return _increase_in_confidence_compute(num_increased, num_samples)
