"""Win, Sec. 4.2 of Oh et al. (WACV 2021): how often method A's perturbed image keeps more confidence than B's."""

from __future__ import annotations

import torch
from torch import Tensor

from evet_lightning.functional._checks import _check_range, _check_score_pair, _finite_samples, _safe_mean, _sum_kept

__all__ = ["win"]


def _win_update(scores_a: Tensor, scores_b: Tensor, validate_args: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Number of samples with ``a > b`` (as float64), with the kept and skipped sample counts.

    A sample with NaN/Inf in ``scores_a`` or ``scores_b`` is skipped.

    Returns:
        ``(num_wins, num_samples, num_skipped)``, scalar tensors (float64, int64, int64).
    """
    scores_a, scores_b = _check_score_pair("scores_a", scores_a, "scores_b", scores_b)
    keep = _finite_samples(scores_a, scores_b)
    if validate_args:
        _check_range("scores_a", scores_a, keep, 0.0, 1.0)
        _check_range("scores_b", scores_b, keep, 0.0, 1.0)
    wins = (scores_a > scores_b).to(torch.float64)
    return _sum_kept(wins, keep)


def _win_compute(num_wins: Tensor, num_samples: Tensor, warn: bool = True) -> Tensor:
    """Fraction of samples A wins, float32; 0.0 with a warning when there are no samples.

    Example:
        >>> state = _win_update(torch.tensor([0.9, 0.2]), torch.tensor([0.5, 0.4]))
        >>> _win_compute(state[0], state[1])
        tensor(0.5000)
    """
    return _safe_mean(num_wins, num_samples, "win", warn)


def win(scores_a: Tensor, scores_b: Tensor, validate_args: bool = True) -> Tensor:
    r"""Win: the fraction of samples where :math:`a_i > b_i` (x100 = the paper's %).

    ``a_i`` and ``b_i`` are the target-class probabilities ``f_c(Phi(x_i, M_i))`` of the images perturbed
    with method A's and method B's maps (in the paper: EVET against the original method). Higher is better
    for A. Ties count for neither side, so ``win(a, b) + win(b, a) <= 1``.

    Args:
        scores_a: ``(N,)`` float, method A's scores.
        scores_b: ``(N,)`` float, method B's scores.
        validate_args: check that both are in [0, 1] (this synchronizes with the device).

    Returns:
        A float32 scalar in [0, 1].

    Edge cases:
        - A sample with NaN/Inf in either input is skipped (it is neither counted nor in N).
        - No samples left: 0.0 and a warning, never NaN.

    Raises:
        ValueError: if an input is not a floating point ``(N,)`` tensor, the shapes differ, or, with
            ``validate_args``, a value is outside [0, 1].

    Example:
        >>> import torch
        >>> from evet_lightning.functional import win
        >>> win(torch.tensor([0.9, 0.2, 0.5, 0.7]), torch.tensor([0.5, 0.4, 0.5, 0.1]))
        tensor(0.5000)
    """
    num_wins, num_samples, _ = _win_update(scores_a, scores_b, validate_args)
    return _win_compute(num_wins, num_samples)
