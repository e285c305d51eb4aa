"""EnergyPointingGame: bookkeeping around :mod:`evet_lightning.functional.energy_pointing_game`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.plot import _AX_TYPE, _PLOT_OUT_TYPE

from evet_lightning.functional.energy_pointing_game import (
    _energy_pointing_game_compute,
    _energy_pointing_game_update,
)

__all__ = ["EnergyPointingGame"]


class EnergyPointingGame(Metric):
    r"""Energy-based pointing game, Eq. (12) of Oh et al. (WACV 2021), as a fraction (x100 = the paper's %).

    .. math:: E_{point}(x, J) = \frac{\sum_{(r,c) \in object} J(x)_{r,c}}{\sum_{r,c} J(x)_{r,c}}

    averaged over the images: the share of each map's energy that falls on the target object.

    As input to ``forward`` and ``update`` the metric accepts:

    - ``saliency`` (:class:`~torch.Tensor`): ``(N, H, W)`` float, non-negative saliency maps (any scale)
    - ``mask`` (:class:`~torch.Tensor`): ``(N, H, W)`` bool object masks (an integer tensor holding only 0 and 1
      is accepted too)

    As output of ``forward`` and ``compute`` the metric returns:

    - ``energy_pointing_game`` (:class:`~torch.Tensor`): float32 scalar in [0, 1]; higher is better

    Edge cases:

    - A map with zero total energy (e.g. all zeros) carries no information and scores as a uniform map would:
      the mask's area fraction, never NaN.
    - An empty mask scores 0; a mask covering the whole image scores 1.
    - A map with NaN/Inf anywhere is skipped: it is not in the mean and is counted in the ``num_skipped``
      state (summed across processes on ``compute``).
    - ``compute()`` with no sample (before any update, or every sample skipped) returns 0.0 with a warning.

    Sums are accumulated in float64 and divided once in ``compute``, so one update and many, or one process
    and several, give the same value. The states are not persistent (not in ``state_dict``) by default.

    Args:
        validate_args: check in ``update`` that ``saliency`` is non-negative and an integer ``mask`` holds only
            0 and 1 (this synchronizes with the device). Shapes and dtypes are always checked.
        kwargs: additional keyword arguments of :class:`~torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> from evet_lightning.metrics import EnergyPointingGame
        >>> metric = EnergyPointingGame()
        >>> mask = torch.tensor([[[True, False], [False, False]]])
        >>> metric.update(torch.tensor([[[3.0, 1.0], [0.0, 0.0]]]), mask)
        >>> metric.update(saliency=torch.zeros(1, 2, 2), mask=mask)  # all-zero map: the mask's area, 0.25
        >>> metric.compute()
        tensor(0.5000)
    """

    is_differentiable: bool = True
    higher_is_better: bool = True
    full_state_update: bool = False
    plot_lower_bound: float = 0.0
    plot_upper_bound: float = 1.0

    sum_energy: Tensor
    num_samples: Tensor
    num_skipped: Tensor

    def __init__(self, validate_args: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(validate_args, bool):
            raise ValueError(f"Expected `validate_args` to be a bool, but got {validate_args!r}")
        self.validate_args = validate_args
        # sum over kept images of the energy fraction inside the mask
        self.add_state("sum_energy", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_samples", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("num_skipped", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, saliency: Tensor, mask: Tensor) -> None:
        """Add a batch: ``saliency`` ``(N, H, W)`` float and ``mask`` ``(N, H, W)`` bool."""
        sum_energy, num_samples, num_skipped = _energy_pointing_game_update(saliency, mask, self.validate_args)
        self.sum_energy += sum_energy
        self.num_samples += num_samples
        self.num_skipped += num_skipped

    def compute(self) -> Tensor:
        """Return the mean over all kept images as a float32 scalar (0.0 when there are none)."""
        # torchmetrics already warns when compute comes before any update; warn here only for "all skipped".
        return _energy_pointing_game_compute(self.sum_energy, self.num_samples, warn=self.update_called)

    def plot(self, val: Tensor | Sequence[Tensor] | None = None, ax: _AX_TYPE | None = None) -> _PLOT_OUT_TYPE:
        """Plot one or several values of the metric (see :meth:`torchmetrics.Metric.plot`); needs matplotlib."""
        return self._plot(val, ax)
