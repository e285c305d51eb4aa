"""Bookkeeping shared by every metric here: a per-sample mean kept as float64 sums and counts."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.plot import _AX_TYPE, _PLOT_OUT_TYPE

__all__ = ["SampleMeanMetric"]


class SampleMeanMetric(Metric):
    """A mean over samples: a float64 sum state (named by ``sum_state``), ``num_samples`` and ``num_skipped``.

    Subclasses name their sum state, turn a batch into ``(sum, num_samples, num_skipped)`` with their functional
    ``_<name>_update`` and pass it to :meth:`_accumulate`, and compute with their ``_<name>_compute`` through
    :meth:`_mean`. All states are summed across processes, so one process and several give the same value.
    """

    full_state_update: bool = False
    plot_lower_bound: float = 0.0
    plot_upper_bound: float = 1.0
    sum_state: ClassVar[str]

    num_samples: Tensor
    num_skipped: Tensor

    def __init__(self, validate_args: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(validate_args, bool):
            raise ValueError(f"Expected `validate_args` to be a bool, but got {validate_args!r}")
        self.validate_args = validate_args
        self.add_state(self.sum_state, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_samples", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("num_skipped", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _accumulate(self, total: Tensor, num_samples: Tensor, num_skipped: Tensor) -> None:
        state: Tensor = getattr(self, self.sum_state)
        state += total
        self.num_samples += num_samples
        self.num_skipped += num_skipped

    def _mean(self, compute: Callable[..., Tensor]) -> Tensor:
        # torchmetrics already warns when compute comes before any update; warn here only for "all skipped".
        return compute(getattr(self, self.sum_state), self.num_samples, warn=self.update_called)

    def plot(self, val: Tensor | Sequence[Tensor] | None = None, ax: _AX_TYPE | None = None) -> _PLOT_OUT_TYPE:
        """Plot one or several values of the metric (see :meth:`torchmetrics.Metric.plot`); needs matplotlib."""
        return self._plot(val, ax)
