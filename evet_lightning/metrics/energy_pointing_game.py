"""EnergyPointingGame: bookkeeping around :mod:`evet_lightning.functional.energy_pointing_game`."""

from __future__ import annotations

from torch import Tensor

from evet_lightning.functional.energy_pointing_game import (
    _energy_pointing_game_compute,
    _energy_pointing_game_update,
)
from evet_lightning.metrics._base import SampleMeanMetric

__all__ = ["EnergyPointingGame"]


class EnergyPointingGame(SampleMeanMetric):
    r"""Energy-based pointing game, Eq. (12) of Oh et al. (WACV 2021), as a fraction (x100 = the paper's %).

    .. math:: E_{point}(x, J) = \frac{\sum_{(r,c) \in object} J(x)_{r,c}}{\sum_{r,c} J(x)_{r,c}}

    averaged over the images: the share of each map's energy that falls on the target object.

    As input to ``forward`` and ``update`` the metric accepts:

    - ``saliency`` (:class:`~torch.Tensor`): ``(N, H, W)`` float, non-negative saliency maps (any scale)
    - ``mask`` (:class:`~torch.Tensor`): ``(N, H, W)`` bool object masks (an integer tensor holding only 0 and 1
      is accepted too)
    - ``valid`` (:class:`~torch.Tensor`, optional): ``(N, H, W)`` bool, the pixels that count; pixels outside it
      (VOC's void label 255) are left out of both the object and the total energy (decision 47). From
      :func:`~evet_lightning.functional.class_masks.pair_masks` for class-index or per-class masks.

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

    sum_state = "sum_energy"
    sum_energy: Tensor

    def update(self, saliency: Tensor, mask: Tensor, valid: Tensor | None = None) -> None:
        """Add a batch: ``saliency`` ``(N, H, W)`` float, ``mask`` ``(N, H, W)`` bool and optionally ``valid``
        ``(N, H, W)`` bool, the pixels that count (ignored ones are left out of the object and the total)."""
        sum_energy, num_samples, num_skipped = _energy_pointing_game_update(saliency, mask, self.validate_args, valid)
        self._accumulate(sum_energy, num_samples, num_skipped)

    def compute(self) -> Tensor:
        """Return the mean over all kept images as a float32 scalar (0.0 when there are none)."""
        return self._mean(_energy_pointing_game_compute)
