"""StabilityIndex: bookkeeping around :mod:`evet_lightning.functional.stability_index`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.plot import _AX_TYPE, _PLOT_OUT_TYPE

from evet_lightning.functional.stability_index import _stability_index_compute, _stability_index_update

__all__ = ["StabilityIndex"]


class StabilityIndex(Metric):
    r"""Stability index, Eq. (8)-(9) of Oh et al. (WACV 2021): how little a map changes under a transformation.

    .. math:: SI = \frac{1}{|D|}\sum_{x \in D} 1 - \frac{\|(M_1 - M_2) \odot V\|_F}{\sqrt{\sum V}}

    with ``M1 = J(x)``, ``M2 = T^{-1}(J(T(x)))`` and ``V`` the valid pixels. For maps in [0, 1],
    ``d_max = sqrt(#valid)`` is the largest possible Frobenius distance over the valid pixels (Eq. 8).

    As input to ``forward`` and ``update`` the metric accepts:

    - ``saliency`` (:class:`~torch.Tensor`): ``(N, H, W)`` float maps in [0, 1] of the untransformed images
    - ``saliency_transformed`` (:class:`~torch.Tensor`): ``(N, H, W)`` float maps in [0, 1] of the transformed
      images, mapped back to the original frame
    - ``valid`` (:class:`~torch.Tensor` or None): ``(N, H, W)`` bool (or integer 0/1) validity mask: the pixels of
      the original frame whose pre-image lies inside the transformed canvas; None means every pixel

    As output of ``forward`` and ``compute`` the metric returns:

    - ``stability_index`` (:class:`~torch.Tensor`): float32 scalar in [0, 1]; higher is better

    Edge cases:

    - A sample with NaN/Inf anywhere in either map, or with no valid pixel, is skipped: it is not in the mean
      and is counted in the ``num_skipped`` state (summed across processes on ``compute``).
    - ``compute()`` with no sample (before any update, or every sample skipped) returns 0.0 with a warning.

    Sums are accumulated in float64 and divided once in ``compute``, so one update and many, or one process
    and several, give the same value. The states are not persistent (not in ``state_dict``) by default.

    Args:
        validate_args: check in ``update`` that both maps are in [0, 1] and an integer ``valid`` holds only
            0 and 1 (this synchronizes with the device). Shapes and dtypes are always checked.
        kwargs: additional keyword arguments of :class:`~torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> from evet_lightning.metrics import StabilityIndex
        >>> metric = StabilityIndex()
        >>> metric.update(torch.ones(2, 4, 4), torch.ones(2, 4, 4))  # identical maps: 1
        >>> metric.update(torch.ones(1, 4, 4), torch.zeros(1, 4, 4))  # as different as possible: 0
        >>> metric.compute()
        tensor(0.6667)
    """

    is_differentiable: bool = False
    higher_is_better: bool = True
    full_state_update: bool = False
    plot_lower_bound: float = 0.0
    plot_upper_bound: float = 1.0

    sum_similarity: Tensor
    num_samples: Tensor
    num_skipped: Tensor

    def __init__(self, validate_args: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(validate_args, bool):
            raise ValueError(f"Expected `validate_args` to be a bool, but got {validate_args!r}")
        self.validate_args = validate_args
        # sum over kept samples of 1 - ||(M1 - M2) * V||_F / sqrt(#V)
        self.add_state("sum_similarity", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_samples", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("num_skipped", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, saliency: Tensor, saliency_transformed: Tensor, valid: Tensor | None = None) -> None:
        """Add a batch: ``saliency`` and ``saliency_transformed`` ``(N, H, W)`` float, ``valid`` ``(N, H, W)`` bool."""
        sum_similarity, num_samples, num_skipped = _stability_index_update(
            saliency, saliency_transformed, valid, self.validate_args
        )
        self.sum_similarity += sum_similarity
        self.num_samples += num_samples
        self.num_skipped += num_skipped

    def compute(self) -> Tensor:
        """Return the mean over all kept samples as a float32 scalar (0.0 when there are none)."""
        # torchmetrics already warns when compute comes before any update; warn here only for "all skipped".
        return _stability_index_compute(self.sum_similarity, self.num_samples, warn=self.update_called)

    def plot(self, val: Tensor | Sequence[Tensor] | None = None, ax: _AX_TYPE | None = None) -> _PLOT_OUT_TYPE:
        """Plot one or several values of the metric (see :meth:`torchmetrics.Metric.plot`); needs matplotlib."""
        return self._plot(val, ax)
