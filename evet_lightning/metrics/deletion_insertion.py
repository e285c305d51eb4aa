"""DeletionAUC and InsertionAUC: bookkeeping around :mod:`evet_lightning.functional.deletion_insertion`."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor
from torchmetrics.utilities.plot import _AX_TYPE, _PLOT_OUT_TYPE, plot_curve

from evet_lightning._validation import check_int
from evet_lightning.functional.deletion_insertion import (
    _curve_auc_compute,
    _curve_auc_update,
    _mean_curve,
    _trapezoid,
)
from evet_lightning.metrics._base import SampleMeanMetric

__all__ = ["DeletionAUC", "InsertionAUC"]


class _CurveAUC(SampleMeanMetric):
    r"""Mean AUC of ``(B, S + 1)`` curves, plus their sum so the mean curve can be plotted.

    What :class:`DeletionAUC` and :class:`InsertionAUC` share. The area of a curve is the trapezoid rule on
    [0, 1] with spacing ``1 / S``:

    .. math:: \text{AUC} = \frac{1}{S}\left(\sum_{k=0}^{S} y_k - \frac{y_0 + y_S}{2}\right)

    As input to ``forward`` and ``update`` the metric accepts:

    - ``curves`` (:class:`~torch.Tensor`): ``(B, S + 1)`` float probabilities in [0, 1], ``S`` = ``steps``

    As output of ``forward`` and ``compute`` the metric returns a float32 scalar in [0, 1], the mean AUC
    (its name and direction are each subclass's).

    :meth:`mean_curve` returns the mean of the kept curves, ``(S + 1,)``, and :meth:`plot` draws it.

    Edge cases:

    - A row with NaN/Inf anywhere is skipped: it is in neither the mean AUC nor the mean curve and is counted in
      the ``num_skipped`` state (summed across processes on ``compute``), so the value is never NaN.
    - ``compute()`` with no sample (before any update, or every sample skipped) returns 0.0 with a warning.

    Sums are accumulated in float64 and divided once in ``compute``, so one update and many, or one process
    and several, give the same value. States: ``sum_auc`` (float64), ``sum_curve`` (float64 ``(S + 1,)``),
    ``num_samples`` and ``num_skipped``, all summed across processes; not persistent (not in ``state_dict``) by
    default.

    Args:
        steps: ``S``, the number of steps of every curve; each update must have ``S + 1`` columns (the sum of
            curves needs one length in every update and on every process).
        validate_args: check in ``update`` that the curves are in [0, 1] (this synchronizes with the device).
            Shapes and dtypes are always checked.
        kwargs: additional keyword arguments of :class:`~torchmetrics.Metric`.
    """

    is_differentiable: bool = True
    plot_lower_bound: float = 0.0
    plot_upper_bound: float = 1.0
    #: name in warnings and on the plot's x axis
    metric_name: ClassVar[str]
    x_label: ClassVar[str]

    sum_state = "sum_auc"
    sum_auc: Tensor
    sum_curve: Tensor

    def __init__(self, steps: int = 20, validate_args: bool = True, **kwargs: Any) -> None:
        steps = check_int("steps", steps, 1)
        super().__init__(validate_args=validate_args, **kwargs)
        self.steps = steps
        self.add_state("sum_curve", default=torch.zeros(self.steps + 1, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, curves: Tensor) -> None:
        """Add a batch of curves, ``(B, S + 1)`` float with ``S`` = the metric's ``steps``."""
        sum_auc, sum_curve, num_samples, num_skipped = _curve_auc_update(curves, self.steps, self.validate_args)
        self._accumulate(sum_auc, num_samples, num_skipped)
        self.sum_curve += sum_curve

    def compute(self) -> Tensor:
        """Return the mean AUC over all kept samples as a float32 scalar (0.0 when there are none)."""
        return _curve_auc_compute(self.sum_auc, self.num_samples, warn=self.update_called, metric=self.metric_name)

    def mean_curve(self) -> Tensor:
        """The mean of the kept curves, float32 ``(S + 1,)`` (zeros when empty).

        Synchronized across processes like ``compute()`` (unless ``sync_on_compute=False``), so in a distributed run
        every process must call it.
        """
        # As torchmetrics' compute wrapper does, unless the states are already synced (inside compute).
        should_sync = self._to_sync and not self._is_synced
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=should_sync, should_unsync=should_sync):
            return _mean_curve(self.sum_curve, self.num_samples)

    def plot(  # type: ignore[override]
        self, curve: Tensor | None = None, score: Tensor | bool | None = None, ax: _AX_TYPE | None = None
    ) -> _PLOT_OUT_TYPE:
        """Plot the mean curve against the fraction of pixels changed; needs matplotlib.

        With ``curve=None`` this synchronizes like :meth:`mean_curve`: call it on every process.

        Args:
            curve: an ``(S + 1,)`` curve to plot; ``None`` plots :meth:`mean_curve`.
            score: an AUC to show in the legend, or ``True`` for the area under the plotted curve.
            ax: a matplotlib axis to draw on; a new figure when ``None``.

        Returns:
            The figure (``None`` when ``ax`` was given) and the axis.
        """
        values = self.mean_curve() if curve is None else curve.detach().flatten().to(torch.float32)
        if score is True:
            score = _trapezoid(values.unsqueeze(0)).squeeze(0).to(torch.float32)
        elif score is False:
            score = None
        steps = torch.arange(values.shape[0])
        # plot_curve takes (x, y, thresholds); the "thresholds" here are the step indices k.
        return plot_curve(
            (steps / max(values.shape[0] - 1, 1), values.cpu(), steps),
            score=score,
            ax=ax,
            label_names=(self.x_label, "Target-class probability"),
            name=self.__class__.__name__,
        )


