"""Average difference of target probabilities between two methods (Table 3 of Oh et al., WACV 2021)."""

from __future__ import annotations

import torch
from torch import Tensor

from evet_lightning.functional._checks import _check_range, _check_score_pair, _finite_samples, _safe_mean, _sum_kept

__all__ = ["average_difference"]


def _average_difference_update(
    scores_a: Tensor, scores_b: Tensor, validate_args: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    """Sum of ``a - b`` in float64, with the kept and skipped sample counts.

    A sample with NaN/Inf in ``scores_a`` or ``scores_b`` is skipped.

    Returns:
        ``(sum_difference, num_samples, num_skipped)``, scalar tensors (float64, int64, int64).
    """
    scores_a, scores_b = _check_score_pair("scores_a", scores_a, "scores_b", scores_b)
    keep = _finite_samples(scores_a, scores_b)
    if validate_args:
        _check_range("scores_a", scores_a, keep, 0.0, 1.0)
        _check_range("scores_b", scores_b, keep, 0.0, 1.0)
    difference = scores_a.to(torch.float64) - scores_b.to(torch.float64)
    return _sum_kept(difference, keep)


def _average_difference_compute(sum_difference: Tensor, num_samples: Tensor, warn: bool = True) -> Tensor:
    """Mean of ``a - b``, float32; 0.0 with a warning when there are no samples.

    Example:
        >>> state = _average_difference_update(torch.tensor([0.9, 0.2]), torch.tensor([0.5, 0.4]))
        >>> _average_difference_compute(state[0], state[1])
        tensor(0.1000)
    """
    return _safe_mean(sum_difference, num_samples, "average_difference", warn)


def average_difference(scores_a: Tensor, scores_b: Tensor, validate_args: bool = True) -> Tensor:
    r"""Average difference :math:`\frac{1}{N}\sum_i (a_i - b_i)` of two methods' perturbed-image probabilities.

    ``a_i`` and ``b_i`` are ``f_c(Phi(x_i, M_i))`` for method A's and method B's maps (the paper's Table 3:
    EVET minus the original method). Higher is better for A. The value is in [-1, 1] (x100 = %).

    Args:
        scores_a: ``(N,)`` float, method A's scores.
        scores_b: ``(N,)`` float, method B's scores.
        validate_args: check that both are in [0, 1] (this synchronizes with the device).

    Returns:
        A float32 scalar in [-1, 1].

    Edge cases:
        - A sample with NaN/Inf in either input is skipped (it is neither in the sum nor in N).
        - No samples left: 0.0 and a warning, never NaN.

    Raises:
        ValueError: if an input is not a floating point ``(N,)`` tensor, the shapes differ, or, with
            ``validate_args``, a value is outside [0, 1].

    Example:
        >>> import torch
        >>> from evet_lightning.functional import average_difference
        >>> average_difference(torch.tensor([0.9, 0.25]), torch.tensor([0.5, 0.75]))
        tensor(-0.0500)
    """
    sum_difference, num_samples, _ = _average_difference_update(scores_a, scores_b, validate_args)
    return _average_difference_compute(sum_difference, num_samples)
