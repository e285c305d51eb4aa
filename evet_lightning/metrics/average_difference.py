"""AverageDifference: bookkeeping around :mod:`evet_lightning.functional.average_difference`."""

from __future__ import annotations

from torch import Tensor

from evet_lightning.functional.average_difference import _average_difference_compute, _average_difference_update
from evet_lightning.metrics._base import SampleMeanMetric

__all__ = ["AverageDifference"]


class AverageDifference(SampleMeanMetric):
    r"""Average difference of two methods' perturbed-image target probabilities (Table 3 of Oh et al.).

    .. math:: \text{Average difference} = \frac{1}{N}\sum_{i=1}^{N} (a_i - b_i)

    As input to ``forward`` and ``update`` the metric accepts:

    - ``scores_a`` (:class:`~torch.Tensor`): ``(N,)`` float, ``f_c(Phi(x_i, M^A_i))``, the target
      probability of the image perturbed with method A's map (in the paper: EVET)
    - ``scores_b`` (:class:`~torch.Tensor`): ``(N,)`` float, the same with method B's map (the original method)

    As output of ``forward`` and ``compute`` the metric returns:

    - ``average_difference`` (:class:`~torch.Tensor`): float32 scalar in [-1, 1]; higher is better for A

    Edge cases:

    - A sample with NaN/Inf in either input is skipped: it is not in the mean and is counted in the
      ``num_skipped`` state (summed across processes on ``compute``), so the value is never NaN.
    - ``compute()`` with no sample (before any update, or every sample skipped) returns 0.0 with a warning.

    Sums are accumulated in float64 and divided once in ``compute``, so one update and many, or one process
    and several, give the same value. The states are not persistent (not in ``state_dict``) by default.

    Args:
        validate_args: check in ``update`` that both inputs are in [0, 1] (this synchronizes with the device).
            Shapes and dtypes are always checked.
        kwargs: additional keyword arguments of :class:`~torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> from evet_lightning.metrics import AverageDifference
        >>> metric = AverageDifference()
        >>> metric.update(torch.tensor([0.9, 0.25]), torch.tensor([0.5, 0.75]))
        >>> metric.compute()
        tensor(-0.0500)
    """

    is_differentiable: bool = True
    higher_is_better: bool = True
    plot_lower_bound: float = -1.0

    sum_state = "sum_difference"
    sum_difference: Tensor

    def update(self, scores_a: Tensor, scores_b: Tensor) -> None:
        """Add a batch: ``scores_a`` and ``scores_b``, both ``(N,)`` float."""
        sum_difference, num_samples, num_skipped = _average_difference_update(scores_a, scores_b, self.validate_args)
        self._accumulate(sum_difference, num_samples, num_skipped)

    def compute(self) -> Tensor:
        """Return the mean over all kept samples as a float32 scalar (0.0 when there are none)."""
        return self._mean(_average_difference_compute)
