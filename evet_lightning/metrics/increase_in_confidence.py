"""IncreaseInConfidence: bookkeeping around :mod:`evet_lightning.functional.increase_in_confidence`."""

from __future__ import annotations

from torch import Tensor

from evet_lightning.functional.increase_in_confidence import (
    _increase_in_confidence_compute,
    _increase_in_confidence_update,
)
from evet_lightning.metrics._base import SampleMeanMetric

__all__ = ["IncreaseInConfidence"]


class IncreaseInConfidence(SampleMeanMetric):
    r"""Increase in confidence, Eq. (11) of Oh et al. (WACV 2021), as a fraction (x100 = the paper's %).

    .. math:: \text{Increase in confidence} = \frac{1}{N}\sum_{i=1}^{N} 1[Y_i < O_i]

    As input to ``forward`` and ``update`` the metric accepts:

    - ``scores`` (:class:`~torch.Tensor`): ``(N,)`` float, ``Y_i = f_c(x_i)``, the target-class
      probability of the clean image (softmax, or sigmoid for a multi-label model: decision 45)
    - ``masked_scores`` (:class:`~torch.Tensor`): ``(N,)`` float, ``O_i = f_c(Phi(x_i, M_i))``, the same on the
      image perturbed with the saliency map (Eq. 3)

    As output of ``forward`` and ``compute`` the metric returns:

    - ``increase_in_confidence`` (:class:`~torch.Tensor`): float32 scalar in [0, 1]; higher is better

    Edge cases:

    - A sample with NaN/Inf in either input is skipped: it is not in the mean and is counted in the
      ``num_skipped`` state (summed across processes on ``compute``), so the value is never NaN.
    - A tie (``O_i == Y_i``) is not an increase.
    - ``compute()`` with no sample (before any update, or every sample skipped) returns 0.0 with a warning.

    Sums are accumulated in float64 and divided once in ``compute``, so one update and many, or one process
    and several, give the same value. The states are not persistent (not in ``state_dict``) by default.

    Args:
        validate_args: check in ``update`` that both inputs are in [0, 1] (this synchronizes with the device).
            Shapes and dtypes are always checked.
        kwargs: additional keyword arguments of :class:`~torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> from evet_lightning.metrics import IncreaseInConfidence
        >>> metric = IncreaseInConfidence()
        >>> metric.update(torch.tensor([0.8, 0.5, 0.3, 0.2]), torch.tensor([0.4, 0.6, 0.3, 0.9]))
        >>> metric.compute()
        tensor(0.5000)
    """

    is_differentiable: bool = False
    higher_is_better: bool = True

    sum_state = "num_increased"
    num_increased: Tensor

    def update(self, scores: Tensor, masked_scores: Tensor) -> None:
        """Add a batch: ``scores`` and ``masked_scores``, both ``(N,)`` float."""
        num_increased, num_samples, num_skipped = _increase_in_confidence_update(
            scores, masked_scores, self.validate_args
        )
        self._accumulate(num_increased, num_samples, num_skipped)

    def compute(self) -> Tensor:
        """Return the mean over all kept samples as a float32 scalar (0.0 when there are none)."""
        return self._mean(_increase_in_confidence_compute)
