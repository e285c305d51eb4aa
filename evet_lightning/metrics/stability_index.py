"""StabilityIndex: bookkeeping around :mod:`evet_lightning.functional.stability_index`."""

from __future__ import annotations

from torch import Tensor

from evet_lightning.functional.stability_index import _stability_index_compute, _stability_index_update
from evet_lightning.metrics._base import SampleMeanMetric

__all__ = ["StabilityIndex"]


class StabilityIndex(SampleMeanMetric):
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

    sum_state = "sum_similarity"
    sum_similarity: Tensor

    def update(self, saliency: Tensor, saliency_transformed: Tensor, valid: Tensor | None = None) -> None:
        """Add a batch: ``saliency`` and ``saliency_transformed`` ``(N, H, W)`` float, ``valid`` ``(N, H, W)`` bool."""
        sum_similarity, num_samples, num_skipped = _stability_index_update(
            saliency, saliency_transformed, valid, self.validate_args
        )
        self._accumulate(sum_similarity, num_samples, num_skipped)

    def compute(self) -> Tensor:
        """Return the mean over all kept samples as a float32 scalar (0.0 when there are none)."""
        return self._mean(_stability_index_compute)
