"""AverageDrop: bookkeeping around :mod:`evet_lightning.functional.average_drop`."""

from __future__ import annotations

from torch import Tensor

from evet_lightning.functional.average_drop import _average_drop_compute, _average_drop_update
from evet_lightning.metrics._base import SampleMeanMetric

__all__ = ["AverageDrop"]


class AverageDrop(SampleMeanMetric):
    r"""Average drop, Eq. (10) of Oh et al. (WACV 2021), as a fraction (x100 = the paper's %).

    .. math:: \text{Average drop} = \frac{1}{N}\sum_{i=1}^{N} \frac{\max(0, Y_i - O_i)}{Y_i}

    As input to ``forward`` and ``update`` the metric accepts:

    - ``scores`` (:class:`~torch.Tensor`): ``(N,)`` float, ``Y_i = f_c(x_i)``, the target-class
      probability of the clean image (softmax, or sigmoid for a multi-label model: decision 45)
    - ``masked_scores`` (:class:`~torch.Tensor`): ``(N,)`` float, ``O_i = f_c(Phi(x_i, M_i))``, the same on the
      image perturbed with the saliency map (Eq. 3)

    As output of ``forward`` and ``compute`` the metric returns:

    - ``average_drop`` (:class:`~torch.Tensor`): float32 scalar in [0, 1]; lower is better

    Edge cases:

    - A sample with NaN/Inf in either input is skipped: it is not in the mean and is counted in the
      ``num_skipped`` state (summed across processes on ``compute``), so the value is never NaN.
    - ``Y_i = 0`` is defined as a drop of 0 (the ratio is otherwise undefined; nothing can be lost).
    - ``compute()`` with no sample (before any update, or every sample skipped) returns 0.0 with a warning.

    Sums are accumulated in float64 and divided once in ``compute``, so one update and many, or one process
    and several, give the same value. The states are not persistent (not in ``state_dict``) by default.

    Args:
        validate_args: check in ``update`` that both inputs are in [0, 1] (this synchronizes with the device).
            Shapes and dtypes are always checked.
        kwargs: additional keyword arguments of :class:`~torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> from evet_lightning.metrics import AverageDrop
        >>> metric = AverageDrop()
        >>> metric.update(torch.tensor([0.8, 0.5]), torch.tensor([0.4, 0.6]))
        >>> metric.update(scores=torch.tensor([0.5, float("nan")]), masked_scores=torch.tensor([0.25, 0.1]))
        >>> metric.compute()  # (0.5 + 0 + 0.5) / 3; the NaN sample is skipped
        tensor(0.3333)
        >>> metric.num_skipped
        tensor(1)
    """

    is_differentiable: bool = True
    higher_is_better: bool = False

    sum_state = "sum_drop"
    sum_drop: Tensor

    def update(self, scores: Tensor, masked_scores: Tensor) -> None:
        """Add a batch: ``scores`` and ``masked_scores``, both ``(N,)`` float."""
        sum_drop, num_samples, num_skipped = _average_drop_update(scores, masked_scores, self.validate_args)
        self._accumulate(sum_drop, num_samples, num_skipped)

    def compute(self) -> Tensor:
        """Return the mean over all kept samples as a float32 scalar (0.0 when there are none)."""
        return self._mean(_average_drop_compute)
