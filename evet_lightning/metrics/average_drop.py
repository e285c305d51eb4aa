"""AverageDrop: bookkeeping around :mod:`evet_lightning.functional.average_drop`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.plot import _AX_TYPE, _PLOT_OUT_TYPE

from evet_lightning.functional.average_drop import _average_drop_compute, _average_drop_update

__all__ = ["AverageDrop"]


class AverageDrop(Metric):
    r"""Average drop, Eq. (10) of Oh et al. (WACV 2021), as a fraction (x100 = the paper's %).

    .. math:: \text{Average drop} = \frac{1}{N}\sum_{i=1}^{N} \frac{\max(0, Y_i - O_i)}{Y_i}

    As input to ``forward`` and ``update`` the metric accepts:

    - ``scores`` (:class:`~torch.Tensor`): ``(N,)`` float, ``Y_i = f_c(x_i)``, the target-class softmax
      probability of the clean image
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
    full_state_update: bool = False
    plot_lower_bound: float = 0.0
    plot_upper_bound: float = 1.0

    sum_drop: Tensor
    num_samples: Tensor
    num_skipped: Tensor

    def __init__(self, validate_args: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(validate_args, bool):
            raise ValueError(f"Expected `validate_args` to be a bool, but got {validate_args!r}")
        self.validate_args = validate_args
        # sum over kept samples of relu(Y - O) / Y
        self.add_state("sum_drop", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_samples", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("num_skipped", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, scores: Tensor, masked_scores: Tensor) -> None:
        """Add a batch: ``scores`` and ``masked_scores``, both ``(N,)`` float."""
        sum_drop, num_samples, num_skipped = _average_drop_update(scores, masked_scores, self.validate_args)
        self.sum_drop += sum_drop
        self.num_samples += num_samples
        self.num_skipped += num_skipped

    def compute(self) -> Tensor:
        """Return the mean over all kept samples as a float32 scalar (0.0 when there are none)."""
        # torchmetrics already warns when compute comes before any update; warn here only for "all skipped".
        return _average_drop_compute(self.sum_drop, self.num_samples, warn=self.update_called)

    def plot(self, val: Tensor | Sequence[Tensor] | None = None, ax: _AX_TYPE | None = None) -> _PLOT_OUT_TYPE:
        """Plot one or several values of the metric (see :meth:`torchmetrics.Metric.plot`); needs matplotlib."""
        return self._plot(val, ax)
