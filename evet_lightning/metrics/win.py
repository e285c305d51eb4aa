"""Win: bookkeeping around :mod:`evet_lightning.functional.win`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.plot import _AX_TYPE, _PLOT_OUT_TYPE

from evet_lightning.functional.win import _win_compute, _win_update

__all__ = ["Win"]


class Win(Metric):
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
    full_state_update: bool = False
    plot_lower_bound: float = 0.0
    plot_upper_bound: float = 1.0

    num_wins: Tensor
    num_samples: Tensor
    num_skipped: Tensor

    def __init__(self, validate_args: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(validate_args, bool):
            raise ValueError(f"Expected `validate_args` to be a bool, but got {validate_args!r}")
        self.validate_args = validate_args
        # number of kept samples with a > b (float64)
        self.add_state("num_wins", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_samples", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("num_skipped", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, scores_a: Tensor, scores_b: Tensor) -> None:
        """Add a batch: ``scores_a`` and ``scores_b``, both ``(N,)`` float."""
        num_wins, num_samples, num_skipped = _win_update(scores_a, scores_b, self.validate_args)
        self.num_wins += num_wins
        self.num_samples += num_samples
        self.num_skipped += num_skipped

    def compute(self) -> Tensor:
        """Return the mean over all kept samples as a float32 scalar (0.0 when there are none)."""
        # torchmetrics already warns when compute comes before any update; warn here only for "all skipped".
        return _win_compute(self.num_wins, self.num_samples, warn=self.update_called)

    def plot(self, val: Tensor | Sequence[Tensor] | None = None, ax: _AX_TYPE | None = None) -> _PLOT_OUT_TYPE:
        """Plot one or several values of the metric (see :meth:`torchmetrics.Metric.plot`); needs matplotlib."""
        return self._plot(val, ax)
