"""PairedDifference: bookkeeping around :mod:`evet_lightning.functional.paired_difference`."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from evet_lightning.functional.paired_difference import (
    DEFAULT_CONFIDENCE,
    DEFAULT_NUM_RESAMPLES,
    _check_options,
    _paired_difference_compute,
    _paired_difference_update,
)

__all__ = ["PairedDifference"]


class PairedDifference(Metric):
    r"""Mean paired difference ``a - b`` of a per-sample metric, with a seeded 95% bootstrap interval.

    As input to ``update`` the metric accepts:

    - ``values_a`` (:class:`~torch.Tensor`): ``(N,)`` float, each sample's value for method A (EVET)
    - ``values_b`` (:class:`~torch.Tensor`): ``(N,)`` the same samples' values for method B (the original map)

    As output of ``compute`` the metric returns ``(3,)`` float64 ``[mean, low, high]``: the mean difference and
    the bounds of its interval (NaN for all three with no sample). Pairs with NaN/Inf are left out.

    The differences are a ``cat`` state, gathered from every process on ``compute``; the interval depends only
    on the multiset of differences and the seed, so one process and several give exactly the same bounds
    (docs/design.md, decision 31).

    Args:
        num_resamples: bootstrap resamples (default 2000).
        confidence: nominal coverage (default 0.95).
        seed: seed of the resampling (default 0).
        kwargs: additional keyword arguments of :class:`~torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> from evet_lightning.metrics import PairedDifference
        >>> metric = PairedDifference()
        >>> metric.update(torch.tensor([0.5, 0.7]), torch.tensor([0.4, 0.6]))
        >>> [round(value, 6) for value in metric.compute().tolist()]
        [0.1, 0.1, 0.1]
    """

    is_differentiable: bool = False
    higher_is_better: bool | None = None
    full_state_update: bool = False
    differences: list[Tensor]

    def __init__(
        self,
        num_resamples: int = DEFAULT_NUM_RESAMPLES,
        confidence: float = DEFAULT_CONFIDENCE,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _check_options(num_resamples, confidence, seed)
        self.num_resamples, self.confidence, self.seed = num_resamples, confidence, seed
        self.add_state("differences", default=[], dist_reduce_fx="cat")

    def update(self, values_a: Tensor, values_b: Tensor) -> None:
        """Add a batch of pairs: ``values_a`` and ``values_b``, both ``(N,)``."""
        self.differences.append(_paired_difference_update(values_a, values_b))

    def compute(self) -> Tensor:
        """``(3,)`` float64 ``[mean, low, high]`` over every pair of every process."""
        # A list before syncing, one tensor (the processes' pairs concatenated) after.
        states = self.differences
        empty = isinstance(states, list) and not states
        differences = torch.zeros(0, dtype=torch.float64, device=self.device) if empty else dim_zero_cat(states)
        return _paired_difference_compute(differences, self.num_resamples, self.confidence, self.seed)
