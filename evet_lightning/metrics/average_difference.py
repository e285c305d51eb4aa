"""AverageDifference: bookkeeping around :mod:`evet_lightning.functional.average_difference`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.plot import _AX_TYPE, _PLOT_OUT_TYPE

from evet_lightning.functional.average_difference import _average_difference_compute, _average_difference_update

__all__ = ["AverageDifference"]


class AverageDifference(Metric):
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
    full_state_update: bool = False
    plot_lower_bound: float = -1.0
    plot_upper_bound: float = 1.0

    sum_difference: Tensor
    num_samples: Tensor
    num_skipped: Tensor

    def __init__(self, validate_args: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(validate_args, bool):
            raise ValueError(f"Expected `validate_args` to be a bool, but got {validate_args!r}")
        self.validate_args = validate_args
        # sum over kept samples of a - b
        self.add_state("sum_difference", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_samples", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("num_skipped", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, scores_a: Tensor, scores_b: Tensor) -> None:
        """Add a batch: ``scores_a`` and ``scores_b``, both ``(N,)`` float."""
        sum_difference, num_samples, num_skipped = _average_difference_update(scores_a, scores_b, self.validate_args)
        self.sum_difference += sum_difference
        self.num_samples += num_samples
        self.num_skipped += num_skipped

    def compute(self) -> Tensor:
        """Return the mean over all kept samples as a float32 scalar (0.0 when there are none)."""
        # torchmetrics already warns when compute comes before any update; warn here only for "all skipped".
        return _average_difference_compute(self.sum_difference, self.num_samples, warn=self.update_called)

    def plot(self, val: Tensor | Sequence[Tensor] | None = None, ax: _AX_TYPE | None = None) -> _PLOT_OUT_TYPE:
        """Plot one or several values of the metric (see :meth:`torchmetrics.Metric.plot`); needs matplotlib."""
        return self._plot(val, ax)
