"""Win: bookkeeping around :mod:`evet_lightning.functional.win`."""

from __future__ import annotations

from torch import Tensor

from evet_lightning.functional.win import _win_compute, _win_update
from evet_lightning.metrics._base import SampleMeanMetric

__all__ = ["Win"]


class Win(SampleMeanMetric):
    r"""Win (Sec. 4.2 of Oh et al., WACV 2021): the fraction of samples where method A beats method B.

    .. math:: \text{Win} = \frac{1}{N}\sum_{i=1}^{N} 1[a_i > b_i]

    As input to ``forward`` and ``update`` the metric accepts:

    - ``scores_a`` (:class:`~torch.Tensor`): ``(N,)`` float, ``f_c(Phi(x_i, M^A_i))``, the target
      probability of the image perturbed with method A's map (in the paper: EVET)
    - ``scores_b`` (:class:`~torch.Tensor`): ``(N,)`` float, the same with method B's map (the original method)

    As output of ``forward`` and ``compute`` the metric returns:

    - ``win`` (:class:`~torch.Tensor`): float32 scalar in [0, 1]; higher is better for A

    Edge cases:

    - A sample with NaN/Inf in either input is skipped: it is not in the mean and is counted in the
      ``num_skipped`` state (summed across processes on ``compute``), so the value is never NaN.
    - Ties count for neither side, so ``Win`` of A over B plus ``Win`` of B over A is at most 1.
    - ``compute()`` with no sample (before any update, or every sample skipped) returns 0.0 with a warning.

    Sums are accumulated in float64 and divided once in ``compute``, so one update and many, or one process
    and several, give the same value. The states are not persistent (not in ``state_dict``) by default.

    Args:
        validate_args: check in ``update`` that both inputs are in [0, 1] (this synchronizes with the device).
            Shapes and dtypes are always checked.
        kwargs: additional keyword arguments of :class:`~torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> from evet_lightning.metrics import Win
        >>> metric = Win()
        >>> metric.update(torch.tensor([0.9, 0.2, 0.5, 0.7]), torch.tensor([0.5, 0.4, 0.5, 0.1]))
        >>> metric.compute()
        tensor(0.5000)
    """

    is_differentiable: bool = False
    higher_is_better: bool = True

    sum_state = "num_wins"
    num_wins: Tensor

    def update(self, scores_a: Tensor, scores_b: Tensor) -> None:
        """Add a batch: ``scores_a`` and ``scores_b``, both ``(N,)`` float."""
        num_wins, num_samples, num_skipped = _win_update(scores_a, scores_b, self.validate_args)
        self._accumulate(num_wins, num_samples, num_skipped)

    def compute(self) -> Tensor:
        """Return the mean over all kept samples as a float32 scalar (0.0 when there are none)."""
        return self._mean(_win_compute)