class DeletionAUC(_CurveAUC):
    r"""Deletion AUC (Petsiuk et al., RISE, BMVC 2018): the area under the deletion curve; lower is better.

    The curve of :func:`~evet_lightning.functional.deletion_curve`: at step ``k = 0 .. S`` the top
    ``n_k = floor(k * N / S)`` pixels of the map (descending saliency, ties in row-major order) are replaced by
    the baseline, and the curve holds the target-class probability (``activation``). ``forward`` and ``compute`` return
    ``deletion_auc`` (:class:`~torch.Tensor`), the mean AUC: a float32 scalar in [0, 1], lower is better.

    The input (``curves``), the trapezoid rule, the edge cases (NaN/Inf rows skipped and counted in
    ``num_skipped``), the states and the arguments are those of :class:`_CurveAUC`.

    Example:
        >>> import torch
        >>> from evet_lightning.metrics import DeletionAUC
        >>> metric = DeletionAUC(steps=2)
        >>> metric.update(torch.tensor([[1.0, 0.5, 0.0], [0.8, 0.2, 0.2]]))
        >>> metric.update(torch.tensor([[float("nan"), 0.5, 0.0]]))
        >>> metric.compute()  # (0.5 + 0.35) / 2; the NaN row is skipped
        tensor(0.4250)
        >>> metric.mean_curve(), metric.num_skipped
        (tensor([0.9000, 0.3500, 0.1000]), tensor(1))
    """

    higher_is_better: bool = False
    metric_name = "deletion_auc"
    x_label = "Fraction of pixels deleted"


class InsertionAUC(_CurveAUC):
    r"""Insertion AUC (Petsiuk et al., RISE, BMVC 2018): the area under the insertion curve; higher is better.

    The curve of :func:`~evet_lightning.functional.insertion_curve`: the image starts as the insertion baseline
    and at step ``k = 0 .. S`` the top ``n_k = floor(k * N / S)`` pixels of the map (descending saliency, ties in
    row-major order) are the original ones; the curve holds the target-class probability (``activation``). The value of
    ``forward`` and ``compute``, ``insertion_auc``, is the mean AUC, a float32 scalar in [0, 1]; higher is better.

    Everything else (the ``curves`` input, the trapezoid rule, skipped NaN/Inf rows, states, arguments) is as
    in :class:`_CurveAUC`.

    Example:
        >>> import torch
        >>> from evet_lightning.metrics import InsertionAUC
        >>> metric = InsertionAUC(steps=4)
        >>> metric.update(torch.tensor([[0.0, 0.5, 1.0, 1.0, 1.0]]))
        >>> metric.compute()  # (0.5 + 1 + 1 + 0.5) / 4
        tensor(0.7500)
    """

    higher_is_better: bool = True
    metric_name = "insertion_auc"
    x_label = "Fraction of pixels inserted"
