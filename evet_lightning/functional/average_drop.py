"""Average drop, Eq. (10) of Oh et al. (WACV 2021)."""

from __future__ import annotations

import torch
from torch import Tensor

from evet_lightning.functional._checks import _check_range, _check_score_pair, _finite_samples, _safe_mean, _sum_kept

__all__ = ["average_drop", "drop_per_sample"]


def _average_drop_update(
    scores: Tensor, masked_scores: Tensor, validate_args: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    """Sum of per-sample drops ``relu(Y - O) / Y`` in float64, with the kept and skipped sample counts.

    A sample with NaN/Inf in ``scores`` or ``masked_scores`` is skipped. ``Y = 0`` gives a drop of 0
    (the probability cannot drop below 0, so nothing was lost).

    Returns:
        ``(sum_drop, num_samples, num_skipped)``, scalar tensors (float64, int64, int64).
    """
    scores, masked_scores = _check_score_pair("scores", scores, "masked_scores", masked_scores)
    keep = _finite_samples(scores, masked_scores)
    if validate_args:
        _check_range("scores", scores, keep, 0.0, 1.0)
        _check_range("masked_scores", masked_scores, keep, 0.0, 1.0)
    return _sum_kept(drop_per_sample(scores, masked_scores), keep)


def drop_per_sample(scores: Tensor, masked_scores: Tensor) -> Tensor:
    """``(N,)`` float64 ``relu(Y - O) / Y`` of each sample (0 where ``Y <= 0``; leave out non-finite samples).

    Example:
        >>> drop_per_sample(torch.tensor([0.8, 0.5, 0.0]), torch.tensor([0.4, 0.6, 0.1])).tolist()
        [0.5, 0.0, 0.0]
    """
    y = scores.to(torch.float64)
    o = masked_scores.to(torch.float64)
    positive = y > 0
    # The denominator is replaced where Y <= 0 so the unused branch never divides by zero.
    return torch.where(positive, (y - o).clamp_min(0.0) / torch.where(positive, y, torch.ones_like(y)), 0.0)


def _average_drop_compute(sum_drop: Tensor, num_samples: Tensor, warn: bool = True) -> Tensor:
    """Mean drop as a float32 scalar; 0.0 with a warning when there are no samples.

    Example:
        >>> sum_drop, num_samples, _ = _average_drop_update(torch.tensor([0.8, 0.5]), torch.tensor([0.4, 0.6]))
        >>> _average_drop_compute(sum_drop, num_samples)
        tensor(0.2500)
    """
    return _safe_mean(sum_drop, num_samples, "average_drop", warn)


def average_drop(scores: Tensor, masked_scores: Tensor, validate_args: bool = True) -> Tensor:
    r"""Average drop, Eq. (10): :math:`\frac{1}{N}\sum_i \max(0, Y_i - O_i) / Y_i` as a fraction (x100 = %).

    Lower is better: a faithful map keeps what the model needs, so the target probability barely drops.

    Args:
        scores: ``(N,)`` float, ``Y_i = f_c(x_i)``, the target-class probability of the clean image
            (softmax, or sigmoid for a multi-label model: decision 45).
        masked_scores: ``(N,)`` float, ``O_i = f_c(Phi(x_i, M_i))``, the same on the perturbed image.
        validate_args: check that both are in [0, 1] (this synchronizes with the device).

    Returns:
        A float32 scalar in [0, 1].

    Edge cases:
        - A sample with NaN/Inf in either input is skipped (it is neither in the sum nor in N).
        - ``Y_i = 0`` is defined as a drop of 0 (the ratio is otherwise undefined; nothing can be lost).
        - No samples left: 0.0 and a warning, never NaN.

    Raises:
        ValueError: if an input is not a floating point ``(N,)`` tensor, the shapes differ, or, with
            ``validate_args``, a value is outside [0, 1].

    Example:
        >>> import torch
        >>> from evet_lightning.functional import average_drop
        >>> average_drop(torch.tensor([0.8, 0.5]), torch.tensor([0.4, 0.6]))
        tensor(0.2500)
    """
    sum_drop, num_samples, _ = _average_drop_update(scores, masked_scores, validate_args)
    return _average_drop_compute(sum_drop, num_samples)
